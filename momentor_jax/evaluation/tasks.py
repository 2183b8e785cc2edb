"""Zero-shot evaluation tasks: annotations -> questions, answers -> submissions, submissions -> metrics.

Each task turns its checked annotations (evaluation/annotations.py) into `Query`s (one question about one video),
turns each generated answer into its part of the standard submission format (answers read by evaluation/parsing.py,
as `predict` reads them), and scores the whole submission with the metrics package. Answers that cannot be parsed
stay in the submission as empty predictions (scored as misses) and are counted.

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
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from momentor_jax import fileio
from momentor_jax.evaluation import annotations as annotations_lib
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
    where: str = ""            # file and record, for messages
    text: str = ""             # what the timeline labels its row with (the query, or the video id)


def grounding_question(query: str) -> str:
    """"A red circle appears." -> "Find the moment when a red circle appears." (acronyms and "I" keep their case)."""
    text = query.strip().rstrip(".!?").strip()
    first = text.split(" ", 1)[0]
    if first != "I" and (len(first) == 1 or first[1:].islower()):
        text = text[:1].lower() + text[1:]
    return GROUNDING_QUESTION.format(query=text)


# ----------------------------------------------------------------------------------------------- tasks
@dataclasses.dataclass
class Task:
    name: str
    queries: list                                    # [Query]
    to_prediction: Callable[[Query, str, float], tuple]  # (query, answer text, duration) -> (prediction, parsed?)
    write: Callable[[dict, str], str]                # ({qid: prediction}, out dir) -> path of the submission
    score: Callable[[dict], dict]                    # {qid: prediction} -> metrics
    timeline: Callable[[Query, Any, float], dict]    # -> plot_timelines row
    annotations: Optional[annotations_lib.Annotations] = None  # notes and counts of the checked ground truth


def _window_prediction(query: Query, text: str, duration: float) -> tuple:
    windows = parsing.parse_windows(text, duration)
    scored = [[round(s, 2), round(e, 2), round(1.0 - 0.01 * i, 4)] for i, (s, e) in enumerate(windows)]
    return {"qid": query.qid, "query": query.record.get("query", ""), "vid": query.vid,
            "pred_relevant_windows": scored}, bool(windows)


def _windows_timeline(query: Query, prediction: dict, duration: float) -> dict:
    return {"label": query.text, "duration": duration,
            "ground_truth": [w[:2] for w in query.record.get("relevant_windows", [])],
            "predicted": [w[:2] for w in prediction["pred_relevant_windows"][:1]]}


def _write_jsonl(predictions: dict, out_dir: str, name: str) -> str:
    path = fileio.join(out_dir, name)
    fileio.write_text(path, "".join(json.dumps(p) + "\n" for p in predictions.values()))
    return path


def _write_json(payload: Any, out_dir: str, name: str) -> str:
    path = fileio.join(out_dir, name)
    fileio.write_text(path, json.dumps(payload))
    return path


def _window_queries(records: list, locations: Sequence[str] = ()) -> list:
    locations = list(locations) or [f"record {i + 1}" for i in range(len(records))]
    return [Query(r["qid"], str(r["vid"]), grounding_question(r["query"]), r.get("duration"), r, where,
                  r["query"].strip()) for r, where in zip(records, locations)]


def grounding_task(records: list, gt_source: str, locations: Sequence[str] = ()) -> Task:
    queries = _window_queries(records, locations)

    def score(predictions: dict) -> dict:
        gt = [q.record for q in queries if q.qid in predictions]
        return evaluate_grounding(list(predictions.values()), gt, gt_source=gt_source)

    return Task("grounding", queries, _window_prediction,
                lambda p, out: _write_jsonl(p, out, "predictions.jsonl"), score, _windows_timeline)


def highlights_task(records: list, gt_source: str, locations: Sequence[str] = ()) -> Task:
    queries = _window_queries(records, locations)
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


def _event_queries(ground_truth: Mapping, gt_source: str) -> list:
    return [Query(vid, str(vid), EVENTS_QUESTION, float(entry["duration"]) if isinstance(entry, Mapping) else None,
                  dict(entry) if isinstance(entry, Mapping) else {"labels": entry}, f"{gt_source}, video {vid!r}",
                  str(vid))
            for vid, entry in ground_truth.items()]


def dense_captioning_task(ground_truth: Mapping, gt_source: str) -> Task:
    queries = _event_queries(ground_truth, gt_source)

    def to_prediction(query: Query, text: str, duration: float) -> tuple:
        events = parsing.parse_events(text, duration)
        results = [{"sentence": caption, "timestamp": [round(s, 2), round(e, 2)]} for s, e, caption in events]
        return results, bool(events)

    def score(predictions: dict) -> dict:
        gt = {vid: ground_truth[vid] for vid in predictions}
        return evaluate_dense_captioning(predictions, [gt], gt_sources=[gt_source])

    def timeline(query: Query, prediction: list, duration: float) -> dict:
        return {"label": query.text, "duration": duration, "ground_truth": query.record.get("timestamps", []),
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
    queries = _event_queries(ground_truth, gt_source)

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
        return {"label": query.text, "duration": duration, "ground_truth": spans(query.record["labels"]),
                "predicted": spans(prediction)}

    return Task("action_segmentation", queries, to_prediction,
                lambda p, out: _write_json(p, out, "predictions.json"), score, timeline)


def make_task(name: str, annotations: str, durations: Optional[Mapping[str, float]] = None) -> Task:
    """The task over a checked annotation file (annotations.AnnotationError lists every bad record)."""
    if name in ("grounding", "highlights"):
        checked = annotations_lib.read_grounding(annotations, durations)
        make = grounding_task if name == "grounding" else highlights_task
        task = make(checked.records, annotations, checked.locations)
    elif name == "dense_captioning":
        checked = annotations_lib.read_dense_captioning(annotations)
        task = dense_captioning_task(checked.records, annotations)
    elif name == "action_segmentation":
        checked = annotations_lib.read_segmentation(annotations)
        task = action_segmentation_task(checked.records, annotations)
    else:
        raise ValueError(f"unknown task {name!r}; choose one of {TASKS}")
    task.annotations = checked
    return task
