"""ActivityNet Captions dense captioning: localisation precision/recall, METEOR and CIDEr as densevid_eval computes
them, plus SODA_c.

Reference: ranjaykrishna/densevid_eval @ 9d4045aced3d, evaluate.py (python 2; ported here). Its conventions, kept:
- tIoU: intersection over min(hull, summed lengths) + 1e-8. At most `max_proposals` predictions per video are used.
- Localisation at tIoU t, per ground-truth video and ground-truth file: recall = share of true events overlapped by
  some prediction with tIoU > t, precision = share of predictions overlapping some true event; each video keeps its
  best precision and, separately, its best recall over the files; averaged over all ground-truth videos (no
  predictions: 0). F1 (not in the reference) is the harmonic mean of the averaged precision and recall.
- Captions at tIoU t: each prediction is paired with every true sentence (of any file) whose event has tIoU >= t,
  or with a random string when there is none. Per video, METEOR is the corpus METEOR of its pairs and CIDEr the
  mean CIDEr-D over them with document frequencies from that video; a video without pairs scores 0; averaged over
  all ground-truth videos. Sentences are stripped of non-ASCII characters and PTB-tokenized first.
- The headline numbers average the per-tIoU numbers; all values are in percent.
- One deviation, in tokenization only: see `caption_scorers.ptb_tokenize` (each sentence tokenized as if alone).
Only the submission's "results" are read. Without a Java runtime METEOR, CIDEr and SODA_c are null and "note"
says why.
"""
from __future__ import annotations

import math
import random
import string
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
from tqdm import tqdm

from momentor_jax.evaluation.metrics import soda
from momentor_jax.evaluation.metrics.caption_scorers import JAVA_SKIPPED_NOTE, CaptionScorers, java_available

DEFAULT_TIOUS = (0.3, 0.5, 0.7, 0.9)
MAX_PROPOSALS = 1000


def densevid_iou(a: Sequence[float], b: Sequence[float]) -> float:
    intersection = max(0, min(b[1], a[1]) - max(b[0], a[0]))
    union = min(max(b[1], a[1]) - min(b[0], a[0]), b[1] - b[0] + a[1] - a[0])
    return float(intersection) / (union + 1e-8)


# ---------------------------------------------------------------- inputs

def _timestamp(value: Any, where: str, allow_reversed: bool) -> List[float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value)):
        raise ValueError(f"{where}: malformed timestamp {value!r}: expected [start, end] seconds")
    if not allow_reversed and value[1] < value[0]:
        raise ValueError(f"{where}: malformed timestamp {value!r}: end is before start")
    return [float(value[0]), float(value[1])]


def check_ground_truth(ground_truth: Any, source: str) -> Dict[str, dict]:
    """{vid: {"timestamps", "sentences"}} from one ActivityNet Captions file, else ValueError naming the video."""
    if not isinstance(ground_truth, Mapping) or not ground_truth:
        raise ValueError(f"{source}: expected a non-empty JSON object {{video_id: {{timestamps, sentences}}}}")
    checked = {}
    for vid, entry in ground_truth.items():
        where = f"{source}, video {vid!r}"
        if not isinstance(entry, Mapping) or "timestamps" not in entry or "sentences" not in entry:
            raise ValueError(f"{where}: expected an object with 'timestamps' and 'sentences'")
        timestamps, sentences = entry["timestamps"], entry["sentences"]
        if not isinstance(timestamps, list) or not isinstance(sentences, list) or len(timestamps) != len(sentences):
            raise ValueError(f"{where}: 'timestamps' and 'sentences' must be lists of equal length")
        if not timestamps:
            raise ValueError(f"{where}: no events")
        if not all(isinstance(s, str) for s in sentences):
            raise ValueError(f"{where}: every sentence must be a string")
        checked[vid] = {"timestamps": [_timestamp(t, f"{where}, timestamps[{i}]", allow_reversed=True)
                                       for i, t in enumerate(timestamps)], "sentences": list(sentences)}
    return checked


def check_predictions(predictions: Any, gt_videos, source: str, gt_source: str) -> Dict[str, List[dict]]:
    """{vid: [{"sentence", "timestamp"}]} (the "results" of a submission), else ValueError naming video and event."""
    if not isinstance(predictions, Mapping):
        raise ValueError(f"{source}: 'results' must be a JSON object {{video_id: [{{sentence, timestamp}}]}}")
    checked = {}
    for vid, events in predictions.items():
        where = f"{source}, video {vid!r}"
        if vid not in gt_videos:
            raise ValueError(f"{where}: unknown video (not in {gt_source})")
        if not isinstance(events, list):
            raise ValueError(f"{where}: expected a list of {{sentence, timestamp}}")
        checked[vid] = []
        for i, event in enumerate(events):
            if not isinstance(event, Mapping) or not isinstance(event.get("sentence"), str) or "timestamp" not in event:
                raise ValueError(f"{where}, event {i}: expected {{'sentence': str, 'timestamp': [start, end]}}")
            checked[vid].append({"sentence": event["sentence"],
                                 "timestamp": _timestamp(event["timestamp"], f"{where}, event {i}", False)})
    return checked


# ---------------------------------------------------------------- localisation

def localisation(predictions: Mapping[str, List[dict]], ground_truths: Sequence[Mapping[str, dict]],
                 tiou: float) -> tuple:
    """(precision, recall) as fractions at one tIoU, averaged over every ground-truth video."""
    videos = list(dict.fromkeys(vid for gt in ground_truths for vid in gt))
    precisions, recalls = [], []
    for vid in videos:
        best_precision = best_recall = 0.0
        for gt in ground_truths:
            if vid not in gt:
                continue
            true_events = gt[vid]["timestamps"]
            covered_true, covered_predicted = set(), set()
            if vid in predictions:
                for p, prediction in enumerate(predictions[vid]):
                    for t, true_event in enumerate(true_events):
                        if densevid_iou(prediction["timestamp"], true_event) > tiou:
                            covered_true.add(t)
                            covered_predicted.add(p)
                if predictions[vid]:
                    best_precision = max(best_precision, float(len(covered_predicted)) / len(predictions[vid]))
            best_recall = max(best_recall, float(len(covered_true)) / len(true_events))
        precisions.append(best_precision)
        recalls.append(best_recall)
    return sum(precisions) / len(precisions), sum(recalls) / len(recalls)


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


# ---------------------------------------------------------------- captions

def _caption_pairs(predictions, ground_truths, videos, tiou, scorers: CaptionScorers, garbage: random.Random):
    """{vid: [(tokenized prediction, [tokenized true sentence or random string])]} at one tIoU."""
    pairs = {}
    for vid in videos:
        pairs[vid] = []
        for prediction in predictions.get(vid, []):
            hypothesis = scorers.tokenize([prediction["sentence"]])[0]
            matched = False
            for gt in ground_truths:
                if vid not in gt:
                    continue
                for timestamp, sentence in zip(gt[vid]["timestamps"], gt[vid]["sentences"]):
                    if densevid_iou(prediction["timestamp"], timestamp) >= tiou:
                        pairs[vid].append((hypothesis, scorers.tokenize([sentence])))
                        matched = True
            if not matched:  # compared with a random string, as the reference does
                length = garbage.randint(10, 20)
                nonsense = "".join(garbage.choice(string.ascii_lowercase) for _ in range(length))
                pairs[vid].append((hypothesis, [nonsense]))
    return pairs


def caption_scores(predictions, ground_truths, tiou: float, scorers: CaptionScorers) -> Dict[str, float]:
    """{"METEOR", "CIDEr"} as fractions at one tIoU, averaged over every ground-truth video."""
    videos = list(dict.fromkeys(vid for gt in ground_truths for vid in gt))
    pairs = _caption_pairs(predictions, ground_truths, videos, tiou, scorers, random.Random(0))
    meteor, cider = [], []
    for vid in tqdm(videos, desc=f"captions @ tIoU {tiou:g}", leave=False, disable=None):
        meteor.append(scorers.meteor(pairs[vid])[0] if pairs[vid] else 0.0)
        cider.append(scorers.cider(pairs[vid]) if pairs[vid] else 0.0)
    return {"METEOR": float(np.mean(meteor)), "CIDEr": float(np.mean(cider))}


# ---------------------------------------------------------------- entry point

def evaluate_dense_captioning(predictions: Mapping[str, Sequence[Mapping]],
                              ground_truths: Sequence[Mapping[str, Mapping]],
                              tious: Sequence[float] = DEFAULT_TIOUS, max_proposals: int = MAX_PROPOSALS,
                              soda_multi_reference: bool = False, pred_source: str = "predictions",
                              gt_sources: Optional[Sequence[str]] = None,
                              scorers: Optional[CaptionScorers] = None) -> Dict[str, Any]:
    """Localisation, caption and SODA_c metrics in percent.

    predictions: the submission's "results", {vid: [{"sentence", "timestamp": [s, e]}]};
    ground_truths: one or more {vid: {"duration", "timestamps", "sentences"}} (e.g. val_1 and val_2).
    Keys: Precision@t, Recall@t, F1@t, METEOR@t, CIDEr@t for each t, their averages Precision, Recall, F1, METEOR,
    CIDEr, and SODA_c; caption metrics are None (with "note") without Java. Pass `scorers` to share one METEOR
    process (its start takes seconds) across evaluations; the caller then closes it.
    """
    if not tious:
        raise ValueError("tious: give at least one tIoU")
    if isinstance(ground_truths, Mapping) or not ground_truths:
        raise ValueError("ground_truths: expected a non-empty list of ground-truth dicts")
    gt_sources = list(gt_sources or [f"ground truth #{i + 1}" for i in range(len(ground_truths))])
    if len(gt_sources) != len(ground_truths):
        raise ValueError(f"gt_sources: {len(gt_sources)} names for {len(ground_truths)} ground-truth dicts")
    ground_truths = [check_ground_truth(gt, source) for gt, source in zip(ground_truths, gt_sources)]
    gt_videos = set(vid for gt in ground_truths for vid in gt)
    all_predictions = check_predictions(predictions, gt_videos, pred_source, " / ".join(gt_sources))
    predictions = {vid: events[:max_proposals] for vid, events in all_predictions.items()}

    metrics: Dict[str, Any] = {}
    per_tiou: Dict[str, List[float]] = {"Precision": [], "Recall": []}
    for tiou in tious:
        precision, recall = localisation(predictions, ground_truths, tiou)
        for name, value in (("Precision", precision), ("Recall", recall), ("F1", _f1(precision, recall))):
            metrics[f"{name}@{tiou:g}"] = 100 * value
        per_tiou["Precision"].append(precision)
        per_tiou["Recall"].append(recall)
    if not java_available():
        for tiou in tious:
            metrics[f"METEOR@{tiou:g}"] = metrics[f"CIDEr@{tiou:g}"] = None
        averages = {"METEOR": None, "CIDEr": None, "SODA_c": None}
        metrics["note"] = f"METEOR, CIDEr, SODA_c {JAVA_SKIPPED_NOTE} (PTB tokenizer and METEOR are Java)"
    else:
        per_tiou.update(METEOR=[], CIDEr=[])
        own_scorers = scorers is None
        scorers = scorers or CaptionScorers()
        try:
            scorers.tokenize([e["sentence"] for events in all_predictions.values() for e in events]
                             + [s for gt in ground_truths for entry in gt.values() for s in entry["sentences"]])
            for tiou in tious:
                for name, value in caption_scores(predictions, ground_truths, tiou, scorers).items():
                    metrics[f"{name}@{tiou:g}"] = 100 * value
                    per_tiou[name].append(value)
            soda_scores = soda.soda_c(all_predictions, ground_truths, soda_multi_reference, scorers)
        finally:
            if own_scorers:
                scorers.close()
        averages = {"SODA_c": soda_scores["f1"]}
    for name, values in per_tiou.items():
        averages[name] = 100 * sum(values) / float(len(values))
    averages["F1"] = _f1(averages["Precision"], averages["Recall"])
    ordered = ["Precision", "Recall", "F1", "METEOR", "CIDEr", "SODA_c"]
    metrics.update((name, averages[name]) for name in ordered)
    return metrics
