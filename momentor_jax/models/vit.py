"""CLIP vision tower in flax.linen, numerically the same as Hugging Face `CLIPVisionModel` (`pooler_output`).

Patch embedding (a stride-P convolution without bias, done as patchify + matmul), class token, learned position
embeddings, pre-layernorm, pre-norm encoder layers (attention with biases, quick_gelu MLP), and the post-layernorm
applied to the class token. Images are NHWC, already CLIP-normalised (`clip_normalize`).

Parameter tree (scan_layers=True; otherwise layers_0, layers_1, ... without the leading axis):
    patch_embedding/kernel            [P, P, 3, D]
    class_embedding                   [D]
    position_embedding                [patches + 1, D]
    pre_layrnorm/{scale,bias}         [D]              (HF's spelling)
    layers/layer_norm{1,2}/{scale,bias}                 [layers, D]
    layers/self_attn/{q,k,v}_proj/{kernel [layers, D, heads, head_dim], bias [layers, heads, head_dim]}
    layers/self_attn/out_proj/{kernel [layers, heads, head_dim, D], bias [layers, D]}
    layers/mlp/fc1/{kernel [layers, D, F], bias}; layers/mlp/fc2/{kernel [layers, F, D], bias}
    post_layernorm/{scale,bias}       [D]

New parameters start as `CLIPPreTrainedModel._init_weights` starts them (`clip_init`), which matters when a tower
trains from scratch: at a flat std of 0.02 a small tower's pooled output hardly varies with the image.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from momentor_jax.models.config import VisionConfig
from momentor_jax.models.layers import Dense, layer_norm, stack_layers, to_dtype

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_normalize(frames_uint8):
    """uint8 RGB [..., H, W, 3] -> float32 (x / 255 - mean) / std with CLIP's statistics."""
    x = jnp.asarray(frames_uint8).astype(jnp.float32) / 255.0
    return (x - jnp.asarray(CLIP_MEAN, jnp.float32)) / jnp.asarray(CLIP_STD, jnp.float32)


def clip_init(role: str, config: VisionConfig) -> nn.initializers.Initializer:
    """HF CLIP's normal init for a parameter role (initializer_factor 1, initializer_range 0.02; biases are zero)."""
    d = config.hidden_size
    depth = (2 * config.num_layers) ** -0.5
    stddev = {"class_embedding": d ** -0.5, "patch_embedding": 0.02, "position_embedding": 0.02,
              "attention_in": d ** -0.5 * depth, "attention_out": d ** -0.5,
              "fc1": (2 * d) ** -0.5, "fc2": d ** -0.5 * depth}[role]
    return nn.initializers.normal(stddev)


def clip_dense(config: VisionConfig, in_features: tuple, out_features: tuple, kernel_axes: tuple, role: str,
               name: str, use_bias: bool = True) -> Dense:
    """A Dense layer of the tower: the config's dtypes and HF CLIP's init for `role` (see clip_init)."""
    return Dense(in_features, out_features, kernel_axes, use_bias=use_bias, dtype=to_dtype(config.dtype),
                 param_dtype=to_dtype(config.param_dtype), kernel_init=clip_init(role, config), name=name)


def quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        d, heads = cfg.hidden_size, cfg.num_heads
        head_dim = d // heads
        q, k, v = (checkpoint_name(clip_dense(cfg, (d,), (heads, head_dim), ("vision_embed", "vision_heads", None),
                                              "attention_in", f"{n}_proj")(x), saved)
                   for n, saved in (("q", "query_proj"), ("k", "key_proj"), ("v", "value_proj")))
        out = jax.nn.dot_product_attention(q, k, v)  # bidirectional, scale head_dim ** -0.5 as in CLIP
        out = clip_dense(cfg, (heads, head_dim), (d,), ("vision_heads", None, "vision_embed"), "attention_out",
                         "out_proj")(out)
        return checkpoint_name(out, "out_proj")


class MLP(nn.Module):
    config: VisionConfig
    batch_axis: str = "batch"

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        d, f = cfg.hidden_size, cfg.intermediate_size
        h = clip_dense(cfg, (d,), (f,), ("vision_embed", "vision_mlp"), "fc1", "fc1")(x)
        h = nn.with_logical_constraint(checkpoint_name(quick_gelu(h), "mlp_in"),
                                       (self.batch_axis, "patches", "vision_mlp"))
        h = clip_dense(cfg, (f,), (d,), ("vision_mlp", "vision_embed"), "fc2", "fc2")(h)
        return checkpoint_name(h, "mlp_out")


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer; the unused second argument and output fit the nn.scan signature."""
    config: VisionConfig
    batch_axis: str = "batch"

    @nn.compact
    def __call__(self, x, _unused=None):
        cfg = self.config
        dtype, param_dtype = to_dtype(cfg.dtype), to_dtype(cfg.param_dtype)
        h = layer_norm(cfg.layer_norm_eps, "vision_embed", dtype, param_dtype, "layer_norm1")(x)
        x = x + SelfAttention(cfg, name="self_attn")(h)
        h = layer_norm(cfg.layer_norm_eps, "vision_embed", dtype, param_dtype, "layer_norm2")(x)
        x = x + MLP(cfg, self.batch_axis, name="mlp")(h)
        return nn.with_logical_constraint(x, (self.batch_axis, "patches", "vision_embed")), None


class VisionTower(nn.Module):
    """pixel_values [N, H, W, 3] (CLIP-normalised, H = W = image_size) -> pooled [N, hidden_size] float32."""
    config: VisionConfig
    batch_axis: str = "batch"  # logical name of the leading axis (the frames of all videos, batch-major)

    @nn.compact
    def __call__(self, pixel_values):
        cfg = self.config
        dtype, param_dtype = to_dtype(cfg.dtype), to_dtype(cfg.param_dtype)
        n, height, width, channels = pixel_values.shape
        p, d = cfg.patch_size, cfg.hidden_size
        if (height, width, channels) != (cfg.image_size, cfg.image_size, 3):
            raise ValueError(f"VisionTower expects pixel_values [N, {cfg.image_size}, {cfg.image_size}, 3], "
                             f"got {pixel_values.shape}")
        grid = cfg.image_size // p
        act_axes = (self.batch_axis, "patches", "vision_embed")

        patches = pixel_values.astype(dtype).reshape(n, grid, p, grid, p, 3).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(n, grid * grid, p, p, 3)
        x = clip_dense(cfg, (p, p, 3), (d,), (None, None, None, "vision_embed"), "patch_embedding", "patch_embedding",
                       use_bias=False)(patches)
        cls = self.param("class_embedding",
                         nn.with_logical_partitioning(clip_init("class_embedding", cfg), ("vision_embed",)),
                         (d,), param_dtype)
        pos_init = clip_init("position_embedding", cfg)
        pos = self.param("position_embedding", nn.with_logical_partitioning(pos_init, ("patches", "vision_embed")),
                         (grid * grid + 1, d), param_dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (n, 1, d)), x], axis=1) + pos.astype(dtype)
        x = nn.with_logical_constraint(x, act_axes)
        x = layer_norm(cfg.layer_norm_eps, "vision_embed", dtype, param_dtype, "pre_layrnorm")(x)

        layer_cls = stack_layers(EncoderLayer, num_layers=cfg.num_layers, scan=cfg.scan_layers,
                                 policy_name=cfg.remat_policy, in_axes=(nn.broadcast,))
        if cfg.scan_layers:
            x, _ = layer_cls(cfg, self.batch_axis, name="layers")(x, None)
        else:
            for i in range(cfg.num_layers):
                x, _ = layer_cls(cfg, self.batch_axis, name=f"layers_{i}")(x, None)

        pooled = layer_norm(cfg.layer_norm_eps, "vision_embed", dtype, param_dtype, "post_layernorm")(x[:, 0])
        return nn.with_logical_constraint(pooled.astype(jnp.float32), (self.batch_axis, "vision_embed"))

