"""One converted example -> fixed-length token arrays (constants.BATCH_KEYS), and prompts for generation.

An example is a line of data/convert_data.py's output: {id, data_type, conversations: [{User, Assistant}],
temporal_input_times, temporal_output_times} with times in seconds. The k-th <TEMP-INPUT> in the dialogue (in
reading order) takes temporal_input_times[k], the k-th <TEMP-OUTPUT> takes temporal_output_times[k]; times are
divided by the video's duration here and clipped to [0, 1].

Times are checked first (ValueError naming the example, the list and the index): each must be a finite number of
seconds >= 0, a window written "<P> to <P>" must not start after it ends, and no time may pass the video's end by
more than `past_end_tolerance(duration)` (decoders and annotators disagree about a video's last second; within the
tolerance a time is clipped to the end, and `count_past_end` tells the loader how many were, so it can count them).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import math
import re

import numpy as np

from momentor_jax import constants
from momentor_jax.data import conversation
from momentor_jax.data.tokenizer import MomentorTokenizer

PAST_END_TOLERANCE_SECONDS = 1.0
PAST_END_TOLERANCE_FRACTION = 0.05


def past_end_tolerance(duration: float) -> float:
    """How far past the video's end a time may be and still be clipped to it (seconds)."""
    return max(PAST_END_TOLERANCE_SECONDS, PAST_END_TOLERANCE_FRACTION * float(duration))


def count_past_end(example: Mapping[str, Any], duration: float) -> int:
    """How many of the example's times lie past `duration` (they are clipped to it when encoded)."""
    count = 0
    for key in ("temporal_input_times", "temporal_output_times"):
        for t in example.get(key) or ():
            if isinstance(t, (int, float)) and not isinstance(t, bool) and t > duration:
                count += 1
    return count


_VIDEO_TEXT_TOKENS = (constants.VIDEO_TOKEN, constants.VID_START_TOKEN, constants.VID_PATCH_TOKEN,
                      constants.VID_END_TOKEN)


def encode_example(example: Mapping[str, Any], tokenizer: MomentorTokenizer, duration: float, num_frames: int,
                   max_length: int, system_prompt: str = conversation.SYSTEM_PROMPT) -> dict[str, np.ndarray]:
    """Arrays of shape [max_length] for BATCH_KEYS input_ids, targets, loss_mask, segment_ids, positions,
    placeholder_times, target_times. Trailing turns that do not fit are dropped whole (with their times).
    `system_prompt`: keep the default except for tiny test models (see conversation.prompt_pieces)."""
    example_id = example.get("id", "<no id>")
    turns = _turns(example, example_id)
    input_times, output_times = _times(example, turns, example_id)
    encoded = _encode_turns(turns, tokenizer, num_frames, example_id, system_prompt)

    kept, length = 0, 0
    while kept < len(encoded) and length + len(encoded[kept][0]) <= max_length:
        length += len(encoded[kept][0])
        kept += 1
    if kept == 0:
        raise ValueError(f"example {example_id}: the first turn needs {len(encoded[0][0])} tokens (with "
                         f"{num_frames} frame slots), more than max_length={max_length}")
    ids = np.concatenate([encoded[i][0] for i in range(kept)])
    supervised = np.concatenate([encoded[i][1] for i in range(kept)])
    times = _place_times(ids, tokenizer, input_times[:_count_in(turns[:kept], constants.TEMP_INPUT_TOKEN)],
                         output_times[:_count_in(turns[:kept], constants.TEMP_OUTPUT_TOKEN)], duration, example_id)
    return _fixed_length(ids, supervised, times, tokenizer, max_length)


def build_prompt(conversations: Sequence[Mapping[str, Optional[str]]] | Mapping[str, Optional[str]],
                 tokenizer: MomentorTokenizer, num_frames: int, for_generation: bool = False,
                 duration: float = 1.0, temporal_input_times: Sequence[float] = (),
                 temporal_output_times: Sequence[float] = (),
                 system_prompt: str = conversation.SYSTEM_PROMPT) -> dict[str, np.ndarray]:
    """Token ids of a whole prompt (1-D, no padding) and the normalized time at each placeholder.

    for_generation: the last turn's reply is left out (given or not) and the prompt ends with "ASSISTANT:", ready
    for the model to write the answer. Times in seconds, as in encode_example.
    """
    turns = _turns({"conversations": conversations}, "prompt", last_reply_optional=True)
    example = {"temporal_input_times": temporal_input_times, "temporal_output_times": temporal_output_times}
    input_times, output_times = _times(example, turns, "prompt")
    if for_generation:
        turns[-1] = (turns[-1][0], None)
    elif not turns[-1][1]:
        raise ValueError("prompt: the last turn has no assistant reply; pass for_generation=True")
    ids = np.concatenate([ids for ids, _ in _encode_turns(turns, tokenizer, num_frames, "prompt", system_prompt)])
    times = _place_times(ids, tokenizer, input_times[:_count_in(turns, constants.TEMP_INPUT_TOKEN)],
                         output_times[:_count_in(turns, constants.TEMP_OUTPUT_TOKEN)], duration, "prompt")
    return {"input_ids": ids.astype(np.int32), "placeholder_times": times}


def video_span_ids(tokenizer: MomentorTokenizer, num_frames: int) -> np.ndarray:
    """<vid_start>, M x <vid_patch>, <vid_end>."""
    special = tokenizer.special_ids
    return np.array([special["vid_start"]] + [special["vid_patch"]] * num_frames + [special["vid_end"]], np.int32)


def _turns(example: Mapping[str, Any], example_id: Any,
           last_reply_optional: bool = False) -> list[tuple[str, Optional[str]]]:
    conversations = example.get("conversations")
    if isinstance(conversations, Mapping):
        conversations = [conversations]
    if not isinstance(conversations, Sequence) or isinstance(conversations, str) or not conversations:
        raise ValueError(f"example {example_id}: 'conversations' must be a non-empty list of {{User, Assistant}}")
    turns = []
    for i, turn in enumerate(conversations):
        user = turn.get("User") if isinstance(turn, Mapping) else None
        reply = turn.get("Assistant") if isinstance(turn, Mapping) else None
        reply_optional = last_reply_optional and i == len(conversations) - 1
        if not isinstance(user, str) or not user:
            raise ValueError(f"example {example_id}: turn {i} has no 'User' text")
        if not (isinstance(reply, str) and reply) and not (reply_optional and not reply):
            raise ValueError(f"example {example_id}: turn {i} has no 'Assistant' text")
        for text in (user, reply or ""):
            for token in _VIDEO_TEXT_TOKENS:
                if token in text:
                    raise ValueError(f"example {example_id}: turn {i} contains {token}; the template adds the "
                                     "video itself")
        turns.append((conversation.with_video_marker(user) if i == 0 else user, reply or None))
    return turns


def _times(example: Mapping[str, Any], turns, example_id: Any) -> tuple[list[float], list[float]]:
    result = []
    for key, token in (("temporal_input_times", constants.TEMP_INPUT_TOKEN),
                       ("temporal_output_times", constants.TEMP_OUTPUT_TOKEN)):
        raw = example.get(key) or ()
        if isinstance(raw, (str, bytes, Mapping)) or not hasattr(raw, "__iter__"):
            raise ValueError(f"example {example_id}: {key} must be a list of seconds, got {type(raw).__name__}")
        times = []
        for i, t in enumerate(raw):
            if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)):
                raise ValueError(f"example {example_id}: {key}[{i}] = {t!r} is not a number of seconds")
            if not math.isfinite(t) or t < 0:
                raise ValueError(f"example {example_id}: {key}[{i}] = {t!r} is not a time >= 0 s")
            times.append(float(t))
        count = _count_in(turns, token)
        if count != len(times):
            raise ValueError(f"example {example_id}: {count} {token} placeholders but {len(times)} {key}")
        for first in _window_starts(turns, token):
            if times[first] > times[first + 1]:
                raise ValueError(f"example {example_id}: {key}[{first}:{first + 2}] = {times[first:first + 2]} is "
                                 "a window that starts after it ends")
        result.append(times)
    return result[0], result[1]


def _window_starts(turns, token: str) -> list[int]:
    """Indices k where placeholder k and k + 1 are written as one window, "<P> to <P>" (reading order)."""
    pattern = re.compile(re.escape(token) + r"\s+to\s+" + re.escape(token))
    starts, seen = [], 0
    for turn in turns:
        for text in turn:
            if not text:
                continue
            for match in pattern.finditer(text):
                starts.append(seen + text[:match.start()].count(token))
            seen += text.count(token)
    return starts


def _count_in(turns, token: str) -> int:
    """Occurrences of `token` in the turns' texts (both roles: the k-th one, wherever it is, takes time k)."""
    return sum(text.count(token) for turn in turns for text in turn if text)


def _encode_turns(turns, tokenizer: MomentorTokenizer, num_frames: int, example_id: Any,
                  system_prompt: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per turn: (ids, supervised flags); turn 0 starts with <s> and holds the expanded video span."""
    per_turn = [([], []) for _ in turns]
    per_turn[0][0].append(tokenizer.bos_id)
    per_turn[0][1].append(False)
    for piece in conversation.prompt_pieces(turns, system_prompt):
        ids = tokenizer.encode(piece.text, add_bos=False, continues_text=piece.continues_text)
        per_turn[piece.turn][0].extend(ids)
        per_turn[piece.turn][1].extend([piece.supervised] * len(ids))
    first_ids, first_flags = per_turn[0]
    if first_ids.count(tokenizer.video_token_id) != 1:
        raise ValueError(f"example {example_id}: expected one {constants.VIDEO_TOKEN} in the first turn")
    at = first_ids.index(tokenizer.video_token_id)
    span = video_span_ids(tokenizer, num_frames).tolist()
    per_turn[0] = (first_ids[:at] + span + first_ids[at + 1:], first_flags[:at] + [False] * len(span)
                   + first_flags[at + 1:])
    return [(np.asarray(ids, np.int32), np.asarray(flags, bool)) for ids, flags in per_turn]


def _place_times(ids: np.ndarray, tokenizer: MomentorTokenizer, input_times: Sequence[float],
                 output_times: Sequence[float], duration: float, example_id: Any) -> np.ndarray:
    if not duration > 0 or not math.isfinite(duration):
        raise ValueError(f"example {example_id}: video duration must be > 0, got {duration}")
    limit = duration + past_end_tolerance(duration)
    for key, seconds in (("temporal_input_times", input_times), ("temporal_output_times", output_times)):
        late = [i for i, t in enumerate(seconds) if t > limit]
        if late:
            raise ValueError(f"example {example_id}: {key}[{late[0]}] = {seconds[late[0]]} s is past the video's end "
                             f"({duration:g} s, tolerance {past_end_tolerance(duration):g} s)")
    times = np.zeros(ids.shape, np.float32)
    for token_id, seconds in ((tokenizer.temp_input_id, input_times), (tokenizer.temp_output_id, output_times)):
        where = np.flatnonzero(ids == token_id)
        if len(where) != len(seconds):  # only reachable if a placeholder was spelled inside another token
            raise ValueError(f"example {example_id}: {len(where)} placeholder tokens but {len(seconds)} times")
        times[where] = np.clip(np.asarray(seconds, np.float64) / duration, 0.0, 1.0)
    return times


def _fixed_length(ids: np.ndarray, supervised: np.ndarray, times: np.ndarray, tokenizer: MomentorTokenizer,
                  max_length: int) -> dict[str, np.ndarray]:
    n = len(ids)
    input_ids = np.zeros(max_length, np.int32)
    input_ids[:n] = ids
    loss_mask = np.zeros(max_length, np.float32)
    loss_mask[:n - 1] = supervised[1:]
    targets = np.zeros(max_length, np.int32)
    targets[:n - 1] = np.where(supervised[1:], ids[1:], 0)
    placeholder_times = np.zeros(max_length, np.float32)
    placeholder_times[:n] = times
    target_times = np.zeros(max_length, np.float32)
    target_times[:n - 1] = np.where(targets[:n - 1] == tokenizer.temp_output_id, times[1:], 0.0)
    segment_ids = np.zeros(max_length, np.int32)
    segment_ids[:n] = 1
    positions = np.zeros(max_length, np.int32)
    positions[:n] = np.arange(n)
    return {"input_ids": input_ids, "targets": targets, "loss_mask": loss_mask, "segment_ids": segment_ids,
            "positions": positions, "placeholder_times": placeholder_times, "target_times": target_times}
