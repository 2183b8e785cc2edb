"""Momentor forward, loss, trainable split and generation interfaces on config.tiny() with hand-built batches."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentor_jax import constants
from momentor_jax.models import config as config_lib
from momentor_jax.models import partition, tpm
from momentor_jax.models.llama import init_cache
from momentor_jax.models.loss import compute_loss, compute_loss_parts
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
        batch["placeholder_times"][r, :n] = times
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


def init_boxed_params(cfg, batch):
    return jax.jit(Momentor(cfg).init)(jax.random.PRNGKey(0), batch)["params"]


def param_shapes(cfg, batch):
    """The parameter tree's shapes without running the initializers (compiling init is slow on CPU)."""
    return nn.meta.unbox(jax.eval_shape(Momentor(cfg).init, jax.random.PRNGKey(0), batch)["params"])


def without(params, *names):
    return {k: v for k, v in params.items() if k not in names}


@functools.cache
def forward(cfg):
    """Jitted (params, batch, cache=None) -> (logits, cache); eager flax is slow on a shared CPU."""
    return jax.jit(lambda params, batch, cache=None: Momentor(cfg).apply({"params": params}, batch, cache))


@functools.cache
def method(cfg, name):
    """Jitted Momentor method `name`(params, *args)."""
    model = Momentor(cfg)
    return jax.jit(lambda params, *args: model.apply({"params": params}, *args, method=getattr(Momentor, name)))


@pytest.fixture(scope="module")
def tiny_boxed():
    cfg = config_lib.tiny()
    batch = make_batch(cfg, seed=0)
    return cfg, batch, init_boxed_params(cfg, batch)


@pytest.fixture(scope="module")
def tiny(tiny_boxed):
    cfg, batch, boxed = tiny_boxed
    return cfg, batch, nn.meta.unbox(boxed)


def test_forward_and_loss_are_finite_with_counted_tokens(tiny):
    cfg, batch, params = tiny
    logits, cache = forward(cfg)(params, batch)
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


def test_loss_of_logit_parts_equals_the_concatenated_log_softmax():
    """compute_loss_parts (text and temporal logits kept apart, the log-normalizer joined from both) gives the loss
    and logit gradients of a log-softmax over the concatenated V + N columns, computed here in float64: large logits
    (the max shift matters), a hard target in the temporal columns (id >= V), soft temporal targets, a masked slot."""
    vocab, temporal = 7, 5
    cfg = config_lib.tiny(llm=dataclasses.replace(config_lib.tiny().llm, vocab_size=vocab),
                          num_temporal_tokens=temporal)
    temp_output = constants.special_token_ids(vocab)["temp_output"]
    logits = 40.0 * jax.random.normal(jax.random.PRNGKey(3), (2, 4, vocab + temporal))
    batch = {"targets": jnp.array([[3, temp_output, vocab + 2, 0], [temp_output, 1, 6, 2]]),
             "loss_mask": jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]),
             "target_times": jnp.array([[0.0, 0.3, 0.0, 0.0], [0.85, 0.0, 0.0, 0.0]])}

    # float64 reference: nll = -sum(target distribution * log_softmax), gradient (softmax - distribution) * mask / n.
    x = np.asarray(logits, np.float64)
    log_p = x - x.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    target = np.eye(vocab + temporal)[np.asarray(batch["targets"])]
    is_temporal = np.asarray(batch["targets"]) == temp_output
    soft = np.asarray(tpm.soft_temporal_targets(batch["target_times"], temporal, cfg.on_token_target), np.float64)
    target[is_temporal] = np.concatenate([np.zeros((int(is_temporal.sum()), vocab)), soft[is_temporal]], -1)
    mask = np.asarray(batch["loss_mask"], np.float64)[..., None]
    expected = float(np.sum(-(target * log_p).sum(-1, keepdims=True) * mask) / mask.sum())
    expected_grad = (np.exp(log_p) - target) * mask / mask.sum()

    value, grad = jax.value_and_grad(
        lambda z: compute_loss_parts(z[..., :vocab], z[..., vocab:], batch, cfg)[0])(logits)
    np.testing.assert_allclose(float(value), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), expected_grad, atol=1e-6)
    np.testing.assert_allclose(float(compute_loss(logits, batch, cfg)[0]), float(value), rtol=0)
    with pytest.raises(ValueError, match="columns"):
        compute_loss_parts(logits[..., :vocab], logits[..., vocab + 1:], batch, cfg)


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


def test_all_but_vision_trains_everything_but_the_tower_with_the_same_gradients(tiny):
    cfg, batch, params = tiny
    trainable, frozen = partition.split_params(params, partition.trainable_mask(params, "all_but_vision"))
    assert set(frozen) == {"vision"} and "vision" not in trainable and {"projector", "tpm", "llm"} <= set(trainable)
    model = Momentor(cfg)

    def loss_fn(trainable_params, frozen_params):
        logits, _ = model.apply({"params": partition.merge_params(trainable_params, frozen_params)}, batch)
        return compute_loss(logits, batch, cfg)[0]

    grads = jax.jit(jax.grad(loss_fn))(trainable, frozen)
    every = jax.jit(jax.grad(loss_fn))(params, {})
    assert jax.tree.structure(grads) == jax.tree.structure(trainable)
    for (path, g), (_, g_all) in zip(jax.tree_util.tree_leaves_with_path(grads),
                                     jax.tree_util.tree_leaves_with_path({k: every[k] for k in trainable})):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_all), rtol=1e-6, atol=1e-9, err_msg=str(path))


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
    special = constants.special_token_ids(cfg.llm.vocab_size)
    video = method(cfg, "encode_video")(params, batch["frames"])
    assert video.shape == (2, cfg.num_frames, cfg.llm.hidden_size)
    embeds = method(cfg, "embed_inputs")(params, batch["input_ids"], batch["placeholder_times"], video)

    e_in = params["tpm"]["input_embedding"]
    for r in range(2):
        ids = batch["input_ids"][r]
        np.testing.assert_array_equal(embeds[r, ids == special["vid_patch"]], video[r])
        for pos in np.flatnonzero((ids == special["temp_input"]) | (ids == special["temp_output"])):
            np.testing.assert_allclose(embeds[r, pos], tpm.interpolate(e_in, batch["placeholder_times"][r, pos]),
                                       rtol=1e-6, atol=1e-7)
        text = (ids < special["vid_patch"]) | (ids == special["vid_start"]) | (ids == special["vid_end"])
        assert text.sum() >= 10
        np.testing.assert_array_equal(embeds[r, text], params["llm"]["embed_tokens"]["embedding"][ids[text]])

    # Frames get the projected features plus (E_in' + E_out') / 2 at their times (M = 8 frames, N = 16 tokens).
    features = jax.jit(VisionTower(cfg.vision).apply)({"params": params["vision"]},
                                                      clip_normalize(batch["frames"][0]))
    projected = features @ params["projector"]["kernel"] + params["projector"]["bias"]
    frame_emb = tpm.frame_temporal_embeddings(e_in, params["tpm"]["output_embedding"], cfg.num_frames)
    np.testing.assert_allclose(video[0], projected + frame_emb, rtol=1e-4, atol=1e-5)

    # A generated temporal token V + k is fed back as E_in'[k], or interpolated at a refined time.
    generated = jnp.array([[cfg.llm.vocab_size + 3, 7], [cfg.llm.vocab_size + 15, cfg.llm.vocab_size]])
    fed = method(cfg, "embed_generated")(params, generated)
    np.testing.assert_array_equal(fed[0, 0], e_in[3])
    np.testing.assert_array_equal(fed[1, 0], e_in[15])
    np.testing.assert_array_equal(fed[1, 1], e_in[0])
    np.testing.assert_array_equal(fed[0, 1], params["llm"]["embed_tokens"]["embedding"][7])
    refined = jnp.array([[3.5 / 15, 0.0], [1.0, 0.0]])
    fed = method(cfg, "embed_generated")(params, generated, refined)
    np.testing.assert_allclose(fed[0, 0], (e_in[3] + e_in[4]) / 2, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(fed[0, 1], params["llm"]["embed_tokens"]["embedding"][7])


def test_cached_features_mode_matches_frames_mode(tiny):
    cfg, batch, params = tiny
    cached_cfg = dataclasses.replace(cfg, use_cached_features=True)
    features = jax.jit(jax.vmap(lambda f: VisionTower(cfg.vision).apply({"params": params["vision"]},
                                                                        clip_normalize(f))))(batch["frames"])
    cached_batch = {k: v for k, v in batch.items() if k != "frames"}
    cached_batch["features"] = np.asarray(features)

    assert set(param_shapes(cached_cfg, cached_batch)) == {"projector", "tpm", "llm"}
    text_params = without(params, "vision")
    cached_logits, _ = forward(cached_cfg)(text_params, cached_batch)
    frame_logits, _ = forward(cfg)(params, batch)
    np.testing.assert_allclose(cached_logits, frame_logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="use_cached_features"):
        Momentor(cached_cfg).apply({"params": text_params}, batch)


def test_tpm_disabled_returns_vocabulary_logits(tiny):
    cfg = config_lib.tiny(tpm_enabled=False, use_cached_features=True)
    batch = make_batch(cfg, seed=3)
    shapes = param_shapes(cfg, batch)
    assert set(shapes) == {"projector", "llm"}
    params = without(tiny[2], "vision", "tpm")
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, shapes)
    logits, _ = forward(cfg)(params, batch)
    assert logits.shape == (2, SEQ_LEN, cfg.llm.vocab_size)
    loss, aux = compute_loss(logits, batch, cfg)
    assert np.isfinite(float(loss)) and float(aux["num_temporal_tokens"]) == 0
    assert float(aux["num_text_tokens"]) == 12


def test_kv_cache_prefill_and_decode_match_full_forward(tiny):
    cfg, batch, params = tiny
    full_ids = batch["input_ids"][:1].copy()
    split = 20
    full_ids[0, split] = cfg.llm.vocab_size + 9  # a generated temporal token fed back at position `split`
    full_batch = dict(batch, input_ids=full_ids, segment_ids=(np.arange(SEQ_LEN) <= split)[None].astype(np.int32),
                      positions=batch["positions"][:1], placeholder_times=batch["placeholder_times"][:1],
                      frames=batch["frames"][:1])
    full_logits, _ = forward(cfg)(params, full_batch)

    prefill = dict(full_batch, input_ids=full_ids[:, :split], segment_ids=np.ones((1, split), np.int32),
                   positions=full_batch["positions"][:, :split],
                   placeholder_times=full_batch["placeholder_times"][:, :split])
    cache = init_cache(cfg.llm, 1, SEQ_LEN)
    prefill_logits, cache = forward(cfg)(params, prefill, cache)
    np.testing.assert_allclose(prefill_logits, full_logits[:, :split], rtol=1e-4, atol=1e-4)

    step_embeds = method(cfg, "embed_generated")(params, full_ids[:, split:split + 1])
    step_logits, cache = method(cfg, "forward_embeds")(params, step_embeds, cache["lengths"][:, None],
                                                       np.ones((1, 1), np.int32), cache)
    np.testing.assert_allclose(step_logits[:, 0], full_logits[:, split], rtol=1e-4, atol=1e-4)
    assert int(cache["lengths"][0]) == split + 1


def test_video_marker_gradient_mode_trains_only_marker_rows(tiny):
    cfg = config_lib.tiny(use_cached_features=True, text_embedding_grad="video_markers")
    batch = make_batch(cfg, seed=5)
    params = without(tiny[2], "vision")
    model = Momentor(cfg)

    def loss_fn(p):
        return compute_loss(model.apply({"params": p}, batch)[0], batch, cfg)[0]

    grad = jax.jit(jax.grad(loss_fn))(params)["llm"]["embed_tokens"]["embedding"]
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
    with pytest.raises(ValueError, match="placeholder_times"):
        check_batch(dict(batch, placeholder_times=batch["placeholder_times"] + 2.0), cfg)


def test_sharded_forward_matches_single_device(tiny_boxed):
    from jax.sharding import AxisType, NamedSharding, PartitionSpec
    from momentor_jax.training.sharding import LOGICAL_AXIS_RULES, MESH_AXES

    cfg, batch, boxed = tiny_boxed
    wide = {k: np.concatenate([v, v[::-1]], axis=0) for k, v in batch.items()}  # 4 rows: batch over data x fsdp
    params = nn.meta.unbox(boxed)
    expected, _ = forward(cfg)(params, wide)

    # tensor = 1: V = 305 (like LLaMA's 32005) does not divide over a tensor axis.
    mesh = jax.make_mesh((2, 2, 1), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=jax.devices()[:4])
    param_shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, LOGICAL_AXIS_RULES)
    sharded_params = jax.device_put(params, param_shardings)
    data = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    sharded_batch = {k: jax.device_put(v, data) for k, v in wide.items()}
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        logits = jax.jit(lambda p, b: Momentor(cfg).apply({"params": p}, b)[0])(sharded_params, sharded_batch)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
