"""Model FLOPs for MFU: the analytic count of one training example's matmuls (MaxText's accounting) and the peak
FLOP/s of the device it runs on."""
from __future__ import annotations

import jax

from momentor_jax.models import partition

# Dense bf16 peak per chip, by `jax.Device.device_kind` prefix (longest match wins).
PEAK_FLOPS_BY_DEVICE_KIND = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5": 459e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def peak_flops_per_device(configured: float = 0.0) -> float:
    """`configured` if > 0, else the table entry for this device kind, else 0 (MFU is then not reported)."""
    if configured and configured > 0:
        return float(configured)
    kind = jax.devices()[0].device_kind
    matches = [k for k in PEAK_FLOPS_BY_DEVICE_KIND if kind.startswith(k)]
    return PEAK_FLOPS_BY_DEVICE_KIND[max(matches, key=len)] if matches else 0.0


def training_flops_per_example(model_config, max_length: int, trainable: str, videos: int = 1) -> float:
    """Model FLOPs of one training example (one sequence of `max_length` tokens and its frames), or of one packed
    row with `videos` video slots (the tower and the projector run on every slot).

    MaxText's accounting: every matmul costs 2 x params per token forward, 2x for the gradient of its input and 2x
    for the gradient of its weights; attention 2 x L^2 x heads x head_dim per causal layer forward (half of the
    full 4 L^2 H D), x3 with its backward. With every parameter trainable this is exactly MaxText's
    6 x params x tokens + attention. Frozen weights skip the weight-gradient third, and the frozen vision tower
    (nothing upstream of it trains) runs forward only. Rematerialised recomputation is not counted. With
    MomentorConfig.loss_positions = K the LM head runs at K positions per row instead of L (batches that take the
    every-position path are counted as K too).
    """
    llm, vit = model_config.llm, model_config.vision
    # Which weights train, by partition.py's rule (the LLM's input embeddings train alone in 'momentor' mode, and a
    # lookup is no matmul).
    llm_trains = partition.is_trainable((partition.LLM_MODULE, "layers"), trainable)
    vision_trains = partition.is_trainable((partition.VISION_MODULE,), trainable)
    temporal_trains = partition.is_trainable(("tpm",), trainable)
    L, d, hd = max_length, llm.hidden_size, llm.resolved_head_dim
    body = llm.num_layers * (d * hd * (2 * llm.num_heads + 2 * llm.num_kv_heads) + 3 * d * llm.intermediate_size)
    head_text = d * llm.vocab_size
    head_temporal = d * model_config.num_temporal_tokens if model_config.tpm_enabled else 0
    backward_weights = 1 if llm_trains else 0
    # Per token and matmul parameter: 2 forward + 2 input gradient + 2 weight gradient (trainable weights only).
    head_rows = min(model_config.loss_positions, L) if model_config.loss_positions else L
    llm_flops = (L * body * (4 + 2 * backward_weights)
                 + head_rows * (head_text * (4 + 2 * backward_weights) + head_temporal * (4 + 2 * temporal_trains)))
    attention = 3 * llm.num_layers * 2 * L * L * llm.num_heads * hd

    projector = 3 * 2 * model_config.num_frames * vit.hidden_size * d * videos
    vision = 0.0
    if not model_config.use_cached_features:
        patches = (vit.image_size // vit.patch_size) ** 2
        tokens = patches + 1
        dv = vit.hidden_size
        per_layer = 4 * dv * dv + 2 * dv * vit.intermediate_size
        matmul = 2 * (tokens * vit.num_layers * per_layer + patches * 3 * vit.patch_size ** 2 * dv)
        vit_attention = vit.num_layers * 4 * tokens * tokens * dv
        vision = videos * model_config.num_frames * (matmul + vit_attention) * (3 if vision_trains else 1)
    return float(llm_flops + attention + projector + vision)
