"""Temporal Perception Module (TPM): N temporal tokens with a continuous time axis (docs/DESIGN.md, section 1).

A normalized time p in [0, 1] sits at position e = p (N - 1) between tokens floor(e) and ceil(e). Two tables,
E_in (embeddings of times fed to the LLM) and E_out (extra LM-head rows scoring times), are used through neighboring
token propagation (NTP), so a gradient reaching one token also moves its neighbours.

Pure functions first, then the small `TemporalPerception` module that owns the two tables.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from momentor_jax.models.layers import torch_linear_init

TABLE_AXES = ("temporal", "embed")

# MomentorConfig.temporal_init. "public": the public trainer creates the tables as a torch nn.Embedding and a bias-free
# nn.Linear, then runs LLaMA's _init_weights on them: N(0, initializer_range = 0.02). "torch_default": those torch
# modules' own defaults, N(0, 1) and U(+-1/sqrt(D)); the demo's model learns time from the frames with these (the
# frames get (E_in + E_out) / 2 on top of projected features of std ~0.6, ~40x more than at std 0.02).
PUBLIC_TABLE_STD = 0.02


def table_initializers(temporal_init: str):
    """(E_in initializer, E_out initializer) for MomentorConfig.temporal_init; both tables are [N, D]."""
    if temporal_init == "public":
        return nn.initializers.normal(PUBLIC_TABLE_STD), nn.initializers.normal(PUBLIC_TABLE_STD)
    if temporal_init == "torch_default":
        # [N, D] holds torch's [out, in] Linear weight, so fan_in is the last axis.
        return nn.initializers.normal(1.0), torch_linear_init(in_axis=-1, out_axis=-2)
    raise ValueError(f"temporal_init={temporal_init!r}; choose 'torch_default' or 'public'")


# A position closer than this (in token units) to an integer is snapped to it, so p = k / (N - 1) computed in fp32
# lands exactly on token k (fp32 rounding of k / (N - 1) * (N - 1) is ~1e-5 for N = 300).
_SNAP_TOLERANCE = 1e-4


def propagation_matrix(num_tokens: int) -> jax.Array:
    """R with R_ij = 2^-|i-j| (fp32, [N, N])."""
    index = jnp.arange(num_tokens, dtype=jnp.float32)
    return jnp.exp2(-jnp.abs(index[:, None] - index[None, :]))


def neighbor_propagate(table: jax.Array) -> jax.Array:
    """W' = W + (R W - stop_gradient(R W)).

    The bracket is exactly zero in the forward pass (x - x == 0 for finite x), so W' == W bitwise; the backward pass
    gives dL/dW = g + R^T g (the identity path plus the propagated path), as in the public code's `reparam`.
    """
    spread = jnp.matmul(propagation_matrix(table.shape[0]).astype(table.dtype), table,
                        precision=jax.lax.Precision.HIGHEST)
    return table + (spread - jax.lax.stop_gradient(spread))


def time_to_position(p: jax.Array, num_tokens: int):
    """p (any shape) -> (floor index, ceil index, ratio r) with p clipped to [0, 1] and e = p (N - 1)."""
    p = jnp.clip(jnp.asarray(p, jnp.float32), 0.0, 1.0)
    position = p * (num_tokens - 1)
    nearest = jnp.round(position)
    position = jnp.where(jnp.abs(position - nearest) < _SNAP_TOLERANCE, nearest, position)
    floor = jnp.floor(position)
    ratio = position - floor
    floor_index = jnp.clip(floor.astype(jnp.int32), 0, num_tokens - 1)
    ceil_index = jnp.clip(jnp.ceil(position).astype(jnp.int32), 0, num_tokens - 1)
    return floor_index, ceil_index, ratio


def interpolate(table: jax.Array, p: jax.Array) -> jax.Array:
    """Embedding of time p: (1 - r) E[f] + r E[c]. table [N, D], p [...] -> [..., D] (fp32 mixing)."""
    floor_index, ceil_index, ratio = time_to_position(p, table.shape[0])
    table = table.astype(jnp.float32)
    ratio = ratio[..., None]
    return (1.0 - ratio) * jnp.take(table, floor_index, axis=0) + ratio * jnp.take(table, ceil_index, axis=0)


def frame_temporal_embeddings(input_table: jax.Array, output_table: jax.Array, num_frames: int) -> jax.Array:
    """[M, D] embeddings added to the projected frames: frame i gets (E_in[i] + E_out[i]) / 2.

    When M != N frame i is placed at p = i / (M - 1) on the continuous axis (both video ends included).
    """
    num_tokens = input_table.shape[0]
    if num_frames == num_tokens:
        return (input_table.astype(jnp.float32) + output_table.astype(jnp.float32)) / 2.0
    frame_times = jnp.arange(num_frames, dtype=jnp.float32) / max(num_frames - 1, 1)
    return (interpolate(input_table, frame_times) + interpolate(output_table, frame_times)) / 2.0


def soft_temporal_targets(p: jax.Array, num_tokens: int, on_token: str = "one") -> jax.Array:
    """Target distribution over the N temporal columns: (1 - r) on floor, r on ceil.

    When f == c (p on a token): on_token="one" puts 1 on the token; "zeros" gives the all-zero row of the public
    code, which writes 1 - r and then r = 0 into that one column.
    """
    floor_index, ceil_index, ratio = time_to_position(p, num_tokens)
    targets = ((1.0 - ratio[..., None]) * jax.nn.one_hot(floor_index, num_tokens, dtype=jnp.float32)
               + ratio[..., None] * jax.nn.one_hot(ceil_index, num_tokens, dtype=jnp.float32))
    if on_token == "zeros":
        return jnp.where((floor_index == ceil_index)[..., None], 0.0, targets)
    if on_token != "one":
        raise ValueError(f"on_token={on_token!r}; choose 'one' or 'zeros'")
    return targets


def token_to_time(k, num_tokens: int):
    """Temporal token index k -> normalized time k / (N - 1)."""
    return jnp.asarray(k, jnp.float32) / (num_tokens - 1)


def decode_time(temporal_logits: jax.Array) -> jax.Array:
    """Sub-token time from the N temporal logits [..., N] -> p [...].

    k* = argmax; p = expected position under the softmax restricted to k*-1, k*, k*+1 (those inside [0, N)),
    divided by N - 1.
    """
    num_tokens = temporal_logits.shape[-1]
    logits = temporal_logits.astype(jnp.float32)
    best = jnp.argmax(logits, axis=-1)
    neighbours = best[..., None] + jnp.arange(-1, 2)
    valid = (neighbours >= 0) & (neighbours < num_tokens)
    neighbour_logits = jnp.take_along_axis(logits, jnp.clip(neighbours, 0, num_tokens - 1), axis=-1)
    weights = jax.nn.softmax(jnp.where(valid, neighbour_logits, -jnp.inf), axis=-1)
    position = jnp.sum(weights * neighbours.astype(jnp.float32), axis=-1)
    return position / (num_tokens - 1)


class TemporalPerception(nn.Module):
    """Owns E_in ('input_embedding') and E_out ('output_embedding'), both [N, D]; returns them after NTP."""
    num_tokens: int
    embed_dim: int
    neighbor_propagation: bool = True
    param_dtype: jnp.dtype = jnp.float32
    temporal_init: str = "torch_default"  # see table_initializers

    def setup(self):
        input_init, output_init = table_initializers(self.temporal_init)
        self.input_embedding = self.param(
            "input_embedding", nn.with_logical_partitioning(input_init, TABLE_AXES),
            (self.num_tokens, self.embed_dim), self.param_dtype)
        self.output_embedding = self.param(
            "output_embedding", nn.with_logical_partitioning(output_init, TABLE_AXES),
            (self.num_tokens, self.embed_dim), self.param_dtype)

    def tables(self):
        """(E_in', E_out') as used everywhere in the model."""
        if not self.neighbor_propagation:
            return self.input_embedding, self.output_embedding
        return neighbor_propagate(self.input_embedding), neighbor_propagate(self.output_embedding)

    def embed_times(self, p: jax.Array) -> jax.Array:
        """Interpolated E_in' at times p [...] -> [..., D] fp32."""
        return interpolate(self.tables()[0], p)

    def embed_tokens(self, k: jax.Array) -> jax.Array:
        """E_in'[k] for temporal token indices k [...] -> [..., D] fp32."""
        k = jnp.clip(k, 0, self.num_tokens - 1)
        return jnp.take(self.tables()[0].astype(jnp.float32), k, axis=0)

    def frame_embeddings(self, num_frames: int) -> jax.Array:
        """[M, D] fp32 temporal embeddings of the M frames."""
        input_table, output_table = self.tables()
        return frame_temporal_embeddings(input_table, output_table, num_frames)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Temporal logits hidden @ E_out'^T: [..., D] -> [..., N] fp32."""
        output_table = self.tables()[1]
        return jnp.einsum("...d,nd->...n", hidden, output_table.astype(hidden.dtype),
                          preferred_element_type=jnp.float32)

    def __call__(self, p: jax.Array) -> jax.Array:
        return self.embed_times(p)
