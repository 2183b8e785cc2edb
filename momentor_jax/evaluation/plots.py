"""Browserless PNG timelines: predicted vs ground-truth windows, one row per query (or video).

Each row: {"label": str, "duration": float, "ground_truth": [[s, e], ...], "predicted": [[s, e], ...],
"status": None | "unparsable" | "missing video"}. The label (the query text, or the video id for whole-video tasks) is
written above its row; ground truth is drawn in green in the upper lane, predictions in orange in the lower one. A row
whose answer states no window, or whose video could not be read, says so in red in its prediction lane, so a miss
never looks like an empty prediction by accident. With `total`, the title says how many of the queries are drawn.
"""
from __future__ import annotations

import io
import textwrap
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from momentor_jax import fileio  # noqa: E402

STATUS_TEXT = {"unparsable": "answer states no time window (unparsable)",
               "missing video": "video missing or unreadable: no answer"}
LABEL_CHARS = 110


def plot_timelines(rows: Sequence[dict], path: str, title: str = "", total: Optional[int] = None) -> str:
    """Draws the rows and writes the PNG to `path` (local or gs://); returns `path`."""
    if not rows:
        raise ValueError("plot_timelines: no rows to draw")
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 1.05 * len(rows) + 0.9), squeeze=False)
    for ax, row in zip(axes[:, 0], rows):
        duration = float(row["duration"])
        for start, end in row.get("ground_truth", []):
            ax.broken_barh([(start, max(end - start, 1e-3))], (0.55, 0.35), color="tab:green", alpha=0.8)
        for start, end in row.get("predicted", []):
            ax.broken_barh([(start, max(end - start, 1e-3))], (0.1, 0.35), color="tab:orange", alpha=0.8)
        status = row.get("status")
        if status:
            ax.text(duration / 2, 0.27, STATUS_TEXT.get(status, status), color="tab:red", ha="center", va="center",
                    fontsize=7)
        ax.set_xlim(0, duration)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.set_title(textwrap.shorten(str(row["label"]), LABEL_CHARS, placeholder=" ..."), fontsize=7, loc="left",
                     pad=2)
        ax.tick_params(axis="x", labelsize=7)
    axes[-1, 0].set_xlabel("seconds (green: ground truth, orange: predicted)")
    shown = f"{len(rows)} of {total} queries shown" if total is not None else ""
    heading = "\n".join(part for part in (title, shown) if part)
    if heading:
        fig.suptitle(heading, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    fileio.write_bytes(path, buffer.getvalue())
    return path
