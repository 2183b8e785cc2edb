"""AdamW with linear warmup and cosine decay, after global-norm clipping (the public run's Hugging Face Trainer setup).

The optimizer only ever sees the trainable split of the parameters, so frozen weights hold no optimizer state.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax


def resolve_warmup_steps(total_steps: int, warmup_steps: int = -1, warmup_fraction: float = 0.0) -> int:
    """`warmup_steps` when >= 0, else ceil(warmup_fraction x total_steps)."""
    if warmup_steps is not None and warmup_steps >= 0:
        return int(warmup_steps)
    return int(math.ceil(warmup_fraction * total_steps))


def learning_rate_schedule(peak: float, total_steps: int, warmup_steps: int, end_value: float = 0.0
                           ) -> optax.Schedule:
    """0 -> peak linearly over `warmup_steps`, then cosine down to `end_value` at `total_steps`."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    warmup_steps = min(warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=end_value)


def decay_mask(params):
    """Weight decay on matrices only: biases, norm scales and other vectors are left alone."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(config, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, learning-rate schedule) from the trainer config keys.

    Keys used: learning_rate, warmup_steps (-1: use warmup_fraction), warmup_fraction, weight_decay,
    grad_clip_norm (<= 0: no clipping), adam_b1, adam_b2, adam_eps.
    """
    warmup = resolve_warmup_steps(total_steps, config.warmup_steps, config.warmup_fraction)
    schedule = learning_rate_schedule(config.learning_rate, total_steps, warmup)
    adamw = optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                        weight_decay=config.weight_decay, mask=decay_mask)
    if config.grad_clip_norm and config.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw), schedule
    return adamw, schedule
