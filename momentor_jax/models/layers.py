"""Building blocks shared by the LLaMA decoder and the CLIP vision tower.

Every parameter carries logical axis names (`nn.with_logical_partitioning`); the trainer maps them to mesh axes.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Axes = Sequence[Optional[str]]

# Names accepted by `remat_policy` in the model configs. 'none' means no rematerialisation at all.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_qkv_proj": jax.checkpoint_policies.save_only_these_names("query_proj", "key_proj", "value_proj"),
    "save_out_proj": jax.checkpoint_policies.save_only_these_names("out_proj"),
    "save_qkv_out_proj": jax.checkpoint_policies.save_only_these_names(
        "query_proj", "key_proj", "value_proj", "out_proj"),
    "save_attention_and_mlp": jax.checkpoint_policies.save_only_these_names(
        "query_proj", "key_proj", "value_proj", "out_proj", "mlp_in", "mlp_out"),
}

DEFAULT_INIT = nn.initializers.normal(stddev=0.02)  # HF `initializer_range`


def torch_linear_init(in_axis: int = -2, out_axis: int = -1):
    """torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in the size of `in_axis`."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=in_axis, out_axis=out_axis)


def to_dtype(name) -> jnp.dtype:
    return jnp.dtype(name)


def remat_policy(name: str):
    """Returns (use_remat, jax checkpoint policy) for a config name."""
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy {name!r}; choose one of {sorted(REMAT_POLICIES)}")
    return name != "none", REMAT_POLICIES[name]


def stack_layers(layer_cls, *, num_layers: int, scan: bool, policy_name: str, in_axes, static_argnums=()):
    """Wraps a layer class with remat (per config) and, when `scan`, nn.scan over a leading 'layers' axis.

    The scanned layer must have the signature `(carry, *args) -> (carry, per_layer_output)`.
    """
    use_remat, policy = remat_policy(policy_name)
    if use_remat:
        layer_cls = nn.remat(layer_cls, policy=policy, prevent_cse=not scan, static_argnums=static_argnums)
    if not scan:
        return layer_cls
    return nn.scan(
        layer_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=in_axes,
        length=num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )


class Dense(nn.Module):
    """y = x @ kernel (+ bias): contracts the last `len(in_features)` axes of x with the leading axes of kernel.

    kernel shape = in_features + out_features with logical names `kernel_axes`; the matmul runs in `dtype`.
    """
    in_features: tuple
    out_features: tuple
    kernel_axes: Axes
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = DEFAULT_INIT
    output_dtype: Optional[jnp.dtype] = None  # e.g. float32 logits from a bf16 matmul

    @nn.compact
    def __call__(self, x):
        n_in = len(self.in_features)
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, tuple(self.kernel_axes)),
                            tuple(self.in_features) + tuple(self.out_features), self.param_dtype)
        x = x.astype(self.dtype)
        # The leading axes (batch, length, ...) as one row axis: the weight gradient then contracts a single axis.
        # With two, XLA's CPU compiler first copies the output gradient into a transposed layout, a strided copy
        # that costs as much as the matmul itself for the LM head.
        leading = x.shape[:x.ndim - n_in]
        rows = x.reshape((math.prod(leading),) + x.shape[x.ndim - n_in:])
        y = jax.lax.dot_general(rows, kernel.astype(self.dtype), ((tuple(range(1, n_in + 1)), tuple(range(n_in))),
                                                                   ((), ())),
                                preferred_element_type=self.output_dtype)
        y = y.reshape(leading + y.shape[1:])
        if self.use_bias:
            bias_axes = tuple(self.kernel_axes[n_in:])
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, bias_axes),
                              tuple(self.out_features), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class RMSNorm(nn.Module):
    """LLaMA RMSNorm as HF computes it: variance in fp32, scale applied after casting back to the input dtype."""
    epsilon: float
    axis_name: str = "embed"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                           (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return scale.astype(self.dtype) * normed.astype(self.dtype)


def layer_norm(epsilon: float, axis_name: str, dtype, param_dtype, name: str) -> nn.LayerNorm:
    """torch-style LayerNorm (exact two-pass variance, fp32 statistics) with logically named scale and bias."""
    return nn.LayerNorm(
        epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis_name,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis_name,)),
        name=name)


def rotary_embedding(x, positions, theta: float):
    """HF LLaMA rotary embedding (rotate-half layout). x: [B, L, heads, head_dim]; positions: [B, L] int."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq          # [B, L, head_dim / 2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]     # [B, L, 1, head_dim]
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


@jax.custom_vjp
def swiglu(gate, up):
    """silu(gate) * up (LLaMA's MLP activation), elementwise over any shape, in the inputs' dtype.

    The backward is written out as one elementwise pass over gate, up and the output's gradient (the sigmoid
    recomputed in fp32): autodiff of `nn.silu(gate) * up` wrote sigmoid(gate) and silu(gate) out as separate
    arrays for its backward, three passes over [tokens, mlp] in the forward of every layer (the bench step is
    faster without them: docs/measurements.md)."""
    return nn.silu(gate) * up


def _swiglu_forward(gate, up):
    return swiglu(gate, up), (gate, up)


def _swiglu_backward(residuals, d_out):
    gate, up = residuals
    g, u, d = (x.astype(jnp.float32) for x in (gate, up, d_out))
    sig = jax.nn.sigmoid(g)
    # d silu(g) / dg = sig + g * sig * (1 - sig)
    return (d * u * sig * (1.0 + g * (1.0 - sig))).astype(gate.dtype), (d * g * sig).astype(up.dtype)


swiglu.defvjp(_swiglu_forward, _swiglu_backward)


SPLASH_BLOCK = 512  # splash kernel block size along the sequence (capped at the sequence length)


def splash_attention(q, k, v, segment_ids):
    """Causal, segment-masked attention with the TPU splash (Pallas) kernel; the same result as the XLA path.

    q: [B, L, heads, head_dim]; k, v: [B, L, kv_heads, head_dim] (kv_heads divides heads); segment_ids: [B, L].
    Inside a mesh context the kernel runs per shard under shard_map with batch and head axes placed by the active
    logical axis rules. Off TPU it runs in Pallas interpret mode (slow; for tests). L must be a multiple of 128.
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash  # noqa: PLC0415
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask  # noqa: PLC0415

    length, head_dim = q.shape[1], q.shape[-1]
    if length % 128:
        raise ValueError(f"splash attention needs a sequence length that is a multiple of 128, got {length}")
    block = min(SPLASH_BLOCK, length)
    while length % block:
        block //= 2
    interpret = jax.default_backend() != "tpu"

    def attend(q, k, v, segments):  # [b, heads, L, head_dim] x2 [b, kv_heads, L, head_dim], [b, L]
        mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((length, length))] * q.shape[1])
        sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                                  block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
        kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
        return jax.vmap(kernel)(q, k, v, segment_ids=splash.SegmentIds(segments, segments))

    q = (q * jnp.asarray(head_dim ** -0.5, q.dtype)).transpose(0, 2, 1, 3)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    segment_ids = segment_ids.astype(jnp.int32)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        out = attend(q, k, v, segment_ids)
    else:
        q_spec = nn.logical_to_mesh_axes(("batch", "heads", "length", "head_dim"))
        kv_spec = nn.logical_to_mesh_axes(("batch", "kv_heads", "length", "head_dim"))
        segment_spec = nn.logical_to_mesh_axes(("batch", "length"))
        out = jax.shard_map(attend, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, segment_spec), out_specs=q_spec,
                            check_vma=False)(q, k, v, segment_ids)
    return out.transpose(0, 2, 1, 3)
