"""Training metrics to TensorBoard (tensorboardX) and a console progress line; only process 0 writes."""
from __future__ import annotations

import datetime
import io
from typing import Mapping, Optional

import jax

# What the console line shows, in order (TensorBoard gets every scalar).
_CONSOLE_KEYS = ("loss", "text_loss", "temporal_loss", "temporal_accuracy", "learning_rate", "grad_norm",
                 "tokens_per_sec", "step_time", "mfu", "examples_per_step", "packing_efficiency", "epoch")
# How a key reads there when not as "key 1.234".
_CONSOLE_FORMATS = {
    "learning_rate": lambda v: f"lr {v:.3e}",
    "temporal_accuracy": lambda v: f"temporal_acc {v:.3f}",
    "mfu": lambda v: f"mfu {100.0 * v:.2f}%",
    "step_time": lambda v: f"{v:.3f}s/step",
    "tokens_per_sec": lambda v: f"tok/s {v:,.0f}",
    "examples_per_step": lambda v: f"ex/step {v:.1f}",
    "packing_efficiency": lambda v: f"packed {100.0 * v:.1f}%",
    "epoch": lambda v: f"epoch {v:.3f}",
}
# Shown on the console only for packed rows: without packing they restate the batch size and the padding.
_PACKING_KEYS = ("examples_per_step", "packing_efficiency")


def format_eta(seconds: float) -> str:
    if not seconds or seconds != seconds or seconds < 0:  # also NaN
        return "?"
    return str(datetime.timedelta(seconds=int(round(seconds))))


def format_progress(step: int, total_steps: int, scalars: Mapping[str, float], eta_seconds: Optional[float],
                    packing: bool = False) -> str:
    """'step 120/1000 (12.0%) | loss 2.3456 | ... | eta 0:10:05'; examples per step and packing efficiency only when
    rows are `packing`."""
    parts = [f"step {step}/{total_steps} ({100.0 * step / max(total_steps, 1):.1f}%)"]
    for key in (k for k in _CONSOLE_KEYS if k in scalars and (packing or k not in _PACKING_KEYS)):
        value = float(scalars[key])
        parts.append(_CONSOLE_FORMATS[key](value) if key in _CONSOLE_FORMATS else f"{key} {value:.4g}")
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

    def write_scalars(self, step: int, scalars: Mapping[str, float], prefix: str = "train") -> None:
        if not self._writer:
            return
        for key, value in scalars.items():
            self._writer.add_scalar(f"{prefix}/{key}", float(value), global_step=step)

    def print(self, line: str) -> None:
        """One console line (process 0 only)."""
        if self.enabled:
            print(line, flush=True)

    def write_text(self, step: int, tag: str, text: str) -> None:
        if self._writer:
            self._writer.add_text(tag, text, global_step=step)

    def log_progress(self, step: int, total_steps: int, scalars: Mapping[str, float],
                     eta_seconds: Optional[float], packing: bool = False) -> None:
        if self.enabled:
            print(format_progress(step, total_steps, scalars, eta_seconds, packing), flush=True)

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
