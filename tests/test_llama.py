"""Flax LLaMA vs Hugging Face LlamaForCausalLM in fp32; scan vs loop; KV-cache decoding vs a full forward."""
import dataclasses

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("transformers")

import hf_tiny_models as tiny  # noqa: E402
from momentor_jax.convert import hf  # noqa: E402
from momentor_jax.models import layers, llama  # noqa: E402
from momentor_jax.models.llama import LlamaForCausalLM, init_cache  # noqa: E402

TOL = 1e-4


def _convert(model, scan_layers=True, remat_policy="none"):
    cfg = hf.llama_config_from_hf(model.config, vocab_size=model.config.vocab_size, dtype="float32",
                                  scan_layers=scan_layers, remat_policy=remat_policy)
    params = hf.llama_from_hf(tiny.state_dict_numpy(model).__getitem__, cfg)
    return cfg, {"llm": params}


def _flax_logits(cfg, params, ids, segment_ids=None):
    forward = jax.jit(lambda p, i, s: LlamaForCausalLM(cfg).apply({"params": p}, i, s)[0])
    return np.asarray(forward(params, jnp.asarray(ids), segment_ids))


@pytest.mark.parametrize("kv_heads,tie,theta,head_dim", [
    (2, False, 10000.0, None),      # grouped-query attention, untied head
    (4, False, 500000.0, None),     # rope_theta != 10000
    (1, True, 10000.0, 32),         # tied head, multi-query, head_dim != hidden / heads
])
def test_logits_match_hf(kv_heads, tie, theta, head_dim):
    model = tiny.tiny_llama(num_kv_heads=kv_heads, tie=tie, rope_theta=theta, head_dim=head_dim)
    cfg, params = _convert(model)
    assert ("lm_head" in params["llm"]) == (not tie)
    ids = np.random.default_rng(0).integers(0, tiny.VOCAB, (2, 12)).astype(np.int32)
    np.testing.assert_allclose(_flax_logits(cfg, params, ids), tiny.hf_logits(model, ids), atol=TOL, rtol=0)


def test_right_padding_matches_hf_attention_mask():
    model = tiny.tiny_llama()
    cfg, params = _convert(model)
    ids = np.random.default_rng(1).integers(0, tiny.VOCAB, (2, 10)).astype(np.int32)
    lengths = np.array([10, 6])
    segment_ids = (np.arange(10)[None] < lengths[:, None]).astype(np.int32)
    ours = _flax_logits(cfg, params, ids, jnp.asarray(segment_ids))
    theirs = tiny.hf_logits(model, ids, segment_ids.astype(np.int64))
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(ours[row, :n], theirs[row, :n], atol=TOL, rtol=0)
    assert np.all(np.isfinite(ours))


def test_scan_and_loop_layers_agree():
    model = tiny.tiny_llama()
    ids = np.random.default_rng(2).integers(0, tiny.VOCAB, (2, 8)).astype(np.int32)
    scan_cfg, scan_params = _convert(model, scan_layers=True, remat_policy="nothing_saveable")
    loop_cfg, loop_params = _convert(model, scan_layers=False, remat_policy="save_qkv_proj")
    assert scan_params["llm"]["layers"]["self_attn"]["q_proj"]["kernel"].shape[0] == 2
    assert "layers_1" in loop_params["llm"]
    np.testing.assert_allclose(_flax_logits(scan_cfg, scan_params, ids), _flax_logits(loop_cfg, loop_params, ids),
                               atol=1e-5, rtol=0)


def test_unrolled_params_are_the_loop_layout():
    model = tiny.tiny_llama()
    scan_cfg, scan_params = _convert(model, scan_layers=True)
    loop_cfg, loop_params = _convert(model, scan_layers=False)
    params, cfg = llama.unrolled(scan_params["llm"], scan_cfg)
    assert cfg == loop_cfg
    assert jax.tree.structure(params) == jax.tree.structure(loop_params["llm"])
    jax.tree.map(np.testing.assert_array_equal, params, loop_params["llm"])
    assert llama.unrolled(params, cfg) == (params, cfg)


def test_unrolled_layers_keep_one_cache_buffer_per_layer():
    model = tiny.tiny_llama()
    cfg, params = _convert(model, scan_layers=False)
    cache = init_cache(cfg, 2, 16)
    assert isinstance(cache["k"], tuple) and len(cache["v"]) == cfg.num_layers
    assert cache["k"][0].shape == (2, 16, cfg.num_kv_heads, cfg.resolved_head_dim)
    ids = jnp.ones((2, 3), jnp.int32)
    _, new_cache = LlamaForCausalLM(cfg).apply({"params": params}, ids, cache=cache)
    assert jax.tree.structure(new_cache) == jax.tree.structure(cache)
    stacked = init_cache(dataclasses.replace(cfg, scan_layers=True), 2, 16)
    with pytest.raises(ValueError, match="per-layer cache"):
        LlamaForCausalLM(cfg).apply({"params": params}, ids, cache=stacked)


def test_remat_gradients_match_no_remat():
    model = tiny.tiny_llama()
    ids = jnp.asarray(np.random.default_rng(3).integers(0, tiny.VOCAB, (1, 6)).astype(np.int32))
    grads = []
    for policy in ("none", "nothing_saveable"):
        cfg, params = _convert(model, remat_policy=policy)
        loss = lambda p: jnp.mean(LlamaForCausalLM(cfg).apply({"params": p}, ids)[0] ** 2)  # noqa: E731
        grads.append(jax.jit(jax.grad(loss))(params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), *grads)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_kv_cache_decoding_matches_full_forward(scan_layers):
    model = tiny.tiny_llama()
    cfg, params = _convert(model, scan_layers=scan_layers)
    lm = LlamaForCausalLM(cfg)
    rng = np.random.default_rng(4)
    prompt_lengths, steps, prompt_width = np.array([7, 3, 5]), 4, 7
    batch = len(prompt_lengths)
    full = rng.integers(0, tiny.VOCAB, (batch, prompt_width + steps)).astype(np.int32)

    # Prefill: row b holds its first prompt_lengths[b] tokens, right-padded with zeros.
    prompt = np.where(np.arange(prompt_width)[None] < prompt_lengths[:, None], full[:, :prompt_width], 0)
    segment_ids = (np.arange(prompt_width)[None] < prompt_lengths[:, None]).astype(np.int32)
    cache = init_cache(cfg, batch, prompt_width + steps, jnp.float32)
    apply = jax.jit(lambda p, ids, seg, pos, c: lm.apply({"params": p}, ids, seg, pos, c))
    positions = jnp.broadcast_to(jnp.arange(prompt_width), prompt.shape)
    logits, cache = apply(params, jnp.asarray(prompt), jnp.asarray(segment_ids), positions, cache)
    np.testing.assert_array_equal(np.asarray(cache["lengths"]), prompt_lengths)
    decoded = [np.asarray(logits)[np.arange(batch), prompt_lengths - 1]]

    # Decode: row b's next token is full[b, prompt_lengths[b] + t], at its own position.
    for t in range(steps):
        token = jnp.asarray(full[np.arange(batch), prompt_lengths + t][:, None])
        logits, cache = apply(params, token, jnp.ones_like(token), cache["lengths"][:, None], cache)
        decoded.append(np.asarray(logits)[:, 0])
    decoded = np.stack(decoded, axis=1)  # [B, steps + 1, V]: logits after the prompt and after each new token

    # Reference: one forward over each row's prompt + decoded tokens (right-padded batch), and HF per row.
    total = prompt_lengths + steps
    real = (np.arange(full.shape[1])[None] < total[:, None]).astype(np.int32)
    reference = _flax_logits(cfg, params, np.where(real, full, 0), jnp.asarray(real))
    for b, n in enumerate(prompt_lengths):
        np.testing.assert_allclose(decoded[b], reference[b, n - 1:n + steps], atol=TOL, rtol=0)
        reference_hf = tiny.hf_logits(model, full[b:b + 1, :n + steps])[0, n - 1:]
        np.testing.assert_allclose(decoded[b], reference_hf, atol=TOL, rtol=0)


def test_unknown_remat_policy_is_rejected():
    model = tiny.tiny_llama()
    cfg, params = _convert(model)
    bad = dataclasses.replace(cfg, remat_policy="save_everything_please")
    with pytest.raises(ValueError, match="remat_policy"):
        LlamaForCausalLM(bad).apply({"params": params}, jnp.zeros((1, 4), jnp.int32))


def test_sharded_forward_on_a_data_fsdp_tensor_mesh_matches_unsharded():
    import flax.linen as nn
    from momentor_jax.training import sharding

    model = tiny.tiny_llama()
    cfg, params = _convert(model)
    ids = np.random.default_rng(5).integers(0, tiny.VOCAB, (4, 8)).astype(np.int32)
    expected = _flax_logits(cfg, params, ids)
    mesh = sharding.make_mesh((2, 2, 2))
    rules = sharding.axis_rules()
    lm = LlamaForCausalLM(cfg)
    abstract = jax.eval_shape(lambda: lm.init(jax.random.key(0), jnp.asarray(ids)))["params"]
    placed = jax.device_put(params, sharding.logical_to_shardings(abstract, mesh, rules))
    q_kernel = placed["llm"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q_kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    sharded_ids = jax.device_put(jnp.asarray(ids), sharding.batch_sharding(mesh))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        logits = jax.jit(lambda p, i: lm.apply({"params": p}, i)[0])(placed, sharded_ids)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5, rtol=0)


def test_splash_attention_matches_hf_with_padding_and_on_a_mesh():
    """The TPU splash kernel (Pallas interpret mode off TPU) against HF, unsharded and under a 2x2x2 mesh."""
    import flax.linen as nn
    from momentor_jax.training import sharding

    model = tiny.tiny_llama()
    cfg, params = _convert(model)
    cfg = dataclasses.replace(cfg, attention="splash")
    ids = np.random.default_rng(6).integers(0, tiny.VOCAB, (2, 128)).astype(np.int32)
    segment_ids = (np.arange(128)[None] < np.array([[128], [77]])).astype(np.int32)
    theirs = tiny.hf_logits(model, ids, segment_ids.astype(np.int64))
    ours = _flax_logits(cfg, params, ids, jnp.asarray(segment_ids))
    np.testing.assert_allclose(ours[0], theirs[0], atol=TOL, rtol=0)
    np.testing.assert_allclose(ours[1, :77], theirs[1, :77], atol=TOL, rtol=0)

    mesh, rules = sharding.make_mesh((1, 2, 2), jax.devices()[:4]), sharding.axis_rules()
    lm = LlamaForCausalLM(cfg)
    abstract = jax.eval_shape(lambda: lm.init(jax.random.key(0), jnp.asarray(ids)))["params"]
    placed = jax.device_put(params, sharding.logical_to_shardings(abstract, mesh, rules))
    batch = [jax.device_put(jnp.asarray(a), sharding.batch_sharding(mesh)) for a in (ids, segment_ids)]
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        sharded = jax.jit(lambda p, i, s: lm.apply({"params": p}, i, s)[0])(placed, *batch)
    np.testing.assert_allclose(np.asarray(sharded), ours, atol=1e-5, rtol=0)


def _packed_positions(segment_ids):
    """Positions restarting at 0 at every segment start (0 on padding)."""
    positions = np.zeros_like(segment_ids)
    for r, row in enumerate(segment_ids):
        for segment in np.unique(row[row > 0]):
            at = np.flatnonzero(row == segment)
            positions[r, at] = np.arange(len(at))
    return positions


@pytest.mark.parametrize("layout", ["unpacked", "right_padded", "packed"])
def test_blocked_attention_equals_unblocked(layout):
    """attention_block > 0 (query blocks against the keys up to each block's end) gives the unblocked logits and
    gradients: one sequence per row, right-padded rows, and packed rows of several segments with padding; blocks
    that do not divide the length (16 of 40) and one block longer than it (64). The blocked forward does fewer FLOPs,
    so the blocked path is the one that ran."""
    model = tiny.tiny_llama(num_kv_heads=2)
    cfg, params = _convert(model)
    length = 40
    rng = np.random.default_rng(7)
    ids = jnp.asarray(rng.integers(0, tiny.VOCAB, (2, length)).astype(np.int32))
    segment_ids = np.ones((2, length), np.int32)
    if layout == "right_padded":
        segment_ids[1, 23:] = 0
    elif layout == "packed":
        segment_ids[0] = [1] * 13 + [2] * 19 + [3] * 8
        segment_ids[1] = [1] * 9 + [2] * 20 + [0] * 11
    positions = jnp.asarray(_packed_positions(segment_ids))
    segment_ids = jnp.asarray(segment_ids)
    weights = jnp.asarray(rng.standard_normal((2, length, tiny.VOCAB)).astype(np.float32))

    def forward(config):
        def loss(p):
            logits = LlamaForCausalLM(config).apply({"params": p}, ids, segment_ids, positions)[0]
            return jnp.sum(logits * weights), logits
        fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
        flops = fn.lower(params).compile().cost_analysis()["flops"]
        (_, logits), grads = fn(params)
        return np.asarray(logits), grads, flops

    logits, grads, flops = forward(cfg)
    for block in (16, 64):
        blocked_logits, blocked_grads, blocked_flops = forward(dataclasses.replace(cfg, attention_block=block))
        np.testing.assert_allclose(blocked_logits, logits, atol=1e-5, rtol=0)
        leaves, blocked_leaves = jax.tree.leaves(grads), jax.tree.leaves(blocked_grads)
        assert leaves and len(leaves) == len(blocked_leaves)
        for g, b in zip(leaves, blocked_leaves):
            g, b = np.asarray(g), np.asarray(b)
            assert np.linalg.norm(b - g) <= 1e-5 * max(np.linalg.norm(g), 1e-12)
        if block < length:
            assert blocked_flops < flops
        else:  # one block: the whole score matrix, as unblocked (elementwise counts differ a little by layout)
            assert abs(blocked_flops - flops) <= 0.01 * flops


def _attention_inputs(dtype, seed: int):
    """q, k, v (6 query heads over 2 key/value heads, 24 tokens, head_dim 8) in `dtype`, the model's mask for a
    packed row and a right-padded one, and fp32 output weights for a scalar loss."""
    rng = np.random.default_rng(seed)
    batch, length, heads, kv_heads, head_dim = 2, 24, 6, 2, 8
    q, k, v = (jnp.asarray(rng.standard_normal((batch, length, n, head_dim)), dtype)
               for n in (heads, kv_heads, kv_heads))
    segment_ids = jnp.asarray([[1] * 7 + [2] * 11 + [3] * 6, [1] * 17 + [0] * 7], jnp.int32)
    mask = llama._attention_mask(segment_ids, None)[0]
    weights = jnp.asarray(rng.standard_normal((batch, length, heads, head_dim)), jnp.float32)
    return q, k, v, mask, weights


@pytest.mark.parametrize("dtype,tolerance", [(jnp.float32, 1e-6), (jnp.bfloat16, 2e-2)])
def test_blocked_attention_matches_jax_attention(dtype, tolerance):
    """`blocked_causal_attention` against `jax.nn.dot_product_attention` (XLA) over the whole mask, in the input
    dtype: grouped query heads (6 over 2 key/value heads), a packed row and a right-padded one, blocks that do not
    divide the length; the outputs and the gradients of q, k and v."""
    q, k, v, mask, weights = _attention_inputs(dtype, seed=3)

    def run(fn):
        def loss(q, k, v):
            out = fn(q, k, v)
            return jnp.sum(out.astype(jnp.float32) * weights), out
        (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
        assert out.dtype == dtype
        return [np.asarray(x, np.float32) for x in (out, *grads)]

    expected = run(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla"))
    blocked = run(lambda q, k, v: llama.blocked_causal_attention(q, k, v, mask, 10))
    for name, got, want in zip(("output", "dq", "dk", "dv"), blocked, expected):
        scale = max(float(np.max(np.abs(want))), 1.0)
        assert float(np.max(np.abs(got - want))) <= tolerance * scale, name


def test_blocked_attention_backward_equals_autodiff():
    """The written-out backward of `blocked_causal_attention` gives autodiff's gradients of its own forward: grouped
    query heads, packed and padded rows, blocks that do not divide the length, and a query that sees no key (its
    probabilities are uniform and its scores get no gradient through the mask, as autodiff of the `where` gives)."""
    q, k, v, mask, weights = _attention_inputs(jnp.float32, seed=5)
    mask = mask.at[0, 0, 12].set(False)

    def grads(fn):
        return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * weights), argnums=(0, 1, 2)))(q, k, v)

    written = grads(lambda q, k, v: llama.blocked_causal_attention(q, k, v, mask, 10))
    autodiff = grads(lambda q, k, v: llama._blocked_attention_forward(q, k, v, mask, 10)[0])
    for name, got, want in zip(("dq", "dk", "dv"), written, autodiff):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("dtype,tolerance", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)])
def test_swiglu_backward_equals_autodiff(dtype, tolerance):
    """`layers.swiglu` (backward written out) gives `nn.silu(gate) * up` and its gradients, over large positive and
    negative gates: in fp32 autodiff's, in bf16 fp32 autodiff's on the same (bf16-valued) inputs up to bf16 rounding
    of the results (its backward computes in fp32)."""
    rng = np.random.default_rng(11)
    gate, up, weights = (jnp.asarray(rng.standard_normal((3, 5, 64)) * 6.0, dtype) for _ in range(3))

    def run(fn, input_dtype):
        value, grads = jax.jit(jax.value_and_grad(
            lambda g, u: jnp.sum(fn(g, u).astype(jnp.float32) * weights.astype(jnp.float32)), argnums=(0, 1)))(
                gate.astype(input_dtype), up.astype(input_dtype))
        assert all(g.dtype == input_dtype for g in grads)
        return [np.asarray(x, np.float32) for x in (value, *grads)]

    ours = run(layers.swiglu, dtype)
    autodiff = run(lambda g, u: flax.linen.silu(g) * u, jnp.float32)
    for name, got, want in zip(("value", "d_gate", "d_up"), ours, autodiff):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance, err_msg=name)


@pytest.mark.parametrize("overrides,message", [
    ({"attention_block": -1}, "expected an int >= 0"),
    ({"attention_block": True}, "expected an int >= 0"),
    ({"attention_block": 128, "attention": "splash"}, "blocks the 'xla' attention only"),
])
def test_bad_attention_block_is_rejected(overrides, message):
    from momentor_jax.models.config import LlamaConfig
    with pytest.raises(ValueError, match=message):
        LlamaConfig(**overrides)
