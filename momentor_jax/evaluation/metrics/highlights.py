"""QVHighlights moment retrieval (MR) and highlight detection (HL) as moment_detr's standalone_eval computes them.

Reference: jayleicn/moment_detr @ b7e553ac3b0c, standalone_eval/eval.py and utils.py. `evaluate_highlights` returns
the keys and values of its "brief" block: percent, rounded to 2 decimals where it rounds. Its conventions, kept:
- MR-mAP: the first 10 predicted windows (list order), ranked by score, matched greedily to ground-truth windows at
  tIoU 0.5:0.05:0.95 (VOC-interpolated AP per query, then the mean over queries); short/middle/long keep the queries
  with ground-truth windows of length in (0, 10], (10, 30], (30, 150] and only those windows.
- MR-R1: the first predicted window against the ground-truth window it overlaps most, counted when IoU >= t.
- HL: 2-second clips; a clip is positive for a worker when its saliency >= 2 (Fair), 3 (Good) or 4 (VeryGood).
  Hit@1 takes the top-scored clip and the max over workers; mAP is the ranking AP (sklearn's curve, interpolated)
  per query and worker, predictions cut or zero-padded to the number of clips.
Where the reference fails, the behaviour here is ours: a query with no predicted windows scores AP 0 and an R1 miss
(never dropped), and a length range that holds no query reports null.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from momentor_jax.evaluation.metrics.grounding import parse_window, prediction_qid, record_field, record_qid

MR_IOU_THRESHOLDS = [float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10)]
R1_IOU_THRESHOLDS = MR_IOU_THRESHOLDS
LENGTH_RANGES = {"short": (0, 10), "middle": (10, 30), "long": (30, 150), "full": None}  # None: keep every window
MAX_PRED_WINDOWS = 10
CLIP_SECONDS = 2
SALIENCY_LEVELS = {"Fair": 2, "Good": 3, "VeryGood": 4}


def _round2(value: float) -> float:
    return float(f"{value:.2f}")


# ---------------------------------------------------------------- moment retrieval

def _cross_iou(spans1: np.ndarray, spans2: np.ndarray) -> np.ndarray:
    """(N, M) IoU with the true union (the reference's compute_temporal_iou_batch_cross)."""
    left = np.maximum(spans1[:, None, 0], spans2[None, :, 0])
    right = np.minimum(spans1[:, None, 1], spans2[None, :, 1])
    inter = np.clip(right - left, 0, None)
    union = (spans1[:, 1] - spans1[:, 0])[:, None] + (spans2[:, 1] - spans2[:, 0])[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def _hull_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Paired IoU with the hull as union (the reference's compute_temporal_iou_batch_paired; equal when overlapping)."""
    inter = np.maximum(0, np.minimum(pred[:, 1], gt[:, 1]) - np.maximum(pred[:, 0], gt[:, 0]))
    union = np.maximum(pred[:, 1], gt[:, 1]) - np.minimum(pred[:, 0], gt[:, 0])
    return np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)


def _voc_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision envelope (VOC 2011 interpolation)."""
    envelope = np.maximum.accumulate(np.hstack([[0], precision, [0]])[::-1])[::-1]
    recall = np.hstack([[0], recall, [1]])
    steps = np.where(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * envelope[steps]))


def _detection_ap(gt_windows: np.ndarray, pred_windows: List[Sequence[float]],
                  thresholds: Sequence[float]) -> np.ndarray:
    """AP per tIoU threshold of scored windows of one query: each ground-truth window is matched at most once."""
    ap = np.zeros(len(thresholds))
    if not pred_windows:
        return ap
    ranked = sorted(pred_windows, key=lambda w: -w[2])
    tp = np.zeros((len(thresholds), len(ranked)))
    fp = np.zeros((len(thresholds), len(ranked)))
    matched_by = np.full((len(thresholds), len(gt_windows)), -1)
    for p, window in enumerate(ranked):
        ious = _cross_iou(np.array([window[:2]]), gt_windows)[0]
        best_first = ious.argsort()[::-1]
        for t, threshold in enumerate(thresholds):
            for g in best_first:
                if ious[g] < threshold:
                    fp[t, p] = 1
                    break
                if matched_by[t, g] >= 0:
                    continue
                tp[t, p] = 1
                matched_by[t, g] = p
                break
            if fp[t, p] == 0 and tp[t, p] == 0:
                fp[t, p] = 1
    tp_cumsum = np.cumsum(tp, axis=1).astype(float)
    fp_cumsum = np.cumsum(fp, axis=1).astype(float)
    recall = tp_cumsum / float(len(gt_windows))
    precision = tp_cumsum / (tp_cumsum + fp_cumsum)
    for t in range(len(thresholds)):
        ap[t] = _voc_ap(precision[t], recall[t])
    return ap


def _in_range(queries: List[dict], length_range) -> List[dict]:
    """Queries with ground-truth windows in (min, max] seconds, keeping only those windows."""
    if length_range is None:
        return queries
    low, high = length_range
    kept = []
    for query in queries:
        windows = [w for w in query["gt_windows"] if low < w[1] - w[0] <= high]
        if windows:
            kept.append(dict(query, gt_windows=windows))
    return kept


def _moment_retrieval(queries: List[dict]) -> Optional[dict]:
    """{"MR-mAP": {thr: ap, "average": ap}, "MR-R1": {thr: recall}} for one length range; None when empty."""
    if not queries:
        return None
    ap_per_query = np.array([_detection_ap(np.array(q["gt_windows"], dtype=float), q["pred_windows"][:MAX_PRED_WINDOWS],
                                           MR_IOU_THRESHOLDS) for q in queries])
    ap_thresholds = ap_per_query.mean(0)
    mean_ap = {str(t): _round2(100 * ap) for t, ap in zip(MR_IOU_THRESHOLDS, ap_thresholds)}
    mean_ap["average"] = _round2(100 * np.mean(ap_thresholds))

    top1_iou = np.zeros(len(queries))
    for i, query in enumerate(queries):
        if not query["pred_windows"]:
            continue  # no prediction: IoU 0
        top1 = np.array([query["pred_windows"][0][:2]], dtype=float)
        gt_windows = np.array(query["gt_windows"], dtype=float)
        best_gt = gt_windows[np.argmax(_cross_iou(top1, gt_windows)[0])]
        top1_iou[i] = _hull_iou(top1, best_gt[None])[0]
    recall_at_1 = {str(t): _round2(np.mean(top1_iou >= t) * 100) for t in R1_IOU_THRESHOLDS}
    return {"MR-mAP": mean_ap, "MR-R1": recall_at_1}


# ---------------------------------------------------------------- highlight detection

def ranking_ap(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """The reference's get_ap: interpolated precision averaged over recall steps of sklearn's PR curve.

    All-negative labels give 0 and all-positive 1. Ties in score form one threshold, as in sklearn.
    """
    y_true = np.asarray(y_true, dtype=float)
    if len(set(y_true)) == 1:
        return 0.0 if y_true[0] == 0 else 1.0
    order = np.argsort(np.asarray(y_score, dtype=float), kind="mergesort")[::-1]
    scores = np.asarray(y_score, dtype=float)[order]
    positives = y_true[order] == 1.0
    thresholds = np.r_[np.where(np.diff(scores))[0], y_true.size - 1]
    tps = np.cumsum(positives * 1.0, dtype=np.float64)[thresholds]
    fps = 1 + thresholds - tps
    precision = np.hstack([(tps / (tps + fps))[::-1], 1.0])
    recall = np.hstack([(tps / tps[-1])[::-1], 0.0]).astype(np.float32)
    precision = np.maximum.accumulate(precision)
    return float(np.mean(precision[np.where(np.diff(recall))]))


def _clip_saliency(query: dict) -> np.ndarray:
    """(#clips, #workers) saliency of the whole video: listed clips get their scores, the rest 0."""
    full = np.zeros((query["num_clips"], query["saliency"].shape[1]))
    full[query["clip_ids"]] = query["saliency"]
    return full


def _highlight(queries: List[dict]) -> Dict[str, dict]:
    saliency = [_clip_saliency(q) for q in queries]
    metrics = {}
    for name, minimum in SALIENCY_LEVELS.items():
        positive = [(s >= minimum).astype(float) for s in saliency]
        hits, aps = [], []
        for query, labels in zip(queries, positive):
            predicted = np.asarray(query["pred_saliency"], dtype=float)
            top_clip = int(np.argmax(query["pred_saliency"]))
            hits.append(labels[top_clip].max() if top_clip < len(labels) else 0.0)
            scores = np.zeros(len(labels))  # cut or zero-padded to the number of clips
            kept = min(len(labels), len(predicted))
            scores[:kept] = predicted[:kept]
            aps.append([ranking_ap(labels[:, w], scores) for w in range(labels.shape[1])])
        metrics[f"HL-min-{name}"] = {"HL-mAP": _round2(100 * np.mean(np.mean(aps, axis=1))),
                                     "HL-Hit1": _round2(100 * np.mean(hits))}
    return metrics


# ---------------------------------------------------------------- inputs

def _finite_numbers(value: Any, where: str, field: str) -> List[float]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where}: '{field}' must be a non-empty list of numbers")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise ValueError(f"{where}: '{field}' holds {item!r}, not a finite number")
    return [float(v) for v in value]


def _gt_queries(ground_truth: Sequence[Mapping], source: str, need_mr: bool, need_hl: bool) -> Dict[str, dict]:
    queries = {}
    workers = None  # annotators per clip (3 in QVHighlights)
    for index, record in enumerate(ground_truth):
        qid = record_qid(record, index, source)
        where = f"{source}, record #{index + 1} (qid {qid})"
        if qid in queries:
            raise ValueError(f"{where}: duplicate qid")
        query = {}
        if need_mr:
            windows = record_field(record, "relevant_windows", where)
            if not isinstance(windows, (list, tuple)) or not windows:
                raise ValueError(f"{where}: 'relevant_windows' must be a non-empty list of [start, end]")
            query["gt_windows"] = [list(parse_window(w, f"{where}, 'relevant_windows'[{i}]")[:2])
                                   for i, w in enumerate(windows)]
            if any(w[1] <= w[0] for w in query["gt_windows"]):
                raise ValueError(f"{where}: 'relevant_windows' holds an empty window")
        if need_hl:
            duration = record_field(record, "duration", where)
            if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not duration >= CLIP_SECONDS:
                raise ValueError(f"{where}: 'duration' must be a number >= {CLIP_SECONDS}, got {duration!r}")
            num_clips = int(duration / CLIP_SECONDS)
            clip_ids = record_field(record, "relevant_clip_ids", where)
            saliency = record_field(record, "saliency_scores", where)
            if (not isinstance(clip_ids, list) or not isinstance(saliency, list) or len(clip_ids) != len(saliency)
                    or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < num_clips for c in clip_ids)):
                raise ValueError(f"{where}: 'relevant_clip_ids' must be clip indices in [0, {num_clips}) and "
                                 f"'saliency_scores' one row per clip")
            for row in saliency:
                if not isinstance(row, list) or not row or (workers is not None and len(row) != workers):
                    raise ValueError(f"{where}: 'saliency_scores' rows must be lists with one score per worker, "
                                     f"the same number of workers for every clip and query")
                workers = len(row)
                _finite_numbers(row, where, "saliency_scores")
            query.update(num_clips=num_clips, clip_ids=np.array(clip_ids, dtype=int), saliency=saliency)
        queries[qid] = query
    for query in queries.values():  # a query without relevant clips still has a column per worker
        if need_hl:
            query["saliency"] = np.array(query["saliency"], dtype=float).reshape(-1, workers or 3)
    return queries


def evaluate_highlights(submission: Sequence[Mapping], ground_truth: Sequence[Mapping],
                        pred_source: str = "predictions",
                        gt_source: str = "ground truth") -> Dict[str, Optional[float]]:
    """The brief block of moment_detr's eval_submission: MR keys if the first prediction has
    'pred_relevant_windows', HL keys if it has 'pred_saliency_scores'. The qid sets must be equal."""
    if not submission:
        raise ValueError(f"{pred_source}: no predictions")
    first = submission[0] if isinstance(submission[0], Mapping) else {}
    need_mr, need_hl = "pred_relevant_windows" in first, "pred_saliency_scores" in first
    if not need_mr and not need_hl:
        raise ValueError(f"{pred_source}, record #1: neither 'pred_relevant_windows' nor 'pred_saliency_scores'")
    gt = _gt_queries(ground_truth, gt_source, need_mr, need_hl)
    queries, seen = [], set()
    for index, record in enumerate(submission):
        qid, where = prediction_qid(record, index, pred_source, gt, seen, gt_source)
        seen.add(qid)
        query = dict(gt[qid], qid=qid)
        if need_mr:
            windows = record_field(record, "pred_relevant_windows", where)
            if not isinstance(windows, (list, tuple)):
                raise ValueError(f"{where}: 'pred_relevant_windows' must be a list of [start, end, score]")
            query["pred_windows"] = [parse_window(w, f"{where}, 'pred_relevant_windows'[{i}]", with_score=True)
                                     for i, w in enumerate(windows)]
        if need_hl:
            query["pred_saliency"] = _finite_numbers(record_field(record, "pred_saliency_scores", where), where,
                                                     "pred_saliency_scores")
        queries.append(query)
    missing = [qid for qid in gt if qid not in seen]
    if missing:
        raise ValueError(f"{pred_source}: no prediction for {len(missing)} qid(s) of {gt_source}, e.g. {missing[:5]}")

    brief: Dict[str, Optional[float]] = {}
    if need_mr:
        by_range = {name: _moment_retrieval(_in_range(queries, span)) for name, span in LENGTH_RANGES.items()}

        def pick(name, kind, key):
            return None if by_range[name] is None else by_range[name][kind][key]

        mr = {"MR-full-mAP": pick("full", "MR-mAP", "average"), "MR-full-mAP@0.5": pick("full", "MR-mAP", "0.5"),
              "MR-full-mAP@0.75": pick("full", "MR-mAP", "0.75"), "MR-short-mAP": pick("short", "MR-mAP", "average"),
              "MR-middle-mAP": pick("middle", "MR-mAP", "average"), "MR-long-mAP": pick("long", "MR-mAP", "average"),
              "MR-full-R1@0.5": pick("full", "MR-R1", "0.5"), "MR-full-R1@0.7": pick("full", "MR-R1", "0.7")}
        brief.update(sorted(mr.items()))
    if need_hl:
        for level, values in _highlight(queries).items():
            brief[f"{level}-mAP"] = values["HL-mAP"]
            brief[f"{level}-Hit1"] = values["HL-Hit1"]
    return brief
