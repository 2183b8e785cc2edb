"""Action segmentation (Breakfast, 50Salads): frame accuracy, segmental edit and F1@{10,25,50} as ms-tcn's eval.py.

Reference: yabufarha/ms-tcn @ 33ed91c0c757, eval.py. Its conventions, kept:
- Acc: correct frames over all ground-truth frames (background frames included), over the whole set.
- Segments are runs of equal labels; runs of a background label are not segments (default ["background"]).
- Edit: 100 * (1 - Levenshtein(predicted segment labels, true segment labels) / max(lengths)), averaged over videos.
- F1@k: each predicted segment takes the same-label true segment of best IoU (union = hull of the two); it is a
  true positive if IoU >= k/100 and that true segment is not yet hit, else a false positive. tp/fp/fn are summed
  over videos, then F1 (0 when undefined).
Where the reference fails, the behaviour here is ours: a video with no segment in both sequences has Edit 100, and
predicted segments in a video whose ground truth has none are all false positives.
Labels compare as strings, so 3 and "3" are one label; null, booleans and non-finite numbers (NaN) are refused.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

DEFAULT_BACKGROUND = ("background",)
DEFAULT_OVERLAPS = (0.1, 0.25, 0.5)


def segments(frame_labels: Sequence[str], background: Sequence[str] = DEFAULT_BACKGROUND
             ) -> Tuple[List[str], List[int], List[int]]:
    """(labels, starts, ends) of the non-background runs of equal labels; ends are exclusive frame indices."""
    labels, starts, ends = [], [], []
    previous = None
    for i, label in enumerate(frame_labels):
        if label != previous:
            if previous is not None and previous not in background:
                ends.append(i)
            if label not in background:
                labels.append(label)
                starts.append(i)
            previous = label
    if previous is not None and previous not in background:
        ends.append(len(frame_labels))
    return labels, starts, ends


def edit_score(predicted: Sequence[str], truth: Sequence[str], background: Sequence[str] = DEFAULT_BACKGROUND
               ) -> float:
    """100 * (1 - normalised Levenshtein distance) between the segment label sequences."""
    p, _, _ = segments(predicted, background)
    y, _, _ = segments(truth, background)
    if not p and not y:
        return 100.0
    distance = np.zeros((len(p) + 1, len(y) + 1))
    distance[:, 0] = np.arange(len(p) + 1)
    distance[0, :] = np.arange(len(y) + 1)
    for j in range(1, len(y) + 1):
        for i in range(1, len(p) + 1):
            if y[j - 1] == p[i - 1]:
                distance[i, j] = distance[i - 1, j - 1]
            else:
                distance[i, j] = min(distance[i - 1, j], distance[i, j - 1], distance[i - 1, j - 1]) + 1
    return (1 - distance[-1, -1] / max(len(p), len(y))) * 100


def segment_counts(predicted: Sequence[str], truth: Sequence[str], overlap: float,
                   background: Sequence[str] = DEFAULT_BACKGROUND) -> Tuple[float, float, float]:
    """(tp, fp, fn) of predicted against true segments at one IoU threshold."""
    p_label, p_start, p_end = segments(predicted, background)
    y_label, y_start, y_end = segments(truth, background)
    if not y_label:
        return 0.0, float(len(p_label)), 0.0
    y_start, y_end = np.array(y_start), np.array(y_end)
    tp = fp = 0
    hits = np.zeros(len(y_label))
    for j in range(len(p_label)):
        intersection = np.minimum(p_end[j], y_end) - np.maximum(p_start[j], y_start)
        union = np.maximum(p_end[j], y_end) - np.minimum(p_start[j], y_start)
        iou = (1.0 * intersection / union) * np.array([p_label[j] == label for label in y_label])
        best = iou.argmax()
        if iou[best] >= overlap and not hits[best]:
            tp += 1
            hits[best] = 1
        else:
            fp += 1
    return float(tp), float(fp), float(len(y_label) - hits.sum())


def _frame_labels(value, where: str) -> List[str]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where}: expected a non-empty list of frame labels")
    for i, label in enumerate(value):
        if isinstance(label, (list, dict, bool)) or label is None:
            raise ValueError(f"{where}, frame {i}: label {label!r} is not a string or number")
        if isinstance(label, float) and not math.isfinite(label):
            raise ValueError(f"{where}, frame {i}: label {label!r} is not a finite number")
    return [str(label) for label in value]


def evaluate_segmentation(predictions: Mapping[str, Sequence], ground_truth: Mapping[str, Sequence],
                          background: Sequence[str] = DEFAULT_BACKGROUND,
                          overlaps: Sequence[float] = DEFAULT_OVERLAPS, pred_source: str = "predictions",
                          gt_source: str = "ground truth") -> Dict[str, float]:
    """{"Acc", "Edit", "F1@10", "F1@25", "F1@50"} in percent over the ground-truth videos ({video_id: [labels]})."""
    for source, data in ((pred_source, predictions), (gt_source, ground_truth)):
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a JSON object {{video_id: [frame labels]}}")
    if not ground_truth:
        raise ValueError(f"{gt_source}: no videos")
    unknown = [vid for vid in predictions if vid not in ground_truth]
    if unknown:
        raise ValueError(f"{pred_source}, video {unknown[0]!r}: unknown video (not in {gt_source})")
    background = [str(label) for label in background]
    correct = total = 0
    edit = 0.0
    counts = np.zeros((len(overlaps), 3))
    for vid, truth in ground_truth.items():
        truth = _frame_labels(truth, f"{gt_source}, video {vid!r}")
        if vid not in predictions:
            raise ValueError(f"{pred_source}: no prediction for video {vid!r} of {gt_source}")
        predicted = _frame_labels(predictions[vid], f"{pred_source}, video {vid!r}")
        if len(predicted) != len(truth):
            raise ValueError(f"{pred_source}, video {vid!r}: {len(predicted)} frame labels, "
                             f"{gt_source} has {len(truth)}")
        total += len(truth)
        correct += sum(p == y for p, y in zip(predicted, truth))
        edit += edit_score(predicted, truth, background)
        for k, overlap in enumerate(overlaps):
            counts[k] += segment_counts(predicted, truth, overlap, background)
    metrics = {"Acc": 100 * float(correct) / total, "Edit": float((1.0 * edit) / len(ground_truth))}
    for overlap, (tp, fp, fn) in zip(overlaps, counts):
        if tp == 0:
            f1 = 0.0  # the reference's nan_to_num of 0/0
        else:
            precision, recall = tp / float(tp + fp), tp / float(tp + fn)
            f1 = 2.0 * (precision * recall) / (precision + recall) * 100
        metrics[f"F1@{round(overlap * 100)}"] = float(f1)
    return metrics
