"""Training metrics to TensorBoard (tensorboardX) and a console progress line; only process 0 writes."""
from __future__ import annotations

import datetime
import io
from typing import Mapping, Optional

import jax

# What the console line shows, in order (TensorBoard gets every scalar).
_CONSOLE_KEYS = ("loss", "text_loss", "temporal_loss", "temporal_accuracy", "learning_rate", "grad_norm",
                 "tokens_per_sec", "step_time", "mfu", "examples_per_step", "packing_efficiency", "epoch")


def format_eta(seconds: float) -> str:
    if not seconds or seconds != seconds or seconds < 0:  # also NaN
        return "?"
    return str(datetime.timedelta(seconds=int(round(seconds))))


def format_progress(step: int, total_steps: int, scalars: Mapping[str, float], eta_seconds: Optional[float]) -> str:
    """'step 120/1000 (12.0%) | loss 2.3456 | ... | eta 0:10:05'."""
    parts = [f"step {step}/{total_steps} ({100.0 * step / max(total_steps, 1):.1f}%)"]
    for key in (k for k in _CONSOLE_KEYS if k in scalars):
        value = float(scalars[key])
        if key == "learning_rate":
            parts.append(f"lr {value:.3e}")
        elif key == "temporal_accuracy":
            parts.append(f"temporal_acc {value:.3f}")
        elif key == "mfu":
            parts.append(f"mfu {100.0 * value:.2f}%")
        elif key == "step_time":
            parts.append(f"{value:.3f}s/step")
        elif key == "tokens_per_sec":
            parts.append(f"tok/s {value:,.0f}")
        elif key == "examples_per_step":
            parts.append(f"ex/step {value:.1f}")
        elif key == "packing_efficiency":
            parts.append(f"packed {100.0 * value:.1f}%")
        elif key == "epoch":
            parts.append(f"epoch {value:.3f}")
        else:
            parts.append(f"{key} {value:.4g}")
    parts.append(f"eta {format_eta(eta_seconds)}")
    return " | ".join(parts)


class MetricsWriter:
    """TensorBoard scalars under `logdir` plus a console line; silent on processes other than 0."""

    def __init__(self, logdir: str, *, enabled: Optional[bool] = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._writer = None
        if self.enabled:
            from tensorboardX import SummaryWriter  # noqa: PLC0415 (only process 0 needs it)
            from momentor_jax import fileio  # noqa: PLC0415
            fileio.makedirs(logdir)  # local or gs://
            if fileio.is_remote(logdir):
                _events_through_fileio(logdir.split("://", 1)[0])
            self._writer = SummaryWriter(logdir=logdir, flush_secs=30)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self._writer:
            return
        for key, value in scalars.items():
            self._writer.add_scalar(f"train/{key}", float(value), global_step=step)

    def write_text(self, step: int, tag: str, text: str) -> None:
        if self._writer:
            self._writer.add_text(tag, text, global_step=step)

    def log_progress(self, step: int, total_steps: int, scalars: Mapping[str, float],
                     eta_seconds: Optional[float]) -> None:
        if self.enabled:
            print(format_progress(step, total_steps, scalars, eta_seconds), flush=True)

    def flush(self) -> None:
        if self._writer:
            self._writer.flush()

    def close(self) -> None:
        if self._writer:
            self._writer.close()
            self._writer = None


class _RemoteEventsFile:
    """An events file on gs:// (or any fileio scheme): each flush rewrites the whole object through fileio (events
    files of scalars stay small), so TensorBoard's gs:// writes get our retries and error messages."""

    def __init__(self, path: str):
        self.path, self.buffer = path, io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        from momentor_jax import fileio  # noqa: PLC0415
        fileio.write_bytes(self.path, self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _RemoteEventsFactory:
    def open(self, path: str) -> _RemoteEventsFile:
        return _RemoteEventsFile(path)

    def directory_check(self, path: str) -> None:
        pass  # object stores have no directories


def _events_through_fileio(scheme: str) -> None:
    """tensorboardX's own gs:// writer needs google-cloud-storage and its own client; ours uses fileio."""
    from tensorboardX import record_writer  # noqa: PLC0415
    record_writer.register_writer_factory(scheme, _RemoteEventsFactory())


# ----------------------------------------------------------------------------------------- model FLOPs for MFU
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
    (nothing upstream of it trains) runs forward only. Rematerialised recomputation is not counted.
    """
    llm, vit = model_config.llm, model_config.vision
    all_trainable = trainable == "all"
    L, d, hd = max_length, llm.hidden_size, llm.resolved_head_dim
    body = llm.num_layers * (d * hd * (2 * llm.num_heads + 2 * llm.num_kv_heads) + 3 * d * llm.intermediate_size)
    head_text = d * llm.vocab_size
    head_temporal = d * model_config.num_temporal_tokens if model_config.tpm_enabled else 0
    backward_weights = 1 if all_trainable else 0
    temporal_trains = trainable in ("all", "momentor")
    # Per token and matmul parameter: 2 forward + 2 input gradient + 2 weight gradient (trainable weights only).
    llm_flops = L * ((body + head_text) * (4 + 2 * backward_weights) + head_temporal * (4 + 2 * temporal_trains))
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
        vision = videos * model_config.num_frames * (matmul * (3 if all_trainable else 1)
                                                     + vit_attention * (3 if all_trainable else 1))
    return float(llm_flops + attention + projector + vision)
