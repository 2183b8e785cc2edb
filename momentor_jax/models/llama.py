"""LLaMA decoder in flax.linen, numerically the same as Hugging Face `LlamaForCausalLM`.

RMSNorm with fp32 variance, rotary embeddings in HF's rotate-half layout, grouped-query attention through
`jax.nn.dot_product_attention` (with `LlamaConfig.attention_block` > 0, forwards without a KV cache run the same
arithmetic one block of queries at a time against the keys up to the block's end: `blocked_causal_attention`),
SwiGLU MLP, no biases. Layers run under `nn.scan` (params stacked on a leading 'layers' axis) or a python loop, each
optionally rematerialised (`LlamaConfig.remat_policy`, see layers.REMAT_POLICIES).

Parameter tree of `LlamaModel` (scan_layers=True; with scan_layers=False `layers` becomes layers_0, layers_1, ...
without the leading axis):
    embed_tokens/embedding                [V, D]            ('vocab', 'embed')
    layers/input_layernorm/scale          [layers, D]
    layers/self_attn/{q,k,v}_proj/kernel  [layers, D, heads | kv_heads, head_dim]
    layers/self_attn/o_proj/kernel        [layers, heads, head_dim, D]
    layers/post_attention_layernorm/scale [layers, D]
    layers/mlp/{gate,up}_proj/kernel      [layers, D, mlp]; layers/mlp/down_proj/kernel [layers, mlp, D]
    norm/scale                            [D]
    lm_head/kernel                        [D, V]            absent when tie_word_embeddings

KV cache contract (`init_cache`, `LlamaModel.__call__(..., cache=...)`):
    cache = {'k', 'v': [layers, B, S, kv_heads, head_dim], 'segment_ids': [B, S] int32, 'lengths': [B] int32}
    With scan_layers=False 'k' and 'v' are tuples of one [B, S, kv_heads, head_dim] array per layer, so each layer
    updates its own buffer in place (slicing a stacked cache and stacking it again copies all of it every call).
    A call with a chunk of L tokens writes the chunk's keys/values into slots [lengths[b], lengths[b] + L) of each
    row b, lets query i of the chunk attend to every cached slot <= lengths[b] + i with the same segment id, and
    returns the cache with lengths[b] advanced by the number of real tokens (segment_ids != 0) in the chunk.
    Chunks must be right-padded (real tokens first). Positions are used only for rotary embeddings and are the
    caller's business: they must be the row's token positions (prefill: 0..len-1; decode: `cache['lengths']`).
    Prefill: a right-padded batch [B, L] (segment_ids 0 on padding) into a fresh cache. Decode: [B, 1] with
    segment_ids 1 and positions `cache['lengths'][:, None]`; each row continues at its own length, overwriting
    its prefill padding. S must be >= the longest row's final length plus the chunk length (writes past S are
    clamped by XLA, not detected).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from momentor_jax.models.config import LlamaConfig
from momentor_jax.models.layers import (DEFAULT_INIT, Dense, RMSNorm, rotary_embedding, splash_attention, stack_layers,
                                        swiglu, to_dtype)

# "splash": the TPU Pallas kernel for full-sequence forwards (training, scoring); calls with a KV cache use "xla".
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "splash")


def init_cache(config: LlamaConfig, batch_size: int, max_length: int, dtype=jnp.float32) -> dict:
    """An empty KV cache for `batch_size` rows of up to `max_length` tokens, stacked or per layer as the config's
    layers run (see the module docstring)."""
    shape = (batch_size, max_length, config.num_kv_heads, config.resolved_head_dim)
    if config.scan_layers:
        k = v = jnp.zeros((config.num_layers,) + shape, dtype)
    else:
        k = v = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
    return {
        "k": k,
        "v": v,
        "segment_ids": jnp.zeros((batch_size, max_length), jnp.int32),
        "lengths": jnp.zeros((batch_size,), jnp.int32),
    }


def unstack_layers(tree: dict, num_layers: int) -> dict:
    """A params tree whose `layers` subtree is stacked on a leading axis (nn.scan) -> the same weights as
    layers_0, layers_1, ... (the names the unrolled loop's modules get). Numpy leaves become views; jax arrays
    slices (inside jit, copies made once, outside any loop that uses them)."""
    tree = dict(tree)
    stacked = tree.pop("layers")
    for i in range(num_layers):
        tree[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
    return tree


def unrolled(params: dict, config: LlamaConfig) -> tuple[dict, LlamaConfig]:
    """(LlamaModel params, config) with the layers unrolled (scan_layers=False); unchanged when they already are."""
    if not config.scan_layers:
        return params, config
    return unstack_layers(params, config.num_layers), dataclasses.replace(config, scan_layers=False)


def _write_rows(buffer, chunk, start):
    """buffer[b, start[b]:start[b] + L] = chunk[b] for every row b."""
    return jax.vmap(lambda buf, c, s: jax.lax.dynamic_update_slice_in_dim(buf, c.astype(buf.dtype), s, axis=0))(
        buffer, chunk, start)


def _attention_mask(segment_ids, cache):
    """Boolean mask [B, 1, L, S]: causal within equal segment ids; S = L without a cache, the cache size with one.

    Padding (segment 0) attends to padding only, so no softmax row is empty. Returns (mask, write_index,
    key_segment_ids, new_lengths); the last three are None without a cache.
    """
    length = segment_ids.shape[1]
    if cache is None:
        query_slot = jnp.arange(length)[None, :]
        key_slot = jnp.arange(length)
        key_segments = segment_ids
        write_index = new_lengths = None
    else:
        write_index = cache["lengths"]
        query_slot = write_index[:, None] + jnp.arange(length)[None, :]
        key_slot = jnp.arange(cache["segment_ids"].shape[1])
        key_segments = _write_rows(cache["segment_ids"], segment_ids, write_index)
        new_lengths = write_index + jnp.sum(segment_ids != 0, axis=1).astype(jnp.int32)
    causal = key_slot[None, None, :] <= query_slot[:, :, None]
    same_segment = segment_ids[:, :, None] == key_segments[:, None, :]
    mask = (causal & same_segment)[:, None]
    return mask, write_index, (None if cache is None else key_segments), new_lengths


def blocked_causal_attention(q, k, v, mask, block: int):
    """Attention of q [B, L, heads, head_dim] over k, v [B, L, kv_heads, head_dim] under a causal mask [B, 1, L, L],
    one block of `block` queries at a time: queries [start, stop) attend to keys [0, stop) only. Every key after
    `stop` is masked for those queries anyway (causality), so the result is `jax.nn.dot_product_attention`'s (XLA)
    up to summation order, without computing, masking and differentiating the upper triangle of the scores: n blocks
    compute (n + 1) / 2n of the [L, L] matrix. The blocks are a static python loop (L and block are static).

    The forward is jax's XLA attention arithmetic (logits in fp32 scaled by head_dim ** -0.5, masked to a large
    negative, softmax in fp32, probabilities in v's dtype; query heads grouped as [kv_heads, heads / kv_heads]); the
    backward is written out (`_blocked_attention_backward`). Layout, for XLA:CPU (timings in docs/measurements.md):
    q, k and v go head-major once per call, not per block (slicing token-major arrays per block made XLA copy every
    block's keys and values into the dot's layout); every dot has one batch dimension, B x kv_heads, with a block's
    query heads and queries as its rows ([B * kv_heads, groups * n, head_dim]), which ran faster than the same dots
    with batch dimensions [B, kv_heads, groups]; and the key and value gradients are summed over the blocks in place,
    where autodiff of the per-block key slices padded each block's share to L and summed them in one fusion with the
    rotary embedding's backward and the transpose to the projections' layout."""
    return _blocked_attention(q, k, v, mask, block)


# Contract head_dim (queries x keys), keys (probabilities x values), rows (a block's queries: weight-like gradients
# of keys and values); dimension 0, B x kv_heads, is the batch of each.
_SCORES_DIMS = (((2,), (2,)), ((0,), (0,)))
_VALUES_DIMS = (((2,), (1,)), ((0,), (0,)))
_ROWS_DIMS = (((1,), (1,)), ((0,), (0,)))


def _logits_precision(dtype):
    # jax's choice for bf16 logits: an explicit algorithm keeps the backward's dot dtypes consistent (jax#24047).
    return jax.lax.DotAlgorithmPreset.BF16_BF16_F32 if dtype == jnp.bfloat16 else None


def _block_mask(mask, start: int, stop: int, kv_heads: int, groups: int):
    """mask [B, 1, L, L] -> the block's [B * kv_heads, groups * (stop - start), stop]."""
    batch, rows = mask.shape[0], stop - start
    block_mask = jnp.broadcast_to(mask[:, :, None, start:stop, :stop], (batch, kv_heads, groups, rows, stop))
    return block_mask.reshape(batch * kv_heads, groups * rows, stop)


def _queries_head_major(x, kv_heads: int):
    """[B, L, heads, head_dim] -> [B * kv_heads, groups, L, head_dim] (query heads grouped per key/value head)."""
    batch, length, heads, head_dim = x.shape
    groups = heads // kv_heads
    x = jnp.transpose(x.reshape(batch, length, kv_heads, groups, head_dim), (0, 2, 3, 1, 4))
    return x.reshape(batch * kv_heads, groups, length, head_dim)


def _queries_token_major(x, batch: int):
    """The inverse of `_queries_head_major`: [B * kv_heads, groups, L, head_dim] -> [B, L, heads, head_dim]."""
    batch_heads, groups, length, head_dim = x.shape
    kv_heads = batch_heads // batch
    x = jnp.transpose(x.reshape(batch, kv_heads, groups, length, head_dim), (0, 3, 1, 2, 4))
    return x.reshape(batch, length, kv_heads * groups, head_dim)


def _keys_head_major(x):
    """[B, L, kv_heads, head_dim] -> [B * kv_heads, L, head_dim]."""
    batch, length, kv_heads, head_dim = x.shape
    return jnp.transpose(x, (0, 2, 1, 3)).reshape(batch * kv_heads, length, head_dim)


def _keys_token_major(x, batch: int):
    """The inverse of `_keys_head_major`: [B * kv_heads, L, head_dim] -> [B, L, kv_heads, head_dim]."""
    batch_heads, length, head_dim = x.shape
    return jnp.transpose(x.reshape(batch, batch_heads // batch, length, head_dim), (0, 2, 1, 3))


def _blocked_attention_forward(q, k, v, mask, block: int):
    """(output [B, L, heads, head_dim], residuals: head-major q, k, v and output, each block's fp32 probabilities)."""
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    groups = heads // kv_heads
    qh = _queries_head_major(q, kv_heads)
    kh, vh = _keys_head_major(k), _keys_head_major(v)
    scale = jnp.float32(head_dim ** -0.5)
    large_negative = jnp.float32(-0.7 * jnp.finfo(jnp.float32).max)
    outputs, probabilities = [], []
    for start in range(0, length, block):
        stop = min(start + block, length)
        rows = groups * (stop - start)
        queries = qh[:, :, start:stop].reshape(batch * kv_heads, rows, head_dim)
        logits = jax.lax.dot_general(queries, kh[:, :stop], _SCORES_DIMS, precision=_logits_precision(q.dtype),
                                     preferred_element_type=jnp.float32) * scale
        logits = jnp.where(_block_mask(mask, start, stop, kv_heads, groups), logits, large_negative)
        probs = jax.nn.softmax(logits, axis=-1)
        probabilities.append(probs)
        out = jax.lax.dot_general(probs.astype(v.dtype), vh[:, :stop], _VALUES_DIMS)
        outputs.append(out.reshape(batch * kv_heads, groups, stop - start, head_dim))
    oh = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=2)  # [B * kv_heads, groups, L, hd]
    return _queries_token_major(oh, batch), (qh, kh, vh, oh, probabilities, mask)


def _blocked_attention_backward(block: int, residuals, d_out):
    """Per block, with P its probabilities and dO the output's gradient: dV += P^T dO; dS = P * (dO V^T - rowsum(dO *
    O)) * scale on unmasked scores (0 where masked, as the forward's `where` passes no gradient); dQ = dS K;
    dK += dS^T Q. Key and value gradients accumulate in fp32."""
    qh, kh, vh, oh, probabilities, mask = residuals
    batch_heads, groups, length, head_dim = qh.shape
    batch = mask.shape[0]
    kv_heads = batch_heads // batch
    scale = jnp.float32(head_dim ** -0.5)
    precision = _logits_precision(qh.dtype)
    d_oh = _queries_head_major(d_out, kv_heads)
    row_sums = jnp.sum(d_oh.astype(jnp.float32) * oh.astype(jnp.float32), axis=-1)  # [B * kv_heads, groups, L]
    dk = jnp.zeros(kh.shape, jnp.float32)
    dv = jnp.zeros(vh.shape, jnp.float32)
    dq_blocks = []
    for index, start in enumerate(range(0, length, block)):
        stop = min(start + block, length)
        rows = groups * (stop - start)
        probs = probabilities[index]
        d_block = d_oh[:, :, start:stop].reshape(batch_heads, rows, head_dim)
        queries = qh[:, :, start:stop].reshape(batch_heads, rows, head_dim)
        dv = dv.at[:, :stop].add(jax.lax.dot_general(probs.astype(vh.dtype), d_block, _ROWS_DIMS,
                                                     preferred_element_type=jnp.float32))
        d_probs = jax.lax.dot_general(d_block, vh[:, :stop], _SCORES_DIMS, preferred_element_type=jnp.float32)
        d_scores = probs * (d_probs - row_sums[:, :, start:stop].reshape(batch_heads, rows)[..., None]) * scale
        d_scores = jnp.where(_block_mask(mask, start, stop, kv_heads, groups), d_scores, 0.0).astype(qh.dtype)
        dq = jax.lax.dot_general(d_scores, kh[:, :stop], _VALUES_DIMS, precision=precision,
                                 preferred_element_type=jnp.float32)
        dq_blocks.append(dq.astype(qh.dtype).reshape(batch_heads, groups, stop - start, head_dim))
        dk = dk.at[:, :stop].add(jax.lax.dot_general(d_scores, queries, _ROWS_DIMS, precision=precision,
                                                     preferred_element_type=jnp.float32))
    dqh = dq_blocks[0] if len(dq_blocks) == 1 else jnp.concatenate(dq_blocks, axis=2)
    return (_queries_token_major(dqh, batch), _keys_token_major(dk, batch).astype(kh.dtype),
            _keys_token_major(dv, batch).astype(vh.dtype), None)


_blocked_attention = jax.custom_vjp(lambda q, k, v, mask, block: _blocked_attention_forward(q, k, v, mask, block)[0],
                                    nondiff_argnums=(4,))
_blocked_attention.defvjp(_blocked_attention_forward, _blocked_attention_backward)


class Attention(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, segment_ids, mask, write_index, layer_cache):
        cfg = self.config
        dtype, param_dtype = to_dtype(cfg.dtype), to_dtype(cfg.param_dtype)
        d, heads, kv_heads, head_dim = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
        if cfg.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"LlamaConfig.attention={cfg.attention!r}; supported: {ATTENTION_IMPLEMENTATIONS}")

        def proj(n, axis, name):
            return Dense((d,), (n, head_dim), ("embed", axis, "head_dim"), dtype=dtype, param_dtype=param_dtype,
                         name=name)(x)

        q = checkpoint_name(proj(heads, "heads", "q_proj"), "query_proj")
        k = checkpoint_name(proj(kv_heads, "kv_heads", "k_proj"), "key_proj")
        v = checkpoint_name(proj(kv_heads, "kv_heads", "v_proj"), "value_proj")
        q = nn.with_logical_constraint(rotary_embedding(q, positions, cfg.rope_theta),
                                       ("batch", "length", "heads", "head_dim"))
        k = nn.with_logical_constraint(rotary_embedding(k, positions, cfg.rope_theta),
                                       ("batch", "length", "kv_heads", "head_dim"))
        v = nn.with_logical_constraint(v, ("batch", "length", "kv_heads", "head_dim"))

        new_cache = None
        if layer_cache is not None:
            k = _write_rows(layer_cache["k"], k, write_index)
            v = _write_rows(layer_cache["v"], v, write_index)
            new_cache = {"k": k, "v": v}
            k, v = k.astype(dtype), v.astype(dtype)

        if cfg.attention == "splash" and layer_cache is None:
            out = splash_attention(q, k, v, segment_ids)
        elif cfg.attention_block and layer_cache is None:
            out = blocked_causal_attention(q, k, v, mask, cfg.attention_block)
        else:
            implementation = "xla" if cfg.attention == "splash" else cfg.attention
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "head_dim"))
        out = Dense((heads, head_dim), (d,), ("heads", "head_dim", "embed"), dtype=dtype, param_dtype=param_dtype,
                    name="o_proj")(out)
        return checkpoint_name(out, "out_proj"), new_cache


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""
    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dtype, param_dtype = to_dtype(cfg.dtype), to_dtype(cfg.param_dtype)
        d, f = cfg.hidden_size, cfg.intermediate_size
        gate = Dense((d,), (f,), ("embed", "mlp"), dtype=dtype, param_dtype=param_dtype, name="gate_proj")(x)
        up = Dense((d,), (f,), ("embed", "mlp"), dtype=dtype, param_dtype=param_dtype, name="up_proj")(x)
        h = checkpoint_name(swiglu(gate, up), "mlp_in")
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        out = Dense((f,), (d,), ("mlp", "embed"), dtype=dtype, param_dtype=param_dtype, name="down_proj")(h)
        return checkpoint_name(out, "mlp_out")


class DecoderLayer(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, hidden, positions, segment_ids, mask, write_index, layer_cache):
        cfg = self.config

        def norm(name):
            return RMSNorm(cfg.rms_norm_eps, dtype=to_dtype(cfg.dtype), param_dtype=to_dtype(cfg.param_dtype),
                           name=name)

        h = norm("input_layernorm")(hidden)
        attn, new_cache = Attention(cfg, name="self_attn")(h, positions, segment_ids, mask, write_index,
                                                         layer_cache)
        hidden = hidden + attn
        hidden = hidden + MLP(cfg, name="mlp")(norm("post_attention_layernorm")(hidden))
        return nn.with_logical_constraint(hidden, ("batch", "length", "embed")), new_cache


class LlamaModel(nn.Module):
    """Embedding table, decoder layers, final norm and LM head; a parent module calls the three methods."""
    config: LlamaConfig

    def setup(self):
        cfg = self.config
        dtype, param_dtype = to_dtype(cfg.dtype), to_dtype(cfg.param_dtype)
        self.embed_tokens = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
            embedding_init=nn.with_logical_partitioning(DEFAULT_INIT, ("vocab", "embed")))
        layer_cls = stack_layers(DecoderLayer, num_layers=cfg.num_layers, scan=cfg.scan_layers,
                                 policy_name=cfg.remat_policy,
                                 in_axes=(nn.broadcast,) * 4 + (0,))
        if cfg.scan_layers:
            self.layers = layer_cls(cfg)
        else:
            self.layers = [layer_cls(cfg) for _ in range(cfg.num_layers)]
        self.norm = RMSNorm(cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = Dense((cfg.hidden_size,), (cfg.vocab_size,), ("embed", "vocab"), dtype=dtype,
                                 param_dtype=param_dtype, output_dtype=jnp.float32)

    def embed(self, input_ids):
        """Rows of the token embedding table, [B, L, D] in the compute dtype. Ids must be < vocab_size."""
        x = self.embed_tokens(input_ids)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))

    def __call__(self, inputs_embeds, positions, segment_ids, cache=None):
        """Returns (hidden [B, L, D] after the final norm, updated cache or None). See the module docstring."""
        cfg = self.config
        x = nn.with_logical_constraint(inputs_embeds.astype(to_dtype(cfg.dtype)), ("batch", "length", "embed"))
        mask, write_index, key_segments, new_lengths = _attention_mask(segment_ids, cache)
        kv = None if cache is None else {"k": cache["k"], "v": cache["v"]}
        if cfg.scan_layers:
            x, new_kv = self.layers(x, positions, segment_ids, mask, write_index, kv)
        else:
            if kv is not None and not isinstance(kv["k"], (tuple, list)):
                raise ValueError("unrolled layers (scan_layers=False) take a per-layer cache: init_cache with the "
                                 "same LlamaConfig")
            per_layer = []
            for i, layer in enumerate(self.layers):
                x, layer_kv = layer(x, positions, segment_ids, mask, write_index,
                                    None if kv is None else {"k": kv["k"][i], "v": kv["v"][i]})
                per_layer.append(layer_kv)
            new_kv = None if kv is None else {name: tuple(c[name] for c in per_layer) for name in ("k", "v")}
        hidden = self.norm(x)
        if cache is None:
            return hidden, None
        return hidden, {**new_kv, "segment_ids": key_segments, "lengths": new_lengths}

    def logits(self, hidden):
        """LM head: [B, L, D] -> [B, L, vocab_size] float32 (transposed embedding table when tied)."""
        cfg = self.config
        dtype = to_dtype(cfg.dtype)
        if cfg.tie_word_embeddings:
            table = self.embed_tokens.embedding.astype(dtype)
            logits = jnp.einsum("bld,vd->blv", hidden.astype(dtype), table, preferred_element_type=jnp.float32)
        else:
            logits = self.lm_head(hidden).astype(jnp.float32)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class LlamaForCausalLM(nn.Module):
    """Plain causal LM over token ids (parity tests, conversion checks). Params: {'llm': LlamaModel params}."""
    config: LlamaConfig

    def setup(self):
        self.llm = LlamaModel(self.config)

    def __call__(self, input_ids, segment_ids=None, positions=None, cache=None):
        """Returns (logits [B, L, V] float32, cache). Defaults: all tokens real, positions 0..L-1."""
        if segment_ids is None:
            segment_ids = jnp.ones(input_ids.shape, jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)
        hidden, cache = self.llm(self.llm.embed(input_ids), positions, segment_ids, cache)
        return self.llm.logits(hidden), cache
