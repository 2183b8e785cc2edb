"""Evaluation ground truth: read and check every annotation format before any model work.

    read_grounding(path, durations=None, require_query=True) -> Annotations
                                                records [{qid, vid, query, duration, relevant_windows, ...}]
        .jsonl  QVHighlights: one object per line {qid, vid, query, duration?, relevant_windows[, relevant_clip_ids,
                saliency_scores]}
        .txt    Charades-STA: "vid start end##sentence" per line; qid = the line's index among non-blank lines;
                durations from `durations` ({vid: seconds}), else None (the evaluator takes the video's)
        .json   ActivityNet Captions {vid: {duration, timestamps, sentences}}: one query per sentence, qid = its index
    read_dense_captioning(path) -> Annotations             records {vid: {duration, timestamps, sentences}}
    read_segmentation(path) -> Annotations                 records {vid: [frame labels]}
    read_durations(path) -> {vid: seconds}
    check_prompts(records, length_of, limit, path)         every query's prompt fits the model (evaluate's check)

Every record is checked and every problem is reported at once: `AnnotationError` (a ValueError) carries one line per
bad record, each naming the file and the record (line number for .jsonl/.txt, video id and index for .json). Rejected:
not an object, missing fields, wrong types, numbers that are not finite, empty or blank queries and sentences,
missing or duplicate qids (1 and "1" are one qid, as the metrics compare them), video ids that are empty or hold a
path separator or line break, durations <= 0, and windows that are negative, reversed (start > end), of zero length
(no prediction can overlap them) or start at or after the video's end. Kept as annotated, counted in
`Annotations.counts` with one note per record: windows that end past the video's duration (real Charades-STA and
ActivityNet files have a few; the field scores them as annotated). A UTF-8 byte-order mark is skipped; bytes that
are not UTF-8 are rejected naming the line or offset. JSON that is nested too deep is rejected, not a RecursionError.
All files are read through fileio (local or gs://).
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Iterable, Mapping, Optional

from momentor_jax import fileio

MAX_LISTED = 50  # problems listed in one error; the rest are counted
PAST_THE_END = "windows ending past the video's duration (kept as annotated)"


class AnnotationError(ValueError):
    """Bad annotations: `problems` holds one line per bad record, each naming the file and the record."""

    def __init__(self, path: str, problems: list[str]):
        self.path, self.problems = path, list(problems)
        shown = self.problems[:MAX_LISTED]
        more = len(self.problems) - len(shown)
        header = f"{path}: {len(self.problems)} bad record{'s' if len(self.problems) != 1 else ''}"
        super().__init__("\n  ".join([header, *shown]) + (f"\n  ... and {more} more" if more else ""))


@dataclasses.dataclass
class Annotations:
    path: str
    records: Any                 # list of grounding records, or {vid: entry}
    locations: list[str] = dataclasses.field(default_factory=list)           # grounding: where each record is
    notes: list[str] = dataclasses.field(default_factory=list)               # one line per kept-but-odd record
    counts: dict[str, int] = dataclasses.field(default_factory=dict)         # {what: how many}

    def note(self, where: str, message: str, kind: str) -> None:
        self.notes.append(f"{where}: {message}")
        self.counts[kind] = self.counts.get(kind, 0) + 1


class Problems:
    """Collects one line per bad record; `raise_if_any` raises them together as an AnnotationError."""

    def __init__(self, path: str):
        self.path, self.lines = path, []

    def add(self, where: str, message: str) -> None:
        self.lines.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise AnnotationError(self.path, self.lines)


# ------------------------------------------------------------------------------------------------ reading
def read_text(path: str) -> str:
    """The file as text: UTF-8 with an optional byte-order mark; other bytes raise AnnotationError naming the line."""
    try:
        data = fileio.read_bytes(path)
    except OSError as e:
        raise AnnotationError(path, [f"{path}: cannot read ({e.strerror or e})"]) from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise AnnotationError(path, [f"{path}, line {line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                                     f"{e.start}); is this a text annotation file?"]) from None


def parse_json(text: str, where: str) -> Any:
    """json.loads with a message naming `where` for bad JSON and for nesting deeper than Python can parse."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deep") from None


def read_json(path: str) -> Any:
    text = read_text(path)
    try:
        return parse_json(text, path)
    except ValueError as e:
        raise AnnotationError(path, [str(e)]) from None


class BadLine:
    """Stands for a JSONL line that is not JSON; `message` names the file and line."""

    def __init__(self, message: str):
        self.message = message


def read_jsonl(path: str, problems: Optional[Problems] = None) -> list[tuple[int, Any]]:
    """[(line number, value)] of the non-blank lines. With `problems`, a line that is not JSON comes back as a
    BadLine in its place (the caller reports it in order); without, all such lines raise one AnnotationError."""
    values = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            try:
                values.append((number, parse_json(line, f"{path}, line {number}")))
            except ValueError as e:
                values.append((number, BadLine(str(e))))
    bad = [value.message for _, value in values if isinstance(value, BadLine)]
    if problems is None and bad:
        raise AnnotationError(path, bad)
    return values


# ------------------------------------------------------------------------------------------------ fields
def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_duration(value: Any) -> Optional[str]:
    """None if `value` is a usable duration in seconds, else what is wrong with it."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"duration {value!r} is not a finite number"
    if not is_number(value):
        return f"duration must be a number of seconds, got {_type_name(value)} {value!r}"
    if value <= 0:
        return f"duration {value!r} is not positive"
    return None


def check_video_id(value: Any) -> Optional[str]:
    if not isinstance(value, str):
        return f"video id must be a string, got {_type_name(value)} {value!r}"
    if not value.strip() or value in (".", ".."):
        return f"video id {value!r} is empty"
    if any(c in value for c in "/\\\n\r\0"):
        return f"video id {value!r} holds a path separator or line break"
    return None


def check_text(value: Any, field: str) -> Optional[str]:
    if not isinstance(value, str):
        return f"'{field}' must be a string, got {_type_name(value)} {value!r}"
    if not value.strip():
        return f"'{field}' is empty"
    return None


def check_qid(value: Any) -> Optional[str]:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, str)):
        return f"qid must be an integer or a string, got {_type_name(value)} {value!r}"
    if isinstance(value, str) and not value.strip():
        return "qid is an empty string"
    return None


def check_window(value: Any, duration: Optional[float]) -> tuple[Optional[str], bool]:
    """(what is wrong with a ground-truth [start, end] window or None, whether it ends past `duration`)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return f"window {value!r} is not [start, end]", False
    if not all(is_number(v) for v in value):
        return f"window {value!r}: start and end must be finite numbers", False
    start, end = float(value[0]), float(value[1])
    if start < 0:
        return f"window {value!r} starts before 0", False
    if end < start:
        return f"window {value!r} is reversed (start > end)", False
    if end == start:
        return f"window {value!r} has zero length (no prediction can overlap it)", False
    if duration is not None and start >= duration:
        return f"window {value!r} starts at or after the video's end ({duration:g} s)", False
    return None, duration is not None and end > duration


def _check_windows(windows: Any, duration: Optional[float], where: str, field: str, errors: list,
                   out: Annotations) -> Optional[list]:
    """The windows as [[start, end]] floats, or None with what is wrong appended to `errors`."""
    if not isinstance(windows, list) or not windows:
        errors.append(f"'{field}' must be a non-empty list of [start, end], got {windows!r}")
        return None
    checked, past_end = [], []
    for i, window in enumerate(windows):
        error, past = check_window(window, duration)
        if error:
            errors.append(error if len(windows) == 1 else f"{field}[{i}]: {error}")
        else:
            checked.append([float(window[0]), float(window[1])])
            past_end += [list(window)] if past else []
    if len(checked) != len(windows):
        return None
    for window in past_end:
        out.note(where, f"window {window} ends past the duration {duration:g} s", PAST_THE_END)
    return checked


class _Qids:
    """Duplicate detection on str(qid), the key the metrics use."""

    def __init__(self):
        self.seen: dict[str, str] = {}

    def check(self, qid: Any, where: str) -> Optional[str]:
        key = str(qid)
        if key in self.seen:
            return f"duplicate qid {qid!r} (first at {self.seen[key]})"
        self.seen[key] = where
        return None


# ------------------------------------------------------------------------------------------------ grounding
def _qvh_records(path: str, problems: Problems, out: Annotations, require_query: bool) -> list:
    records, qids = [], _Qids()
    required = ("qid", "vid", "query", "relevant_windows") if require_query else ("qid", "relevant_windows")
    for number, record in read_jsonl(path, problems):
        where = f"{path}, line {number}"
        if isinstance(record, BadLine):
            problems.lines.append(record.message)
            continue
        if not isinstance(record, Mapping):
            problems.add(where, f"expected a JSON object, got {_type_name(record)}")
            continue
        missing = [f for f in required if f not in record]
        if missing:
            problems.add(where, f"missing {', '.join(repr(f) for f in missing)}")
            continue
        errors = [e for e in (check_qid(record["qid"]),
                              check_video_id(record["vid"]) if "vid" in record else None,
                              check_text(record["query"], "query") if "query" in record else None) if e]
        duration = record.get("duration")
        if duration is not None:
            error = check_duration(duration)
            errors += [error] if error else []
            duration = None if error else float(duration)
        windows = _check_windows(record["relevant_windows"], duration, where, "relevant_windows", errors, out)
        if not errors:
            errors += [e for e in [qids.check(record["qid"], where)] if e]
        if errors:
            problems.add(where, "; ".join(errors))
        else:
            records.append(dict(record, duration=duration, relevant_windows=windows))
            out.locations.append(where)
    return records


def _charades_records(path: str, durations: Mapping[str, float], problems: Problems, out: Annotations) -> list:
    records = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        head, sep, sentence = line.strip().partition("##")
        parts = head.split()
        if not sep or len(parts) != 3:
            problems.add(where, f"expected 'vid start end##sentence', got {line.strip()[:80]!r}")
            continue
        vid = parts[0]
        try:
            start, end = float(parts[1]), float(parts[2])
        except ValueError:
            problems.add(where, f"start and end must be numbers, got {parts[1]!r} and {parts[2]!r}")
            continue
        errors = [e for e in (check_video_id(vid), check_text(sentence, "sentence")) if e]
        duration = durations.get(vid)
        windows = _check_windows([[start, end]], duration, where, "window", errors, out)
        if errors:
            problems.add(where, "; ".join(errors))
        else:
            records.append({"qid": len(records), "vid": vid, "query": sentence.strip(), "duration": duration,
                            "relevant_windows": windows})
            out.locations.append(where)
    return records


def _activitynet_entries(path: str, data: Any, problems: Problems, out: Annotations) -> dict:
    """{vid: {duration, timestamps, sentences}} with every entry checked."""
    if not isinstance(data, Mapping) or not data:
        problems.add(path, "expected a non-empty JSON object {video_id: {duration, timestamps, sentences}}, got "
                           f"{_type_name(data)}")
        return {}
    checked = {}
    for vid, entry in data.items():
        where = f"{path}, video {vid!r}"
        error = check_video_id(vid)
        if error:
            problems.add(where, error)
            continue
        if not isinstance(entry, Mapping):
            problems.add(where, f"expected an object {{duration, timestamps, sentences}}, got {_type_name(entry)}")
            continue
        missing = [f for f in ("duration", "timestamps", "sentences") if f not in entry]
        if missing:
            problems.add(where, f"missing {', '.join(repr(f) for f in missing)}")
            continue
        duration, timestamps, sentences = entry["duration"], entry["timestamps"], entry["sentences"]
        error = check_duration(duration)
        if error:
            problems.add(where, error)
            continue
        if not isinstance(timestamps, list) or not isinstance(sentences, list) or len(timestamps) != len(sentences):
            problems.add(where, "'timestamps' and 'sentences' must be lists of equal length")
            continue
        if not timestamps:
            problems.add(where, "no events")
            continue
        errors = []
        for i, (window, sentence) in enumerate(zip(timestamps, sentences)):
            event = []
            error = check_text(sentence, "sentence")
            event += [error] if error else []
            _check_windows([window], float(duration), f"{where}, event {i}", "timestamp", event, out)
            errors += [f"event {i}: {'; '.join(event)}"] if event else []
        if errors:
            problems.add(where, "; ".join(errors))
        else:
            checked[vid] = dict(entry, duration=float(duration), sentences=[s.strip() for s in sentences],
                                timestamps=[[float(s), float(e)] for s, e in timestamps])
    return checked


def read_grounding(path: str, durations: Optional[Mapping[str, float]] = None,
                   require_query: bool = True) -> Annotations:
    """Grounding / highlights ground truth in any of the three formats (by extension), checked; see the module doc.
    require_query=False (scoring): QVHighlights records need only 'qid' and 'relevant_windows'."""
    out, problems = Annotations(path, []), Problems(path)
    lower = path.lower()
    if lower.endswith(".jsonl"):
        out.records = _qvh_records(path, problems, out, require_query)
    elif lower.endswith(".txt"):
        out.records = _charades_records(path, durations or {}, problems, out)
    elif lower.endswith(".json"):
        for vid, entry in _activitynet_entries(path, read_json(path), problems, out).items():
            for i, (sentence, window) in enumerate(zip(entry["sentences"], entry["timestamps"])):
                out.records.append({"qid": len(out.records), "vid": vid, "query": sentence,
                                    "duration": entry["duration"], "relevant_windows": [window]})
                out.locations.append(f"{path}, video {vid!r}, event {i}")
    else:
        problems.add(path, "grounding annotations must be .jsonl (QVHighlights), .txt (Charades-STA) or .json "
                           "(ActivityNet Captions)")
    problems.raise_if_any()
    if not out.records:
        raise AnnotationError(path, [f"{path}: no queries"])
    return out


def read_dense_captioning(path: str) -> Annotations:
    """ActivityNet Captions {vid: {duration, timestamps, sentences}}, every event checked."""
    out, problems = Annotations(path, {}), Problems(path)
    out.records = _activitynet_entries(path, read_json(path), problems, out)
    problems.raise_if_any()
    return out


def check_frame_label(label: Any) -> Optional[str]:
    if isinstance(label, str) or (isinstance(label, int) and not isinstance(label, bool)):
        return None
    if isinstance(label, float):
        return None if math.isfinite(label) else f"frame label {label!r} is not a finite number"
    return f"frame label {label!r} is not a string or number"


def read_segmentation(path: str) -> Annotations:
    """{vid: [frame labels]}: non-empty lists of strings or finite numbers (NaN and null are refused)."""
    out, problems = Annotations(path, {}), Problems(path)
    data = read_json(path)
    if not isinstance(data, Mapping) or not data:
        problems.add(path, f"expected a non-empty JSON object {{video_id: [frame labels]}}, got {_type_name(data)}")
    else:
        for vid, labels in data.items():
            where = f"{path}, video {vid!r}"
            error = check_video_id(vid)
            if error is None and (not isinstance(labels, list) or not labels):
                error = f"expected a non-empty list of frame labels, got {_type_name(labels)}"
            bad = [] if error else [(i, e) for i, e in ((i, check_frame_label(x)) for i, x in enumerate(labels)) if e]
            if bad:
                more = f" (and {len(bad) - 1} more frames)" if len(bad) > 1 else ""
                error = f"frame {bad[0][0]}: {bad[0][1]}{more}"
            if error:
                problems.add(where, error)
            else:
                out.records[vid] = labels
    problems.raise_if_any()
    return out


def read_durations(path: str) -> dict[str, float]:
    """--durations: a JSON object {video_id: seconds > 0}."""
    data, problems = read_json(path), Problems(path)
    if not isinstance(data, Mapping):
        problems.add(path, f"expected a JSON object {{video_id: seconds}}, got {_type_name(data)}")
        problems.raise_if_any()
    durations = {}
    for vid, seconds in data.items():
        error = check_video_id(vid) or check_duration(seconds)
        if error:
            problems.add(f"{path}, video {vid!r}", error)
        else:
            durations[vid] = float(seconds)
    problems.raise_if_any()
    return durations


# ------------------------------------------------------------------------------------------------ prompts
def check_prompts(items: Iterable[tuple[str, str]], length_of: Callable[[str], int], limit: int, path: str) -> None:
    """AnnotationError listing every (where, question) whose prompt of `length_of(question)` tokens exceeds `limit`."""
    too_long = []
    for where, question in items:
        length = length_of(question)
        if length > limit:
            too_long.append(f"{where}: the question makes a prompt of {length} tokens; the model takes at most "
                            f"{limit} ({len(question.split())} words)")
    if too_long:
        raise AnnotationError(path, too_long)
