"""Temporal grounding (Charades-STA / ActivityNet style): recall of the top-1 window at IoU thresholds and mean IoU.

Inputs are QVHighlights-style records. Ground truth: {"qid", "relevant_windows": [[s, e], ...]}; predictions:
{"qid", "pred_relevant_windows": [[s, e(, score)], ...]}, ranked best first, so the first window is the top-1 (as
moment_detr's R1 reads it). With several ground-truth windows the top-1 scores its best IoU among them. Every
ground-truth query counts: one without a prediction, or with no windows, has IoU 0.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

DEFAULT_THRESHOLDS = (0.3, 0.5, 0.7)

Window = Tuple[float, float]


def window_iou(a: Window, b: Window) -> float:
    """Intersection over union of two [start, end] windows; 0 when the union is empty."""
    intersection = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - intersection
    return intersection / union if union > 0 else 0.0


def parse_window(value: Any, where: str, with_score: bool = False) -> Tuple[float, ...]:
    """[start, end] (or [start, end, score] when `with_score`) as finite floats with start <= end, else ValueError."""
    lengths = (2, 3) if not with_score else (3,)
    if not isinstance(value, (list, tuple)) or len(value) not in lengths:
        expected = "[start, end, score]" if with_score else "[start, end] or [start, end, score]"
        raise ValueError(f"{where}: malformed window {value!r}: expected {expected}")
    numbers = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise ValueError(f"{where}: malformed window {value!r}: every entry must be a finite number")
        numbers.append(float(item))
    if numbers[1] < numbers[0]:
        raise ValueError(f"{where}: malformed window {value!r}: end is before start")
    return tuple(numbers)


def record_qid(record: Any, index: int, source: str) -> str:
    """The record's qid as a string (int and str qids match), else ValueError naming source and record."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{source}, record #{index + 1}: expected a JSON object, got {type(record).__name__}")
    if "qid" not in record:
        raise ValueError(f"{source}, record #{index + 1}: missing 'qid'")
    return str(record["qid"])


def prediction_qid(record: Any, index: int, pred_source: str, known: Mapping, seen, gt_source: str) -> tuple:
    """(qid, where) of prediction record #index+1: its qid must be one of `known` (the ground truth's) and not in
    `seen` (the qids already predicted); else ValueError naming the record."""
    qid = record_qid(record, index, pred_source)
    where = f"{pred_source}, record #{index + 1} (qid {qid})"
    if qid not in known:
        raise ValueError(f"{where}: unknown qid (not in {gt_source})")
    if qid in seen:
        raise ValueError(f"{where}: duplicate qid")
    return qid, where


def record_field(record: Mapping, field: str, where: str) -> Any:
    if field not in record:
        raise ValueError(f"{where}: missing '{field}'")
    return record[field]


def _windows(record: Mapping, field: str, where: str) -> List[Tuple[float, ...]]:
    windows = record_field(record, field, where)
    if not isinstance(windows, (list, tuple)):
        raise ValueError(f"{where}: '{field}' must be a list of windows, got {windows!r}")
    return [parse_window(w, f"{where}, '{field}'[{i}]") for i, w in enumerate(windows)]


def top1_ious(predictions: Sequence[Mapping], ground_truth: Sequence[Mapping], pred_source: str = "predictions",
              gt_source: str = "ground truth") -> Dict[str, float]:
    """{qid: IoU of the query's top-1 predicted window with its best-matching ground-truth window} for every GT qid."""
    gt_windows: Dict[str, List[Window]] = {}
    for index, record in enumerate(ground_truth):
        qid = record_qid(record, index, gt_source)
        where = f"{gt_source}, record #{index + 1} (qid {qid})"
        if qid in gt_windows:
            raise ValueError(f"{where}: duplicate qid")
        windows = _windows(record, "relevant_windows", where)
        if not windows:
            raise ValueError(f"{where}: 'relevant_windows' is empty")
        gt_windows[qid] = [w[:2] for w in windows]
    top1: Dict[str, Optional[Window]] = {}
    for index, record in enumerate(predictions):
        qid, where = prediction_qid(record, index, pred_source, gt_windows, top1, gt_source)
        windows = _windows(record, "pred_relevant_windows", where)
        top1[qid] = windows[0][:2] if windows else None
    return {qid: (max(window_iou(top1[qid], g) for g in gts) if top1.get(qid) is not None else 0.0)
            for qid, gts in gt_windows.items()}


def evaluate_grounding(predictions: Sequence[Mapping], ground_truth: Sequence[Mapping],
                       thresholds: Sequence[float] = DEFAULT_THRESHOLDS, pred_source: str = "predictions",
                       gt_source: str = "ground truth") -> Dict[str, float]:
    """{"R1@0.3", "R1@0.5", "R1@0.7", "mIoU"} in percent over all ground-truth queries (R1 counts IoU >= t)."""
    ious = list(top1_ious(predictions, ground_truth, pred_source, gt_source).values())
    if not ious:
        raise ValueError(f"{gt_source}: no queries")
    metrics = {f"R1@{t:g}": 100.0 * sum(iou >= t for iou in ious) / len(ious) for t in thresholds}
    metrics["mIoU"] = 100.0 * sum(ious) / len(ious)
    return metrics
