"""Browserless PNG timelines: predicted vs ground-truth windows, one row pair per video or query."""
from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_timelines(rows: Sequence[dict], path: str, title: str = "") -> str:
    """Draw one timeline per row and save a PNG.

    Each row: {"label": str, "duration": float, "ground_truth": [[s, e], ...], "predicted": [[s, e], ...]}.
    Ground truth is drawn in green above the axis line, predictions in orange below it.
    """
    if not rows:
        raise ValueError("plot_timelines: no rows to draw")
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 0.9 * len(rows) + 0.8), squeeze=False)
    for ax, row in zip(axes[:, 0], rows):
        duration = float(row["duration"])
        for start, end in row.get("ground_truth", []):
            ax.broken_barh([(start, max(end - start, 1e-3))], (0.55, 0.35), color="tab:green", alpha=0.8)
        for start, end in row.get("predicted", []):
            ax.broken_barh([(start, max(end - start, 1e-3))], (0.1, 0.35), color="tab:orange", alpha=0.8)
        ax.set_xlim(0, duration)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.set_ylabel(str(row["label"])[:40], rotation=0, ha="right", va="center", fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    axes[-1, 0].set_xlabel("seconds (green: ground truth, orange: predicted)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
