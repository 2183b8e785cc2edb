"""MomentorConfig.loss_positions: the LM head and the loss at each row's supervised positions only give the loss and
gradients of the every-position path (fp32, tiny model, unpacked rows with frames and packed rows with features,
<TEMP-INPUT> and <TEMP-OUTPUT> in both); a row with more supervised tokens than slots takes that path."""
import dataclasses

import jax
import numpy as np
import pytest

from momentor_jax import constants
from momentor_jax.data.packing import PackingOptions
from momentor_jax.models import config as model_configs
from momentor_jax.models import momentor as momentor_lib
from momentor_jax.tools.bench import shared_weights, synthetic_inputs
from momentor_jax.tools.bench import train as train_suite
from momentor_jax.training import flops, trainer


def _loss_and_grads(config, params, batch):
    fns = trainer.momentor_fns(config)

    def loss(p):
        return fns.loss_terms(p, batch, jax.random.PRNGKey(0))

    (value, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return float(value), jax.tree.map(float, aux), jax.tree.map(np.asarray, grads)


def _assert_same(ours, reference, tolerance):
    loss, aux, grads = ours
    ref_loss, ref_aux, ref_grads = reference
    assert abs(loss - ref_loss) <= tolerance * abs(ref_loss)
    for key, value in ref_aux.items():
        assert abs(aux[key] - value) <= tolerance * max(abs(value), 1.0), key
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
        scale = max(float(np.max(np.abs(r))), 1e-12)
        assert float(np.max(np.abs(g - r))) <= tolerance * scale, jax.tree_util.keystr(path)


def _unpacked():
    config = model_configs.tiny()
    batch = synthetic_inputs.training_batch(config, 2, 64, seed=3)
    return config, batch


def _packed():
    config = dataclasses.replace(model_configs.tiny(), use_cached_features=True)
    options = PackingOptions(max_length=128, max_segments=3, max_videos=3, buffer_size=8)
    _, rows, _ = train_suite.length_model_stream(config, 2, 128, options, [40, 55, 31, 62, 47, 38, 50, 44], seed=1)
    batch = train_suite.stack(rows[:2])
    assert np.max(batch["segment_ids"]) >= 2  # dialogues share rows
    return config, batch


@pytest.mark.parametrize("make", [_unpacked, _packed], ids=["unpacked", "packed"])
def test_supervised_positions_only_equal_every_position(make):
    config, batch = make()
    supervised = int(np.max(np.sum(batch["loss_mask"] > 0, axis=1)))
    temporal = batch["targets"] == constants.special_token_ids(config.llm.vocab_size)["temp_output"]
    assert supervised < batch["loss_mask"].shape[1] and np.any(temporal & (batch["loss_mask"] > 0))
    params = shared_weights.random_params(config, seed=0)
    reference = _loss_and_grads(config, params, batch)
    gathered = _loss_and_grads(dataclasses.replace(config, loss_positions=supervised), params, batch)
    _assert_same(gathered, reference, 1e-5)
    # Too few slots for some row: the every-position path, the same computation.
    fallback = _loss_and_grads(dataclasses.replace(config, loss_positions=supervised - 1), params, batch)
    _assert_same(fallback, reference, 0.0)


def test_fallback_logits_are_not_saved_for_the_backward():
    """Under autodiff a lax.cond saves both branches' residuals, the branch not taken filling its share with zeros:
    the every-position fallback is rematerialized, so no [B, L, V + N] array leaves the forward's cond (it would be
    written on every step)."""
    config, batch = _unpacked()
    config = dataclasses.replace(config, loss_positions=16)
    params = shared_weights.random_params(config, seed=0)
    fns = trainer.momentor_fns(config)
    full_logits = (*batch["loss_mask"].shape, config.llm.vocab_size + config.num_temporal_tokens)

    def loss(p):
        return fns.loss_terms(p, batch, jax.random.PRNGKey(0))[0]

    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(params).jaxpr
    conds = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "cond"]
    assert conds  # the forward's branch and the backward's
    shapes = [tuple(var.aval.shape) for eqn in conds for var in eqn.outvars]
    assert full_logits not in shapes, shapes


def test_head_positions_order_and_overflow():
    mask = np.array([[0, 1, 1, 0, 1, 0], [0, 0, 0, 0, 1, 0]], np.float32)
    indices, overflow = momentor_lib.head_positions(mask, 3)
    assert np.asarray(indices).tolist() == [[1, 2, 4], [4, 0, 1]] and not bool(overflow)
    _, overflow = momentor_lib.head_positions(mask, 2)
    assert bool(overflow)


def test_model_flops_count_the_head_at_loss_positions():
    config = model_configs.tiny()
    every = flops.training_flops_per_example(config, 64, "all")
    gathered = flops.training_flops_per_example(dataclasses.replace(config, loss_positions=16), 64, "all")
    head = config.llm.hidden_size * (config.llm.vocab_size + config.num_temporal_tokens) * 6
    assert every - gathered == pytest.approx((64 - 16) * head)


def test_loss_positions_must_be_a_count():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="loss_positions"):
            dataclasses.replace(model_configs.tiny(), loss_positions=bad)
