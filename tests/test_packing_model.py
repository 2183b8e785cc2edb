"""Packed rows through the tiny Momentor (fp32): the same per-token losses and gradients as one dialogue per row,
and no dialogue sees another (segment-causal attention, each dialogue's own video)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentor_jax import constants
from momentor_jax.data import encode, packing, synthetic
from momentor_jax.models import config as config_lib
from momentor_jax.models import partition
from momentor_jax.models.loss import token_losses
from momentor_jax.models.momentor import Momentor, check_batch
from momentor_jax.tools.bench import loader_data

MAX_LENGTH = 256
NUM_TEMPORAL = 16


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return loader_data.make_tokenizer(str(tmp_path_factory.mktemp("packing_sp")), NUM_TEMPORAL)


def dialogues(cfg, tokenizer, count=7, seed=0):
    """Encoded dialogues (fixed length, one each) with <TEMP-INPUT> and <TEMP-OUTPUT>, each with its own video."""
    rng = np.random.default_rng(seed)
    specs = synthetic.sample_videos(seed, count)
    out = []
    for i, spec in enumerate(specs):
        example = loader_data.examples_for(spec)[i % 3]
        element = dict(encode.encode_example(example, tokenizer, spec.duration, cfg.num_frames, MAX_LENGTH,
                                             loader_data.SHORT_SYSTEM_PROMPT))
        if cfg.use_cached_features:
            element["features"] = rng.normal(size=(cfg.num_frames, cfg.vision_feature_dim)).astype(np.float32)
        else:
            size = cfg.vision.image_size
            element["frames"] = rng.integers(0, 256, (cfg.num_frames, size, size, 3), dtype=np.uint8)
        element["durations"] = np.float32(spec.duration)
        out.append(element)
    return out


def unpacked_batch(elements):
    return {key: np.stack([e[key] for e in elements]) for key in elements[0]}


def packed_batch(elements, max_segments=3, max_videos=3):
    options = packing.PackingOptions(MAX_LENGTH, max_segments=max_segments, max_videos=max_videos)
    groups = packing.pack_lengths([packing.real_length(e) for e in elements], MAX_LENGTH, options.max_items)
    rows = [packing.pack_row([elements[i] for i in group], options) for group in groups]
    return unpacked_batch(rows), groups


@functools.cache
def _apply(cfg):
    model = Momentor(cfg)
    return jax.jit(lambda params, batch: model.apply({"params": params}, batch)[0])


@functools.cache
def _summed_loss_grad(cfg):
    model = Momentor(cfg)

    def summed(trainable, frozen, batch):
        logits = model.apply({"params": partition.merge_params(trainable, frozen)}, batch)[0]
        nll, _ = token_losses(logits, batch, cfg)
        return jnp.sum(nll * batch["loss_mask"])
    return jax.jit(jax.value_and_grad(summed))


def _params(cfg, batch):
    return jax.jit(Momentor(cfg).init)(jax.random.PRNGKey(0), batch)["params"]


def _segment_slices(groups, elements):
    """(packed row, start, unpacked row, length) of every dialogue."""
    out = []
    for row, group in enumerate(groups):
        at = 0
        for i in group:
            n = packing.real_length(elements[i])
            out.append((row, at, i, n))
            at += n
    return out


@pytest.mark.parametrize("variant", ["frames", "features_video_markers"])
def test_packed_losses_and_gradients_equal_unpacked(tokenizer, variant):
    import flax.linen as nn
    if variant == "frames":
        cfg = config_lib.tiny()
    else:
        cfg = config_lib.tiny(use_cached_features=True, text_embedding_grad="video_markers")
    elements = dialogues(cfg, tokenizer)
    unpacked = unpacked_batch(elements)
    packed, groups = packed_batch(elements)
    assert len(groups) < len(elements) and max(len(g) for g in groups) > 1
    check_batch(unpacked, cfg)
    check_batch(packed, cfg)
    special = constants.special_token_ids(cfg.llm.vocab_size)
    assert np.any(packed["input_ids"] == special["temp_input"]) and np.any(packed["targets"] == special["temp_output"])

    params = nn.meta.unbox(_params(cfg, unpacked))
    logits_u, logits_p = _apply(cfg)(params, unpacked), _apply(cfg)(params, packed)
    nll_u, _ = token_losses(logits_u, unpacked, cfg)
    nll_p, _ = token_losses(logits_p, packed, cfg)
    for row, start, i, n in _segment_slices(groups, elements):
        mask = unpacked["loss_mask"][i, :n]
        np.testing.assert_array_equal(packed["loss_mask"][row, start:start + n], mask)
        np.testing.assert_allclose(np.asarray(nll_p[row, start:start + n]) * mask,
                                   np.asarray(nll_u[i, :n]) * mask, atol=1e-5, rtol=0)
        np.testing.assert_allclose(logits_p[row, start:start + n], logits_u[i, :n], atol=1e-5, rtol=1e-5)

    mask = partition.trainable_mask(params, "momentor")
    trainable, frozen = partition.split_params(params, mask)
    loss_u, grads_u = _summed_loss_grad(cfg)(trainable, frozen, unpacked)
    loss_p, grads_p = _summed_loss_grad(cfg)(trainable, frozen, packed)
    np.testing.assert_allclose(loss_p, loss_u, rtol=1e-6)
    leaves_u, leaves_p = jax.tree.leaves(grads_u), jax.tree.leaves(grads_p)
    assert leaves_u and len(leaves_u) == len(leaves_p)
    for gu, gp in zip(leaves_u, leaves_p):
        gu, gp = np.asarray(gu), np.asarray(gp)
        assert np.linalg.norm(gp - gu) <= 1e-5 * max(np.linalg.norm(gu), 1e-12)
    if variant == "features_video_markers":  # the text table learns only through <vid_start>/<vid_end>
        rows = np.flatnonzero(np.any(np.asarray(grads_p["llm"]["embed_tokens"]["embedding"]) != 0, axis=1))
        assert set(rows) == {special["vid_start"], special["vid_end"]}


def test_changing_one_segment_leaves_the_others_unchanged(tokenizer):
    import flax.linen as nn
    cfg = config_lib.tiny()
    elements = dialogues(cfg, tokenizer, seed=3)
    packed, groups = packed_batch(elements)
    params = nn.meta.unbox(_params(cfg, packed))
    row = max(range(len(groups)), key=lambda r: len(groups[r]))
    assert len(groups[row]) >= 2
    segments = packed["segment_ids"][row]
    victim = 2 if len(groups[row]) >= 3 else 1  # a middle segment when there is one
    changed = {k: v.copy() for k, v in packed.items()}
    where = np.flatnonzero(segments == victim)
    text = where[packed["input_ids"][row, where] < cfg.llm.vocab_size - constants.NUM_ADDED_TOKENS][1:]
    changed["input_ids"][row, text] = (changed["input_ids"][row, text] + 7) % 250 + 3
    changed["frames"][row, victim - 1] = 255 - changed["frames"][row, victim - 1]
    before, after = np.asarray(_apply(cfg)(params, packed)), np.asarray(_apply(cfg)(params, changed))
    others = segments != victim
    np.testing.assert_allclose(after[row, others], before[row, others], atol=1e-6, rtol=0)
    assert np.abs(after[row, segments == victim] - before[row, segments == victim]).max() > 1e-3
    other_rows = [r for r in range(len(groups)) if r != row]
    np.testing.assert_allclose(after[other_rows], before[other_rows], atol=1e-6, rtol=0)
