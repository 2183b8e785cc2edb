"""Moment-10M raw annotations -> one JSON line per dialogue (data/convert_data.py).

Raw: {video_id: {data_type: [item]}}, item = {id, data_type, conversations: {User, Assistant} or a list of them,
variables: {moment | SOURCE_CLIP | instance_class | content | click_position}, match_score | clip_similarity}.

Output line: {id (the video id), data_type, conversations: [{User, Assistant}], temporal_input_times,
temporal_output_times}. Format "temporal": every time in a user turn becomes <TEMP-INPUT>, in an assistant turn
<TEMP-OUTPUT>, and its seconds go to the matching list in order of appearance. Format "text": times are written
with the public script's templates (seeded) and both lists are empty.

Rejected and counted (each logged with its video, type and item): non-finite, negative or reversed times, click
positions outside [0, 1] or not finite, non-finite scores, empty strings for a variable, turns whose raw text holds
a token the template owns (`</s>`, `<s>`, `<video>`, the video and temporal placeholders), and whole videos whose id
is unusable (data/video_ids.py: empty, path separators, control characters). A video id that occurs twice in the
file is merged (its item lists joined) and counted in `merged_duplicates`; a key repeated inside one entry is an
error naming it. JSON nested too deeply for the parser is an error, not a crash.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import math
import random
import string
import sys
from typing import Any, Callable, Iterator, Optional

from tqdm import tqdm

from momentor_jax import constants, fileio, outputs
from momentor_jax.data import video_ids

# Per-type score thresholds of the public convert_data.py: keep an item if match_score or clip_similarity > it.
THRESHOLDS = {
    "segment_caption_data": 0.145,
    "instance_segment_caption_data": 0.146,
    "instance_caption_data": 0.126,
    "appearance_data": 0.129,
    "qa_data": 0.177,
    "instance_qa_data": 0.159,
    "cross_segment_qa_data": 0.211,
    "hypo_scene_data": 0.888,
    "comp_ret_data": 0.195,
    "segment_locate_data": 1.067,
}
DATA_TYPES = tuple(THRESHOLDS)
SCORE_KEYS = ("match_score", "clip_similarity")

# The public scripts' timestamp templates for text-timestamp Video-LLMs.
MOMENT_TEMPLATE_POOL = (
    "{:.2f}s-{:.2f}s",
    "{:.2f}s~{:.2f}s",
    "{:.2f}s to {:.2f}s",
    "{:.0f}s-{:.0f}s",
    "{:.0f}s~{:.0f}s",
    "{:.0f}s to {:.0f}s",
    "{:.2f} seconds-{:.2f} seconds",
    "{:.2f} seconds~{:.2f} seconds",
    "{:.2f} seconds to {:.2f} seconds",
    "{:.0f} seconds-{:.0f} seconds",
    "{:.0f} seconds~{:.0f} seconds",
    "{:.0f} seconds to {:.0f} seconds",
)
TEMPORAL, TEXT = "temporal", "text"
FORMATS = (TEMPORAL, TEXT)
VARIABLES = ("moment", "SOURCE_CLIP", "instance_class", "content", "click_position")


class MalformedItem(ValueError):
    """An annotation that cannot be converted; the message says why (the caller adds where)."""


# ---- counts ----

COUNT_COLUMNS = ("read", "filtered", "written", "rejected")
# One data type's item counts, a field per column of ConversionCounts.table.
TypeCounts = dataclasses.make_dataclass("TypeCounts", [(column, int, 0) for column in COUNT_COLUMNS])


class ConversionCounts:
    """read / filtered / written / rejected per data type."""

    def __init__(self):
        self.by_type: dict[str, TypeCounts] = collections.defaultdict(TypeCounts)
        self.merged_duplicates = 0  # video ids that occurred more than once in the source (their items joined)

    @property
    def total(self) -> TypeCounts:
        return TypeCounts(**{column: sum(getattr(counts, column) for counts in self.by_type.values())
                             for column in COUNT_COLUMNS})

    def table(self) -> str:
        order = [t for t in DATA_TYPES if t in self.by_type] + sorted(set(self.by_type) - set(DATA_TYPES))
        width = max([len("data type"), len("total")] + [len(t) for t in order])
        lines = [f"{'data type':<{width}}" + "".join(f" {column:>9}" for column in COUNT_COLUMNS)]
        for name, counts in [(t, self.by_type[t]) for t in order] + [("total", self.total)]:
            lines.append(f"{name:<{width}}" + "".join(f" {getattr(counts, column):>9}" for column in COUNT_COLUMNS))
        if self.merged_duplicates:
            lines.append(f"{self.merged_duplicates} video ids occurred more than once; their items were merged")
        return "\n".join(lines)


# ---- shared checks and text ----

def parse_time(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MalformedItem(f"{what}: {value!r} is not a number of seconds")
    if value < 0:
        raise MalformedItem(f"{what}: negative time {value}")
    return float(value)


def parse_window(value: Any, what: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise MalformedItem(f"{what}: {value!r} is not a [start, end] window")
    start, end = parse_time(value[0], what), parse_time(value[1], what)
    if start > end:
        raise MalformedItem(f"{what}: window starts after it ends ({start} > {end})")
    return start, end


def placeholder_window(placeholder: str) -> str:
    return f"{placeholder} to {placeholder}"


def join_moments(parts: list[str]) -> str:
    """"a", "a and b", "a, b and c": the public scripts' joining of several windows."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def log_to_stderr(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


class DuplicateKeys(dict):
    """A parsed JSON object that had repeated keys: the dict holds the last value, `repeated` every value."""

    def __init__(self, pairs):
        super().__init__(pairs)
        self.repeated: dict = {}
        for key, value in pairs:
            self.repeated.setdefault(key, []).append(value)
        self.repeated = {k: v for k, v in self.repeated.items() if len(v) > 1}


def load_json(path: str) -> Any:
    """The parsed file; objects with repeated keys come back as DuplicateKeys (Python's json keeps only the last
    value). ValueError (naming the file) for invalid JSON, non-UTF-8 bytes or nesting too deep to parse."""
    seen: list = []

    def pairs_hook(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) == len(keys):
            return dict(pairs)
        seen.append(1)
        return DuplicateKeys(pairs)

    try:
        text = fileio.read_bytes(path).decode("utf-8-sig")  # local or gs://
        return json.loads(text, object_pairs_hook=pairs_hook)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to parse") from None


def check_no_repeated_keys(value: Any, where: str) -> None:
    """MalformedItem naming the first repeated key anywhere inside `value` (an entry or item)."""
    stack = [(value, where)]
    while stack:
        node, at = stack.pop()
        if isinstance(node, DuplicateKeys):
            key = next(iter(node.repeated))
            raise MalformedItem(f"{at}: key {key!r} occurs {len(node.repeated[key])} times")
        if isinstance(node, dict):
            stack.extend((v, f"{at}.{k}") for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(node))


_RESERVED_TEXT = ("</s>", "<s>", constants.VIDEO_TOKEN, *constants.ADDED_TOKENS, "<TEMP-")


def reserved_text_problem(text: str) -> Optional[str]:
    """Why raw annotation text cannot go into a dialogue: it holds a token the template or the model owns."""
    for token in _RESERVED_TEXT:
        if token in text:
            return f"contains {token!r}, which the template or the model owns"
    return None


# ---- one item ----

def passes_filter(item: dict, data_type: str) -> bool:
    """The public rule: keep if match_score or clip_similarity is above the type's threshold."""
    threshold = THRESHOLDS[data_type]
    for key in SCORE_KEYS:
        if key in item:
            score = item[key]
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise MalformedItem(f"{key} {score!r} is not a finite number")
            if score > threshold:
                return True
    return False


class _ItemRenderer:
    """Fills one item's templates; in the temporal format it collects the times in order of appearance."""

    def __init__(self, variables: dict, fmt: str, rng: random.Random):
        self.variables, self.fmt, self.rng = variables, fmt, rng
        self.input_times: list[float] = []
        self.output_times: list[float] = []
        self._text_cache: dict[str, str] = {}  # text format: one template per variable and item, as the public code

    def render(self, template: Any, role: str) -> str:
        if not isinstance(template, str):
            raise MalformedItem(f"{role} text is {type(template).__name__}, not a string")
        problem = reserved_text_problem(template)
        if problem:
            raise MalformedItem(f"{role} text {problem}")
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as e:
            raise MalformedItem(f"{role} text has unbalanced braces ({e}): {template!r}") from e
        out = []
        for literal, field, spec, conversion in parsed:
            out.append(literal)
            if field is None:
                continue
            if field not in VARIABLES or spec or conversion:
                raise MalformedItem(f"{role} text has unknown placeholder {{{field}}}")
            if field not in self.variables:
                raise MalformedItem(f"{role} text uses {{{field}}} but variables has no {field!r}")
            out.append(self._temporal(field, role) if self.fmt == TEMPORAL else self._text(field))
        return "".join(out)

    def _temporal(self, name: str, role: str) -> str:
        is_user = role == "User"
        placeholder = constants.TEMP_INPUT_TOKEN if is_user else constants.TEMP_OUTPUT_TOKEN
        times = self.input_times if is_user else self.output_times
        value = self.variables[name]
        if name in ("moment", "SOURCE_CLIP"):
            windows = self._windows(name)
            for start, end in windows:
                times.extend((start, end))
            return join_moments([placeholder_window(placeholder)] * len(windows))
        if name == "click_position":
            t, (x, y) = self._click()
            times.append(t)
            return "<{:.2f}, {:.2f}>".format(x, y) + placeholder
        return self._string(name, value)

    def _text(self, name: str) -> str:
        if name not in self._text_cache:
            value = self.variables[name]
            if name in ("moment", "SOURCE_CLIP"):
                template = self.rng.choice(MOMENT_TEMPLATE_POOL)
                self._text_cache[name] = join_moments([template.format(s, e) for s, e in self._windows(name)])
            elif name == "click_position":
                self._click()
                t, (x, y) = value
                self._text_cache[name] = f"[{t}s, <{round(x, 2)}, {round(y, 2)}>]"
            else:
                self._text_cache[name] = self._string(name, value)
        return self._text_cache[name]

    def _windows(self, name: str) -> list[tuple[float, float]]:
        value = self.variables[name]
        if name == "moment" and isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
            return [parse_window(w, f"{name}[{i}]") for i, w in enumerate(value)]
        return [parse_window(value, name)]

    def _click(self) -> tuple[float, tuple[float, float]]:
        value = self.variables["click_position"]
        if (not isinstance(value, (list, tuple)) or len(value) != 2 or not isinstance(value[1], (list, tuple))
                or len(value[1]) != 2):
            raise MalformedItem(f"click_position {value!r} is not [t, [x, y]]")
        x, y = value[1]
        for coordinate in (x, y):
            if isinstance(coordinate, bool) or not isinstance(coordinate, (int, float)):
                raise MalformedItem(f"click_position {value!r}: {coordinate!r} is not a number")
            if not (math.isfinite(coordinate) and 0.0 <= coordinate <= 1.0):
                raise MalformedItem(f"click_position {value!r}: {coordinate!r} is not a position in [0, 1]")
        return parse_time(value[0], "click_position"), (float(x), float(y))

    @staticmethod
    def _string(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise MalformedItem(f"{name} {value!r} is not a string")
        if not value.strip():
            raise MalformedItem(f"{name} is an empty string")
        problem = reserved_text_problem(value)
        if problem:
            raise MalformedItem(f"{name} {problem}")
        return value


def convert_item(item: Any, video_id: str, data_type: str, fmt: str = TEMPORAL,
                 rng: Optional[random.Random] = None) -> dict:
    """One raw item -> one output record; raises MalformedItem."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if not isinstance(item, dict):
        raise MalformedItem(f"item is {type(item).__name__}, not an object")
    turns = item.get("conversations")
    if isinstance(turns, dict):
        turns = [turns]
    if not isinstance(turns, list) or not turns:
        raise MalformedItem("'conversations' is neither an object nor a non-empty list")
    variables = item.get("variables", {})
    if not isinstance(variables, dict):
        raise MalformedItem("'variables' is not an object")
    renderer = _ItemRenderer(variables, fmt, rng or random.Random(0))
    conversations = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "User" not in turn or "Assistant" not in turn:
            raise MalformedItem(f"conversations[{i}] lacks 'User' or 'Assistant'")
        user = renderer.render(turn["User"], "User")
        reply = renderer.render(turn["Assistant"], "Assistant")
        if not user.strip() or not reply.strip():
            raise MalformedItem(f"conversations[{i}] has an empty turn")
        conversations.append({"User": user, "Assistant": reply})
    return {"id": video_id, "data_type": data_type, "conversations": conversations,
            "temporal_input_times": renderer.input_times, "temporal_output_times": renderer.output_times}


# ---- a whole file ----

def iter_raw_items(raw: Any, source: str, counts: ConversionCounts,
                   log: Callable[[str], None]) -> Iterator[tuple[str, str, int, Any]]:
    """(video_id, data_type, index, item) for every item; structural problems are logged and counted."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected an object {{video_id: {{data_type: [items]}}}} at the top level")
    repeated = raw.repeated if isinstance(raw, DuplicateKeys) else {}
    for video_id, by_type in tqdm(raw.items(), desc="Converting", unit="video", file=sys.stderr):
        problem = video_ids.id_problem(video_id)
        if problem is None and video_id in repeated:
            by_type, problem = _merge_entries(repeated[video_id])
            if problem is None:
                counts.merged_duplicates += 1
                log(f"video {video_id} occurs {len(repeated[video_id])} times in {source}; its items are merged")
        if problem is None and not isinstance(by_type, dict):
            problem = f"expected {{data_type: [items]}}, got {type(by_type).__name__}"
        if problem is None and isinstance(by_type, DuplicateKeys):
            problem = f"data type {next(iter(by_type.repeated))!r} occurs more than once in its entry"
        if problem is not None:
            counts.by_type["(bad video entry)"].rejected += 1
            shown = video_id if video_ids.id_problem(video_id) is None else repr(video_id)
            log(f"rejected video {shown}: {problem}")
            continue
        for data_type, items in by_type.items():
            if not isinstance(items, list):
                counts.by_type[data_type].rejected += 1
                log(f"rejected video {video_id} type {data_type}: expected a list of items")
                continue
            for index, item in enumerate(items):
                yield video_id, data_type, index, item


def _merge_entries(entries: list) -> tuple:
    """({data_type: items} joining every occurrence of a video, None) or (None, why they cannot be joined)."""
    merged: dict = {}
    for entry in entries:
        if not isinstance(entry, dict) or isinstance(entry, DuplicateKeys):
            return None, "occurs more than once and an occurrence is not a {data_type: [items]} object"
        for data_type, items in entry.items():
            if not isinstance(items, list):
                return None, f"occurs more than once and its {data_type!r} is not a list"
            merged.setdefault(data_type, []).extend(items)
    return merged, None


def convert_file(source_path: str, target_path: str, fmt: str = TEMPORAL, apply_filter: bool = True,
                 seed: int = 0, log: Callable[[str], None] = log_to_stderr) -> ConversionCounts:
    """Converts a raw Moment-10M JSON file into JSONL, streaming the output. Malformed items are logged with
    their video id, type and index, counted and skipped."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    outputs.check_not_input(target_path, {"--source_path": source_path}, "--target_path")
    raw = load_json(source_path)
    rng = random.Random(seed)
    counts = ConversionCounts()
    fileio.makedirs(os.path.dirname(target_path) or ".")
    with fileio.atomic_open(target_path, "w") as out:  # local or gs://; whole or not at all
        for video_id, data_type, index, item in iter_raw_items(raw, source_path, counts, log):
            type_counts = counts.by_type[data_type]
            type_counts.read += 1
            try:
                if data_type not in THRESHOLDS:
                    raise MalformedItem(f"unknown data type (known: {', '.join(DATA_TYPES)})")
                if not isinstance(item, dict):
                    raise MalformedItem(f"item is {type(item).__name__}, not an object")
                check_no_repeated_keys(item, "item")
                if apply_filter and not passes_filter(item, data_type):
                    type_counts.filtered += 1
                    continue
                record = convert_item(item, video_id, data_type, fmt, rng)
            except MalformedItem as e:
                type_counts.rejected += 1
                log(f"rejected video {video_id} type {data_type} item {index}: {e}")
                continue
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            type_counts.written += 1
    return counts
