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


def split_logits(logits: jax.Array, config: MomentorConfig):
    """[B, L, V(+N)] -> (text [B, L, V], temporal [B, L, N] or None without TPM): what `compute_loss_parts` takes."""
    if not config.tpm_enabled:
        return logits, None
    vocab_size = config.llm.vocab_size
    if logits.shape[-1] != vocab_size + config.num_temporal_tokens:
        raise ValueError(f"logits have {logits.shape[-1]} columns; expected V + N = "
                         f"{vocab_size} + {config.num_temporal_tokens}")
    return logits[..., :vocab_size], logits[..., vocab_size:]


def token_losses(logits: jax.Array, batch: dict, config: MomentorConfig):
    """logits [B, L, V(+N)] -> (cross-entropy at every position [B, L] in fp32, is_temporal [B, L]); only
    positions with loss_mask count."""
    return token_losses_parts(*split_logits(logits, config), batch, config)


def _log_normalizer(text: jax.Array, temporal: jax.Array) -> jax.Array:
    """logsumexp over the V text and N temporal columns together, [..., V], [..., N] -> [...] (fp32)."""
    peak = jax.lax.stop_gradient(jnp.maximum(jnp.max(text, axis=-1), jnp.max(temporal, axis=-1)))[..., None]
    total = jnp.sum(jnp.exp(text - peak), axis=-1) + jnp.sum(jnp.exp(temporal - peak), axis=-1)
    return peak[..., 0] + jnp.log(total)


def token_losses_parts(text_logits: jax.Array, temporal_logits, batch: dict, config: MomentorConfig):
    """`token_losses` of the two column groups of the logits, never concatenated: the log-softmax over V + N is
    x - logsumexp, with the logsumexp joined from the two groups (the same arithmetic up to summation order), so no
    [B, L, V + N] fp32 copy of the logits is written (a measurable share of the bench step: docs/measurements.md)."""
    vocab_size = config.llm.vocab_size
    targets = batch["targets"].astype(jnp.int32)
    text = text_logits.astype(jnp.float32)
    if config.tpm_enabled:
        if temporal_logits is None or text.shape[-1] != vocab_size \
                or temporal_logits.shape[-1] != config.num_temporal_tokens:
            raise ValueError(f"logit parts have {text.shape[-1]} and "
                             f"{None if temporal_logits is None else temporal_logits.shape[-1]} columns; expected "
                             f"V = {vocab_size} and N = {config.num_temporal_tokens}")
        temporal = temporal_logits.astype(jnp.float32)
        # Rematerialized: the backward recomputes exp(x - peak) inside its own elementwise pass, so no [B, L, V] fp32
        # array of them is written in the forward and kept until the backward (docs/measurements.md).
        log_normalizer = jax.checkpoint(_log_normalizer)(text, temporal)
        target_text = jnp.take_along_axis(text, jnp.clip(targets, 0, vocab_size - 1)[..., None], axis=-1)[..., 0]
        target_temporal = jnp.take_along_axis(temporal, jnp.clip(targets - vocab_size, 0, temporal.shape[-1] - 1)
                                              [..., None], axis=-1)[..., 0]
        hard_nll = log_normalizer - jnp.where(targets < vocab_size, target_text, target_temporal)
        is_temporal = targets == constants.special_token_ids(vocab_size)["temp_output"]
        soft = tpm.soft_temporal_targets(batch["target_times"], config.num_temporal_tokens, config.on_token_target)
        soft_nll = -jnp.sum(soft * (temporal - log_normalizer[..., None]), axis=-1)
        nll = jnp.where(is_temporal, soft_nll, hard_nll)
    else:
        log_probs = jax.nn.log_softmax(text, axis=-1)
        nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        is_temporal = jnp.zeros_like(targets, dtype=bool)
    return nll, is_temporal


def compute_loss(logits: jax.Array, batch: dict, config: MomentorConfig):
    """logits [B, L, V(+N)] -> (scalar loss, aux dict of scalars). All arithmetic in fp32."""
    return compute_loss_parts(*split_logits(logits, config), batch, config)


def compute_loss_parts(text_logits: jax.Array, temporal_logits, batch: dict, config: MomentorConfig):
    """`compute_loss` of the logits' two column groups (text [B, L, V], temporal [B, L, N] or None without TPM),
    as `Momentor.output_logit_parts` returns them."""
    mask = batch["loss_mask"].astype(jnp.float32)
    nll, is_temporal = token_losses_parts(text_logits, temporal_logits, batch, config)

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
        predicted = jnp.argmax(temporal_logits, axis=-1).astype(jnp.float32)
        target_position = jnp.clip(batch["target_times"], 0.0, 1.0) * (config.num_temporal_tokens - 1)
        hit = (jnp.abs(predicted - target_position) <= 1.0 + 1e-4).astype(jnp.float32)
        aux["temporal_accuracy"] = _safe_mean(jnp.sum(hit * temporal_mask), num_temporal)
    else:
        aux["temporal_accuracy"] = jnp.zeros((), jnp.float32)
    return loss, aux
