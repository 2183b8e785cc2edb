"""Zero-shot evaluation tasks: annotations -> questions, answers -> submissions, submissions -> metrics.

Each task turns its annotation file into `Query`s (one question about one video), turns each generated answer into
its part of the standard submission format, and scores the whole submission with the metrics package. Answers
that cannot be parsed stay in the submission as empty predictions (scored as misses) and are counted.

    grounding            QVHighlights-style JSONL, Charades-STA txt ("vid s e##sentence") or ActivityNet Captions
                         json -> JSONL {qid, query, vid, pred_relevant_windows: [[s, e, score]]}
    highlights           QVHighlights JSONL -> the same, plus pred_saliency_scores per 2 s clip when the ground
                         truth has saliency scores
    dense_captioning     ActivityNet Captions json -> {"results": {vid: [{sentence, timestamp}]}}
    action_segmentation  {vid: [frame labels]} -> {vid: [frame labels]} (events mapped to the nearest class name)
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from momentor_jax.evaluation import parsing
from momentor_jax.evaluation.metrics import (evaluate_dense_captioning, evaluate_grounding, evaluate_highlights,
                                             evaluate_segmentation)
from momentor_jax.evaluation.metrics.highlights import CLIP_SECONDS
from momentor_jax.evaluation.metrics.segmentation import DEFAULT_BACKGROUND

# Same wording family as the segment_locate questions of the training data ("Find the moment when the ... shows up.").
GROUNDING_QUESTION = "Find the moment when {query}."
# One of the GESM training prompts (data/gesm.py PROMPT_POOL): every event with its span and a caption.
EVENTS_QUESTION = "Localize every event in the video and describe each one."
BACKGROUND = DEFAULT_BACKGROUND[0]
TASKS = ("grounding", "highlights", "dense_captioning", "action_segmentation")


@dataclasses.dataclass
class Query:
    qid: Any
    vid: str
    question: str
    duration: Optional[float]  # seconds; None: taken from the video
    record: dict               # the annotation it came from


def grounding_question(query: str) -> str:
    """"A red circle appears." -> "Find the moment when a red circle appears." (acronyms and "I" keep their case)."""
    text = query.strip().rstrip(".!?").strip()
    first = text.split(" ", 1)[0]
    if first != "I" and (len(first) == 1 or first[1:].islower()):
        text = text[:1].lower() + text[1:]
    return GROUNDING_QUESTION.format(query=text)


# ------------------------------------------------------------------------------------------- annotations
def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read JSON annotations ({e})") from e


def _read_jsonl(path: str) -> list:
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as e:
                    raise ValueError(f"{path}, line {number}: not JSON ({e})") from e
    return records


def _charades_records(path: str, durations: Mapping[str, float]) -> list:
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            head, sep, sentence = line.strip().partition("##")
            parts = head.split()
            if not sep or len(parts) != 3:
                raise ValueError(f"{path}, line {number}: expected 'vid start end##sentence', got {line.strip()!r}")
            try:
                start, end = float(parts[1]), float(parts[2])
            except ValueError as e:
                raise ValueError(f"{path}, line {number}: bad times ({e})") from e
            records.append({"qid": len(records), "vid": parts[0], "query": sentence.strip(),
                            "duration": durations.get(parts[0]), "relevant_windows": [[start, end]]})
    return records


def _activitynet_grounding(path: str, data: Mapping) -> list:
    records = []
    for vid, entry in data.items():
        if not isinstance(entry, Mapping) or len(entry.get("timestamps", ())) != len(entry.get("sentences", ())):
            raise ValueError(f"{path}, video {vid}: expected {{duration, timestamps, sentences}} of equal lengths")
        for (start, end), sentence in zip(entry["timestamps"], entry["sentences"]):
            records.append({"qid": len(records), "vid": vid, "query": sentence.strip(),
                            "duration": float(entry["duration"]), "relevant_windows": [[float(start), float(end)]]})
    return records


def load_grounding(path: str, durations: Optional[Mapping[str, float]] = None) -> list:
    """Ground-truth records {qid, vid, query, duration (None if unknown), relevant_windows} from any of the three
    formats (told apart by extension: .jsonl, .txt, .json)."""
    if path.endswith(".jsonl"):
        records = _read_jsonl(path)
        for i, r in enumerate(records):
            for field in ("qid", "vid", "query", "relevant_windows"):
                if field not in r:
                    raise ValueError(f"{path}, record #{i + 1}: missing '{field}'")
        return records
    if path.endswith(".txt"):
        return _charades_records(path, durations or {})
    if path.endswith(".json"):
        return _activitynet_grounding(path, _read_json(path))
    raise ValueError(f"{path}: grounding annotations must be .jsonl (QVHighlights), .txt (Charades-STA) or .json "
                     "(ActivityNet Captions)")


# ----------------------------------------------------------------------------------------------- tasks
@dataclasses.dataclass
class Task:
    name: str
    queries: list                                    # [Query]
    to_prediction: Callable[[Query, str, float], tuple]  # (query, answer text, duration) -> (prediction, parsed?)
    write: Callable[[dict, str], str]                # ({qid: prediction}, out dir) -> path of the submission
    score: Callable[[dict], dict]                    # {qid: prediction} -> metrics
    timeline: Callable[[Query, Any, float], dict]    # -> plot_timelines row


def _window_prediction(query: Query, text: str, duration: float) -> tuple:
    windows = parsing.parse_windows(text, duration)
    scored = [[round(s, 2), round(e, 2), round(1.0 - 0.01 * i, 4)] for i, (s, e) in enumerate(windows)]
    return {"qid": query.qid, "query": query.record.get("query", ""), "vid": query.vid,
            "pred_relevant_windows": scored}, bool(windows)


def _windows_timeline(query: Query, prediction: dict, duration: float) -> dict:
    return {"label": f"{query.vid} #{query.qid}", "duration": duration,
            "ground_truth": [w[:2] for w in query.record.get("relevant_windows", [])],
            "predicted": [w[:2] for w in prediction["pred_relevant_windows"][:1]]}


def _write_jsonl(predictions: dict, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in predictions.values())
    return path


def _write_json(payload: Any, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        json.dump(payload, f)
    return path


def grounding_task(records: list, gt_source: str) -> Task:
    queries = [Query(r["qid"], str(r["vid"]), grounding_question(r["query"]), r.get("duration"), r)
               for r in records]

    def score(predictions: dict) -> dict:
        gt = [q.record for q in queries if q.qid in predictions]
        return evaluate_grounding(list(predictions.values()), gt, gt_source=gt_source)

    return Task("grounding", queries, _window_prediction,
                lambda p, out: _write_jsonl(p, out, "predictions.jsonl"), score, _windows_timeline)


def highlights_task(records: list, gt_source: str) -> Task:
    queries = [Query(r["qid"], str(r["vid"]), grounding_question(r["query"]), r.get("duration"), r)
               for r in records]
    with_saliency = bool(records) and all("saliency_scores" in r for r in records)

    def to_prediction(query: Query, text: str, duration: float) -> tuple:
        prediction, parsed = _window_prediction(query, text, duration)
        if with_saliency:
            centers = (np.arange(int(duration / CLIP_SECONDS)) + 0.5) * CLIP_SECONDS
            saliency = np.zeros(len(centers))
            for start, end, score in prediction["pred_relevant_windows"]:
                saliency = np.maximum(saliency, np.where((centers >= start) & (centers <= end), score, 0.0))
            prediction["pred_saliency_scores"] = [float(s) for s in saliency]
        return prediction, parsed

    def score(predictions: dict) -> dict:
        gt = [q.record for q in queries if q.qid in predictions]
        return evaluate_highlights(list(predictions.values()), gt, gt_source=gt_source)

    return Task("highlights", queries, to_prediction, lambda p, out: _write_jsonl(p, out, "predictions.jsonl"),
                score, _windows_timeline)


def _event_queries(ground_truth: Mapping) -> list:
    return [Query(vid, str(vid), EVENTS_QUESTION, float(entry["duration"]) if isinstance(entry, Mapping) else None,
                  dict(entry) if isinstance(entry, Mapping) else {"labels": entry})
            for vid, entry in ground_truth.items()]


def dense_captioning_task(ground_truth: Mapping, gt_source: str) -> Task:
    queries = _event_queries(ground_truth)

    def to_prediction(query: Query, text: str, duration: float) -> tuple:
        events = parsing.parse_events(text, duration)
        results = [{"sentence": caption, "timestamp": [round(s, 2), round(e, 2)]} for s, e, caption in events]
        return results, bool(events)

    def score(predictions: dict) -> dict:
        gt = {vid: ground_truth[vid] for vid in predictions}
        return evaluate_dense_captioning(predictions, [gt], gt_sources=[gt_source])

    def timeline(query: Query, prediction: list, duration: float) -> dict:
        return {"label": query.vid, "duration": duration, "ground_truth": query.record.get("timestamps", []),
                "predicted": [p["timestamp"] for p in prediction]}

    return Task("dense_captioning", queries, to_prediction,
                lambda p, out: _write_json({"results": p}, out, "predictions.json"), score, timeline)


def nearest_class(caption: str, classes: Sequence[str]) -> str:
    """The class name closest to a caption as strings (difflib ratio; underscores read as spaces)."""
    caption = caption.lower().strip()
    return max(classes, key=lambda c: difflib.SequenceMatcher(None, caption, c.replace("_", " ").lower()).ratio())


def events_to_frame_labels(events: Sequence[tuple], num_frames: int, duration: float,
                           classes: Sequence[str]) -> list:
    """Frame i (at time (i + 0.5) * duration / num_frames) takes the class of the last event covering it."""
    labels = [BACKGROUND] * num_frames
    times = (np.arange(num_frames) + 0.5) * duration / max(num_frames, 1)
    for start, end, caption in events:
        name = nearest_class(caption, classes)
        for i in np.flatnonzero((times >= start) & (times <= end)):
            labels[i] = name
    return labels


def action_segmentation_task(ground_truth: Mapping, gt_source: str) -> Task:
    for vid, labels in ground_truth.items():
        if not isinstance(labels, list) or not labels:
            raise ValueError(f"{gt_source}, video {vid}: expected a non-empty list of frame labels")
    classes = sorted({str(label) for labels in ground_truth.values() for label in labels} - {BACKGROUND})
    if not classes:
        raise ValueError(f"{gt_source}: no action classes besides {BACKGROUND!r}")
    queries = _event_queries(ground_truth)

    def to_prediction(query: Query, text: str, duration: float) -> tuple:
        events = parsing.parse_events(text, duration)
        return events_to_frame_labels(events, len(query.record["labels"]), duration, classes), bool(events)

    def score(predictions: dict) -> dict:
        return evaluate_segmentation(predictions, {vid: ground_truth[vid] for vid in predictions},
                                     gt_source=gt_source)

    def timeline(query: Query, prediction: list, duration: float) -> dict:
        def spans(labels):
            step = duration / len(labels)
            out, start = [], None
            for i, label in enumerate(list(labels) + [None]):
                if start is not None and (label != labels[start]):
                    out.append([start * step, i * step])
                    start = None
                if start is None and label is not None and str(label) != BACKGROUND:
                    start = i
            return out
        return {"label": query.vid, "duration": duration, "ground_truth": spans(query.record["labels"]),
                "predicted": spans(prediction)}

    return Task("action_segmentation", queries, to_prediction,
                lambda p, out: _write_json(p, out, "predictions.json"), score, timeline)


def make_task(name: str, annotations: str, durations: Optional[Mapping[str, float]] = None) -> Task:
    if name == "grounding":
        return grounding_task(load_grounding(annotations, durations), annotations)
    if name == "highlights":
        return highlights_task(load_grounding(annotations, durations), annotations)
    if name == "dense_captioning":
        data = _read_json(annotations)
        if not isinstance(data, Mapping):
            raise ValueError(f"{annotations}: expected ActivityNet Captions {{vid: {{duration, timestamps, "
                             "sentences}}")
        return dense_captioning_task(data, annotations)
    if name == "action_segmentation":
        data = _read_json(annotations)
        if not isinstance(data, Mapping):
            raise ValueError(f"{annotations}: expected {{vid: [frame labels]}}")
        return action_segmentation_task(data, annotations)
    raise ValueError(f"unknown task {name!r}; choose one of {TASKS}")
