"""GESM (Grounded Event-Sequence Modeling) raw annotations -> one JSON line per video (data/convert_data_gesm.py).

Raw: {video_id: {timestamps: [[s, e], ...], captions: [...]}}. Output: data_type "event_sequence_decoding", one
turn: a user prompt asking for every event (from PROMPT_POOL, seeded) and the answer "<TEMP-OUTPUT> to
<TEMP-OUTPUT>: caption" per event in time order, space separated as in the public script, with
temporal_output_times accordingly. Format "text" writes the times with one public template per video instead.
"""
from __future__ import annotations

import json
import os
import random
import sys
from typing import Any, Callable

from tqdm import tqdm

from momentor_jax import constants, fileio, outputs
from momentor_jax.data import video_ids
from momentor_jax.data.moment10m import (FORMATS, MOMENT_TEMPLATE_POOL, TEMPORAL, ConversionCounts, DuplicateKeys,
                                         MalformedItem, check_no_repeated_keys, load_json, log_to_stderr,
                                         parse_window, placeholder_window, reserved_text_problem)

DATA_TYPE = "event_sequence_decoding"
PROMPT_POOL = (
    "Localize every event in the video and describe each one.",
    "Find all the events that happen in this video. For each event, give its start and end time and describe it.",
    "List every event in the video in order, with the time span and a short description of each.",
    "Describe all the events in the video one after another, each with the moment it starts and ends.",
    "What happens in this video? Give every event with its time span.",
)


def convert_video(video_id: str, entry: Any, fmt: str, rng: random.Random) -> dict:
    """One video's events -> one record; raises MalformedItem."""
    if not isinstance(entry, dict):
        raise MalformedItem(f"entry is {type(entry).__name__}, not an object")
    timestamps, captions = entry.get("timestamps"), entry.get("captions")
    if not isinstance(timestamps, list) or not isinstance(captions, list):
        raise MalformedItem("'timestamps' and 'captions' must both be lists")
    if len(timestamps) != len(captions):
        raise MalformedItem(f"{len(timestamps)} timestamps but {len(captions)} captions")
    if not timestamps:
        raise MalformedItem("no events")
    events = []
    for i, (window, caption) in enumerate(zip(timestamps, captions)):
        if not isinstance(caption, str) or not caption.strip():
            raise MalformedItem(f"captions[{i}] is not a non-empty string")
        problem = reserved_text_problem(caption)
        if problem:
            raise MalformedItem(f"captions[{i}] {problem}")
        events.append((parse_window(window, f"timestamps[{i}]"), caption))
    events.sort(key=lambda event: event[0])  # stable: equal windows keep their order

    prompt = rng.choice(PROMPT_POOL)
    times = []
    if fmt == TEMPORAL:
        span = placeholder_window(constants.TEMP_OUTPUT_TOKEN)
        answer = " ".join(f"{span}: {caption}" for _, caption in events)
        times = [t for window, _ in events for t in window]
    else:
        template = rng.choice(MOMENT_TEMPLATE_POOL)
        answer = " ".join(f"{template.format(*window)}: {caption}" for window, caption in events)
    return {"id": video_id, "data_type": DATA_TYPE, "conversations": [{"User": prompt, "Assistant": answer}],
            "temporal_input_times": [], "temporal_output_times": times}


def convert_file(source_path: str, target_path: str, fmt: str = TEMPORAL, seed: int = 0,
                 log: Callable[[str], None] = log_to_stderr) -> ConversionCounts:
    """Converts a raw GESM JSON file into JSONL, streaming the output; malformed videos are logged and counted."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    outputs.check_not_input(target_path, {"--source_path": source_path}, "--target_path")
    raw = load_json(source_path)
    if not isinstance(raw, dict):
        raise ValueError(f"{source_path}: expected an object {{video_id: {{timestamps, captions}}}} at the top level")
    rng = random.Random(seed)
    counts = ConversionCounts()
    type_counts = counts.by_type[DATA_TYPE]
    fileio.makedirs(os.path.dirname(target_path) or ".")
    repeated = raw.repeated if isinstance(raw, DuplicateKeys) else {}
    with fileio.atomic_open(target_path, "w") as out:  # local or gs://; whole or not at all
        for index, (video_id, entry) in enumerate(tqdm(raw.items(), desc="Converting", unit="video",
                                                       file=sys.stderr)):
            type_counts.read += 1
            try:
                problem = video_ids.id_problem(video_id)
                if problem:
                    raise MalformedItem(problem)
                if video_id in repeated:
                    raise MalformedItem(f"occurs {len(repeated[video_id])} times in the file; which event list is "
                                        "right is unknown")
                check_no_repeated_keys(entry, "entry")
                record = convert_video(video_id, entry, fmt, rng)
            except MalformedItem as e:
                type_counts.rejected += 1
                shown = video_id if video_ids.id_problem(video_id) is None else repr(video_id)
                log(f"rejected video {shown} type {DATA_TYPE} item {index}: {e}")
                continue
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            type_counts.written += 1
    return counts
