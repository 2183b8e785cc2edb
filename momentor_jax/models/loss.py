"""Momentor training loss: next-token cross-entropy over V + N columns with soft labels at temporal targets.

Where `targets[i]` is the <TEMP-OUTPUT> placeholder, the target distribution puts (1 - r) on temporal column V + f
and r on V + c for the time `target_times[i]` (docs/DESIGN.md, section 1), as the public code's in-place writes do;
where f == c it puts 1 on the token (MomentorConfig.on_token_target="zeros": the public code's all-zero row). Every
other supervised position is an ordinary one-hot target. The loss is the sum of per-token cross-entropies over the batch
divided by the number of supervised tokens (a token mean); the public code averages per sample and sums the samples.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from momentor_jax import constants
from momentor_jax.models import tpm
from momentor_jax.models.config import MomentorConfig


def _safe_mean(total, count):
    return total / jnp.maximum(count, 1.0)


def token_losses(logits: jax.Array, batch: dict, config: MomentorConfig):
    """logits [B, L, V(+N)] -> (cross-entropy at every position [B, L] in fp32, is_temporal [B, L]); only
    positions with loss_mask count."""
    vocab_size = config.llm.vocab_size
    targets = batch["targets"]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

    hard_nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if config.tpm_enabled:
        if logits.shape[-1] != vocab_size + config.num_temporal_tokens:
            raise ValueError(f"logits have {logits.shape[-1]} columns; expected V + N = "
                             f"{vocab_size} + {config.num_temporal_tokens}")
        is_temporal = targets == constants.special_token_ids(vocab_size)["temp_output"]
        soft = tpm.soft_temporal_targets(batch["target_times"], config.num_temporal_tokens, config.on_token_target)
        temporal_log_probs = log_probs[..., vocab_size:]
        soft_nll = -jnp.sum(soft * temporal_log_probs, axis=-1)
        nll = jnp.where(is_temporal, soft_nll, hard_nll)
    else:
        is_temporal = jnp.zeros_like(targets, dtype=bool)
        nll = hard_nll
    return nll, is_temporal


def compute_loss(logits: jax.Array, batch: dict, config: MomentorConfig):
    """logits [B, L, V(+N)] -> (scalar loss, aux dict of scalars). All arithmetic in fp32."""
    vocab_size = config.llm.vocab_size
    mask = batch["loss_mask"].astype(jnp.float32)
    nll, is_temporal = token_losses(logits, batch, config)

    temporal_mask = mask * is_temporal
    text_mask = mask - temporal_mask
    num_tokens = jnp.sum(mask)
    num_temporal = jnp.sum(temporal_mask)
    num_text = jnp.sum(text_mask)
    loss = _safe_mean(jnp.sum(nll * mask), num_tokens)

    aux = {
        "text_loss": _safe_mean(jnp.sum(nll * text_mask), num_text),
        "temporal_loss": _safe_mean(jnp.sum(nll * temporal_mask), num_temporal),
        "num_text_tokens": num_text,
        "num_temporal_tokens": num_temporal,
    }
    if config.tpm_enabled:
        # Argmax among the N temporal columns within one token of the continuous target position p (N - 1).
        predicted = jnp.argmax(logits[..., vocab_size:], axis=-1).astype(jnp.float32)
        target_position = jnp.clip(batch["target_times"], 0.0, 1.0) * (config.num_temporal_tokens - 1)
        hit = (jnp.abs(predicted - target_position) <= 1.0 + 1e-4).astype(jnp.float32)
        aux["temporal_accuracy"] = _safe_mean(jnp.sum(hit * temporal_mask), num_temporal)
    else:
        aux["temporal_accuracy"] = jnp.zeros((), jnp.float32)
    return loss, aux
