"""SODA_c (story-oriented dense captioning F-measure) as fujiso/SODA's soda.py computes it.

Reference: fujiso/SODA @ 9cb3e2c5a73c, soda.py, dataset.py, utils.py (soda_type "c", METEOR). Its conventions, kept:
- Only videos in both the ground truth and the predictions are scored (a video without predictions is dropped).
- Predicted and true events are each sorted by start time; with several ground-truth files their events are merged
  into one reference per video (the command line's default) or, with `multi_reference`, each file is a reference
  and the one with the best F1 is kept per video.
- The score of a (true event, predicted event) pair is tIoU x METEOR, where METEOR is run with the true sentence as
  the hypothesis and the predicted one as the reference (the reference passes its arguments in that order).
- A dynamic programme finds the order-preserving one-to-one assignment of maximal total score S; precision is
  S / #predicted, recall S / #true, F1 their harmonic mean (0 when both are 0); all three averaged over videos.
A video present in the predictions with an empty list (the reference fails there) scores 0.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from momentor_jax.evaluation.metrics.caption_scorers import CaptionScorers


def soda_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """The reference's tIoU: union is the smaller of hull and summed lengths; 1e-8 added to it."""
    intersection = max(0., min(a[1], b[1]) - max(a[0], b[0]))
    union = min(max(a[1], b[1]) - min(a[0], b[0]), a[1] - a[0] + b[1] - b[0])
    return intersection / (union + 1e-8)


def best_ordered_assignment(scores: np.ndarray) -> float:
    """Max total score of an order-preserving one-to-one matching of rows to columns (the reference's DP)."""
    rows, cols = scores.shape
    best = np.zeros((rows, cols))
    for i in range(rows):
        for j in range(cols):
            if i == 0 and j == 0:
                options = [-1, -1, scores[i, j]]
            elif i == 0:
                options = [-1, best[i, j - 1], scores[i, j]]
            elif j == 0:
                options = [best[i - 1, j], -1, scores[i, j]]
            else:
                options = [best[i - 1, j], best[i, j - 1], best[i - 1, j - 1] + scores[i, j]]
            best[i, j] = np.max(options)
    return float(best[-1, -1])


def _sorted_events(events: Sequence[Mapping]) -> Dict[str, list]:
    ordered = sorted(events, key=lambda e: e["timestamp"][0])
    return {"timestamps": [e["timestamp"] for e in ordered], "sentences": [e["sentence"] for e in ordered]}


def _references(ground_truths: Sequence[Mapping], multi_reference: bool) -> List[Dict[str, dict]]:
    """One {vid: {timestamps, sentences}} per reference: every file, or all files merged and sorted by start."""
    if multi_reference:
        return [{vid: {"timestamps": list(v["timestamps"]), "sentences": list(v["sentences"])} for vid, v in gt.items()}
                for gt in ground_truths]
    merged = {}
    for vid in dict.fromkeys(vid for gt in ground_truths for vid in gt):
        pairs = [(t, s) for gt in ground_truths if vid in gt for t, s in zip(gt[vid]["timestamps"],
                                                                             gt[vid]["sentences"])]
        pairs.sort(key=lambda pair: pair[0][0])
        merged[vid] = {"timestamps": [t for t, _ in pairs], "sentences": [s for _, s in pairs]}
    return [merged]


def _video_prf(predicted: dict, reference: dict, scorers: CaptionScorers) -> tuple:
    true_sentences = scorers.tokenize(reference["sentences"])
    predicted_sentences = scorers.tokenize(predicted["sentences"])
    iou = np.array([[soda_iou(p, t) for p in predicted["timestamps"]] for t in reference["timestamps"]])
    _, per_pair = scorers.meteor([(t, [p]) for t in true_sentences for p in predicted_sentences])
    meteor = np.array(per_pair).reshape(len(true_sentences), len(predicted_sentences))
    iou[iou < 0.0] = 0.0
    total = best_ordered_assignment(iou * meteor)
    n_true, n_pred = iou.shape
    precision, recall = total / n_pred, total / n_true
    return precision, recall, (2 * precision * recall / (precision + recall) if precision + recall > 0 else 0)


def soda_c(predictions: Mapping[str, Sequence[Mapping]], ground_truths: Sequence[Mapping[str, Mapping]],
           multi_reference: bool = False, scorers: Optional[CaptionScorers] = None) -> Dict[str, Optional[float]]:
    """{"precision", "recall", "f1", "videos"}: SODA_c in percent over videos with both truth and predictions
    (None when there is no such video).

    predictions: {vid: [{"sentence", "timestamp": [s, e]}]}; ground_truths: one or more {vid: {"timestamps",
    "sentences"}} (validated by the caller). Needs Java (PTB tokenizer and METEOR).
    """
    own_scorers = scorers is None
    scorers = scorers or CaptionScorers()
    try:
        references = _references(ground_truths, multi_reference)
        videos = [vid for vid in dict.fromkeys(v for ref in references for v in ref) if vid in predictions]
        precisions, recalls, f1s = [], [], []
        for vid in videos:
            if not predictions[vid]:
                precisions.append(0.0), recalls.append(0.0), f1s.append(0.0)
                continue
            predicted = _sorted_events(predictions[vid])
            scored = [_video_prf(predicted, ref[vid], scorers) for ref in references if vid in ref]
            best = int(np.argmax([f for _, _, f in scored]))
            precisions.append(scored[best][0]), recalls.append(scored[best][1]), f1s.append(scored[best][2])
    finally:
        if own_scorers:
            scorers.close()
    if not videos:
        return {"precision": None, "recall": None, "f1": None, "videos": 0}
    return {"precision": 100 * float(np.mean(precisions)), "recall": 100 * float(np.mean(recalls)),
            "f1": 100 * float(np.mean(f1s)), "videos": len(videos)}
