"""Momentor forward, loss, trainable split and generation interfaces on config.tiny() with hand-built batches."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentor_jax import constants
from momentor_jax.models import config as config_lib
from momentor_jax.models import partition, tpm
from momentor_jax.models.llama import init_cache
from momentor_jax.models.loss import compute_loss
from momentor_jax.models.momentor import Momentor, check_batch, example_batch
from momentor_jax.models.vit import VisionTower, clip_normalize

SEQ_LEN = 32


def _row(cfg, rng, user_time, answer_times):
    """One dialogue: BOS, user text, <vid_start> M x <vid_patch> <vid_end>, <TEMP-INPUT>, then an assistant reply
    '<TEMP-OUTPUT> to <TEMP-OUTPUT>: text </s>'. Returns per-position lists (input_ids, supervised, times)."""
    special = constants.special_token_ids(cfg.llm.vocab_size)
    text = lambda n: list(rng.integers(3, 290, size=n))  # noqa: E731
    prompt = ([1] + text(3) + [special["vid_start"]] + [special["vid_patch"]] * cfg.num_frames
              + [special["vid_end"]] + text(2) + [special["temp_input"]] + text(1))
    reply = ([special["temp_output"]] + text(1) + [special["temp_output"]] + text(2) + [2])
    ids = prompt + reply
    times = [0.0] * len(ids)
    times[prompt.index(special["temp_input"])] = user_time
    out_positions = [len(prompt) + i for i, t in enumerate(reply) if t == special["temp_output"]]
    for pos, t in zip(out_positions, answer_times):
        times[pos] = t
    supervised = [False] * len(prompt) + [True] * len(reply)  # position i is supervised if ids[i] is a reply token
    return ids, supervised, times


def make_batch(cfg, seed, rows=((0.3, (0.1, 0.55)), (0.8, (0.0, 1.0)))):
    rng = np.random.default_rng(seed)
    b = len(rows)
    batch = example_batch(cfg, b, SEQ_LEN)
    for r, (user_time, answer_times) in enumerate(rows):
        ids, supervised, times = _row(cfg, rng, user_time, answer_times)
        n = len(ids) - r  # the second row is shorter: drop its first text token, leaving padding at the end
        ids, supervised, times = ids[r:], supervised[r:], times[r:]
        batch["input_ids"][r, :n] = ids
        batch["segment_ids"][r] = 0
        batch["segment_ids"][r, :n] = 1
        batch["token_times"][r, :n] = times
        # targets[i] = ids[i + 1], supervised where ids[i + 1] belongs to the reply.
        batch["targets"][r, :n - 1] = ids[1:]
        batch["loss_mask"][r, :n - 1] = supervised[1:]
        batch["target_times"][r, :n - 1] = times[1:]
        batch["targets"][r] *= batch["loss_mask"][r].astype(np.int32)
        batch["target_times"][r] *= batch["targets"][r] == constants.special_token_ids(cfg.llm.vocab_size)[
            "temp_output"]
    frames_key = "features" if cfg.use_cached_features else "frames"
    if cfg.use_cached_features:
        batch[frames_key] = rng.normal(size=batch[frames_key].shape).astype(np.float32)
    else:
        batch[frames_key] = rng.integers(0, 256, size=batch[frames_key].shape, dtype=np.uint8)
    batch["durations"][:] = [30.0, 12.5][:b]
    check_batch(batch, cfg)
    return batch


def init_params(cfg, batch):
    return nn.meta.unbox(Momentor(cfg).init(jax.random.PRNGKey(0), batch)["params"])


@pytest.fixture(scope="module")
def tiny():
    cfg = config_lib.tiny()
    batch = make_batch(cfg, seed=0)
    return cfg, batch, init_params(cfg, batch)


def test_forward_and_loss_are_finite_with_counted_tokens(tiny):
    cfg, batch, params = tiny
    logits, cache = Momentor(cfg).apply({"params": params}, batch)
    assert cache is None
    assert logits.shape == (2, SEQ_LEN, cfg.llm.vocab_size + cfg.num_temporal_tokens)
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))

    loss, aux = compute_loss(logits, batch, cfg)
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert set(aux) == {"text_loss", "temporal_loss", "num_text_tokens", "num_temporal_tokens", "temporal_accuracy"}
    # Each reply: 2 <TEMP-OUTPUT> targets and 4 text targets (3 text tokens + </s>).
    assert float(aux["num_temporal_tokens"]) == 4 and float(aux["num_text_tokens"]) == 8
    assert all(np.isfinite(float(v)) for v in aux.values())
    assert 0.0 <= float(aux["temporal_accuracy"]) <= 1.0
    mixed = (float(aux["text_loss"]) * 8 + float(aux["temporal_loss"]) * 4) / 12
    np.testing.assert_allclose(float(loss), mixed, rtol=1e-5)


def test_loss_matches_hand_computation():
    cfg = config_lib.tiny(llm=dataclasses.replace(config_lib.tiny().llm, vocab_size=7), num_temporal_tokens=5)
    temp_output = constants.special_token_ids(7)["temp_output"]
    logits = jax.random.normal(jax.random.PRNGKey(1), (1, 4, 12))
    batch = {
        "targets": jnp.array([[3, temp_output, temp_output, 0]]),
        "loss_mask": jnp.array([[1.0, 1.0, 1.0, 0.0]]),
        "target_times": jnp.array([[0.0, 0.3, 1.0, 0.0]]),
    }
    loss, aux = compute_loss(logits, batch, cfg)
    log_p = np.asarray(jax.nn.log_softmax(logits[0], axis=-1), np.float64)
    text = -log_p[0, 3]
    # p = 0.3 over N = 5: e = 1.2 -> 0.8 on column V + 1, 0.2 on V + 2; p = 1 -> all on V + 4.
    temporal = [-(0.8 * log_p[1, 7 + 1] + 0.2 * log_p[1, 7 + 2]), -log_p[2, 7 + 4]]
    np.testing.assert_allclose(float(loss), (text + sum(temporal)) / 3, rtol=1e-5)
    np.testing.assert_allclose(float(aux["text_loss"]), text, rtol=1e-5)
    np.testing.assert_allclose(float(aux["temporal_loss"]), np.mean(temporal), rtol=1e-5)
    predicted = np.argmax(np.asarray(logits[0, 1:3, 7:]), axis=-1)
    expected_accuracy = np.mean(np.abs(predicted - np.array([1.2, 4.0])) <= 1.0)
    np.testing.assert_allclose(float(aux["temporal_accuracy"]), expected_accuracy)


def test_gradients_only_for_the_trainable_split(tiny):
    cfg, batch, params = tiny
    mask = partition.trainable_mask(params, "momentor")
    trainable, frozen = partition.split_params(params, mask)
    assert set(trainable) == {"projector", "tpm", "llm"} and set(trainable["llm"]) == {"embed_tokens"}
    assert "vision" in frozen and "lm_head" in frozen["llm"] and "embed_tokens" not in frozen["llm"]

    model = Momentor(cfg)

    def loss_fn(trainable_params):
        logits, _ = model.apply({"params": partition.merge_params(trainable_params, frozen)}, batch)
        return compute_loss(logits, batch, cfg)[0]

    grads = jax.jit(jax.grad(loss_fn))(trainable)
    assert jax.tree.structure(grads) == jax.tree.structure(trainable)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert bool(jnp.all(jnp.isfinite(g))), path
        assert float(jnp.max(jnp.abs(g))) > 0, path
    for name in ("input_embedding", "output_embedding"):
        assert float(jnp.min(jnp.sum(jnp.abs(grads["tpm"][name]), axis=1))) > 0  # NTP reaches every row


def test_partition_modes_and_round_trip(tiny):
    _, _, params = tiny
    for mode, expected in (("all", True), ("none", False)):
        assert set(jax.tree.leaves(partition.trainable_mask(params, mode))) == {expected}
    mask = partition.trainable_mask({"params": params}, "momentor")
    assert mask["params"]["llm"]["embed_tokens"]["embedding"] is True
    assert mask["params"]["llm"]["norm"]["scale"] is False
    trainable, frozen = partition.split_params(params, partition.trainable_mask(params, "momentor"))
    merged = partition.merge_params(trainable, frozen)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
        assert a is b
    with pytest.raises(ValueError, match="unknown trainable mode"):
        partition.trainable_mask(params, "lora")
    with pytest.raises(ValueError, match="embed_tokens"):
        partition.trainable_mask({"llm": {"layers": {"w": 0}}}, "momentor")


def test_jit_compiles_once_for_batches_of_one_shape(tiny):
    cfg, batch, params = tiny
    other = make_batch(cfg, seed=7, rows=((0.05, (0.2, 0.9)), (0.5, (0.33, 0.66))))
    traces = []

    @jax.jit
    def step(p, b):
        traces.append(1)
        logits, _ = Momentor(cfg).apply({"params": p}, b)
        return compute_loss(logits, b, cfg)

    first, _ = step(params, batch)
    second, _ = step(params, other)
    assert len(traces) == 1
    assert float(first) != float(second)


def test_embeddings_splice_frames_times_and_temporal_ids(tiny):
    cfg, batch, params = tiny
    model = Momentor(cfg)
    variables = {"params": params}
    special = constants.special_token_ids(cfg.llm.vocab_size)
    video = model.apply(variables, batch["frames"], method=model.encode_video)
    assert video.shape == (2, cfg.num_frames, cfg.llm.hidden_size)
    embeds = model.apply(variables, batch["input_ids"], batch["token_times"], video, method=model.embed_inputs)

    e_in = params["tpm"]["input_embedding"]
    for r in range(2):
        ids = batch["input_ids"][r]
        np.testing.assert_array_equal(embeds[r, ids == special["vid_patch"]], video[r])
        for pos in np.flatnonzero((ids == special["temp_input"]) | (ids == special["temp_output"])):
            np.testing.assert_allclose(embeds[r, pos], tpm.interpolate(e_in, batch["token_times"][r, pos]),
                                       rtol=1e-6, atol=1e-7)
        text = (ids < special["vid_patch"]) | (ids == special["vid_start"]) | (ids == special["vid_end"])
        assert text.sum() >= 10
        np.testing.assert_array_equal(embeds[r, text], params["llm"]["embed_tokens"]["embedding"][ids[text]])

    # Frames get the projected features plus (E_in' + E_out') / 2 at their times (M = 8 frames, N = 16 tokens).
    features = VisionTower(cfg.vision).apply({"params": params["vision"]},
                                             clip_normalize(batch["frames"][0]))
    projected = features @ params["projector"]["kernel"] + params["projector"]["bias"]
    frame_emb = tpm.frame_temporal_embeddings(e_in, params["tpm"]["output_embedding"], cfg.num_frames)
    np.testing.assert_allclose(video[0], projected + frame_emb, rtol=1e-4, atol=1e-5)

    # A generated temporal token V + k is fed back as E_in'[k], or interpolated at a refined time.
    generated = jnp.array([[cfg.llm.vocab_size + 3, 7], [cfg.llm.vocab_size + 15, cfg.llm.vocab_size]])
    fed = model.apply(variables, generated, method=model.embed_generated)
    np.testing.assert_array_equal(fed[0, 0], e_in[3])
    np.testing.assert_array_equal(fed[1, 0], e_in[15])
    np.testing.assert_array_equal(fed[1, 1], e_in[0])
    np.testing.assert_array_equal(fed[0, 1], params["llm"]["embed_tokens"]["embedding"][7])
    refined = jnp.array([[3.5 / 15, 0.0], [1.0, 0.0]])
    fed = model.apply(variables, generated, refined, method=model.embed_generated)
    np.testing.assert_allclose(fed[0, 0], (e_in[3] + e_in[4]) / 2, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(fed[0, 1], params["llm"]["embed_tokens"]["embedding"][7])


def test_cached_features_mode_matches_frames_mode(tiny):
    cfg, batch, params = tiny
    cached_cfg = dataclasses.replace(cfg, use_cached_features=True)
    features = jax.vmap(lambda f: VisionTower(cfg.vision).apply({"params": params["vision"]}, clip_normalize(f)))(
        batch["frames"])
    cached_batch = {k: v for k, v in batch.items() if k != "frames"}
    cached_batch["features"] = np.asarray(features)

    assert "vision" not in init_params(cached_cfg, cached_batch)
    text_params = {k: v for k, v in params.items() if k != "vision"}
    cached_logits, _ = Momentor(cached_cfg).apply({"params": text_params}, cached_batch)
    frame_logits, _ = Momentor(cfg).apply({"params": params}, batch)
    np.testing.assert_allclose(cached_logits, frame_logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="use_cached_features"):
        Momentor(cached_cfg).apply({"params": text_params}, batch)


def test_tpm_disabled_returns_vocabulary_logits():
    cfg = config_lib.tiny(tpm_enabled=False, use_cached_features=True)
    batch = make_batch(cfg, seed=3)
    params = init_params(cfg, batch)
    assert "tpm" not in params
    logits, _ = Momentor(cfg).apply({"params": params}, batch)
    assert logits.shape == (2, SEQ_LEN, cfg.llm.vocab_size)
    loss, aux = compute_loss(logits, batch, cfg)
    assert np.isfinite(float(loss)) and float(aux["num_temporal_tokens"]) == 0
    assert float(aux["num_text_tokens"]) == 12


def test_kv_cache_prefill_and_decode_match_full_forward(tiny):
    cfg, batch, params = tiny
    model = Momentor(cfg)
    variables = {"params": params}
    full_ids = batch["input_ids"][:1].copy()
    split = 20
    full_ids[0, split] = cfg.llm.vocab_size + 9  # a generated temporal token fed back at position `split`
    full_batch = dict(batch, input_ids=full_ids, segment_ids=(np.arange(SEQ_LEN) <= split)[None].astype(np.int32),
                      positions=batch["positions"][:1], token_times=batch["token_times"][:1],
                      frames=batch["frames"][:1])
    full_logits, _ = model.apply(variables, full_batch)

    prefill = dict(full_batch, input_ids=full_ids[:, :split], segment_ids=np.ones((1, split), np.int32),
                   positions=full_batch["positions"][:, :split], token_times=full_batch["token_times"][:, :split])
    cache = init_cache(cfg.llm, 1, SEQ_LEN)
    prefill_logits, cache = model.apply(variables, prefill, cache)
    np.testing.assert_allclose(prefill_logits, full_logits[:, :split], rtol=1e-4, atol=1e-4)

    step_embeds = model.apply(variables, full_ids[:, split:split + 1], method=model.embed_generated)
    step_logits, cache = model.apply(variables, step_embeds, cache["lengths"][:, None], np.ones((1, 1), np.int32),
                                     cache, method=model.forward_embeds)
    np.testing.assert_allclose(step_logits[:, 0], full_logits[:, split], rtol=1e-4, atol=1e-4)
    assert int(cache["lengths"][0]) == split + 1


def test_video_marker_gradient_mode_trains_only_marker_rows():
    cfg = config_lib.tiny(use_cached_features=True, text_embedding_grad="video_markers")
    batch = make_batch(cfg, seed=5)
    params = init_params(cfg, batch)
    model = Momentor(cfg)

    def loss_fn(p):
        return compute_loss(model.apply({"params": p}, batch)[0], batch, cfg)[0]

    grad = jax.grad(loss_fn)(params)["llm"]["embed_tokens"]["embedding"]
    special = constants.special_token_ids(cfg.llm.vocab_size)
    rows_with_grad = set(np.flatnonzero(np.any(np.asarray(grad) != 0, axis=1)))
    assert rows_with_grad == {special["vid_start"], special["vid_end"]}


def test_check_batch_names_the_problem(tiny):
    cfg, batch, _ = tiny
    bad = dict(batch, input_ids=batch["input_ids"].copy())
    bad["input_ids"][1, 5] = constants.special_token_ids(cfg.llm.vocab_size)["vid_end"]  # one patch fewer
    with pytest.raises(ValueError, match="row 1 has 7 <vid_patch>"):
        check_batch(bad, cfg)
    bad["input_ids"][0, 0] = cfg.llm.vocab_size + cfg.num_temporal_tokens
    with pytest.raises(ValueError, match=r"input_ids\[0, 0\]"):
        check_batch(bad, cfg)
    with pytest.raises(ValueError, match="token_times"):
        check_batch(dict(batch, token_times=batch["token_times"] + 2.0), cfg)
