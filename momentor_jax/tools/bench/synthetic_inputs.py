"""In-memory inputs for the comparison suites: a full training batch and a generation prompt, both with a video.

Row layout (no padding, so both sides see the same tokens without attention masks):
    <s> text <vid_start> M x <vid_patch> <vid_end> text with <TEMP-INPUT> placeholders | answer text with
    <TEMP-OUTPUT> placeholders
The answer half is supervised (`loss_mask`); the <TEMP-OUTPUT> targets get soft temporal labels at `target_times`.
"""
from __future__ import annotations

import numpy as np

from momentor_jax import constants
from momentor_jax.models.config import MomentorConfig

BOS_ID = 1
FIRST_TEXT_ID = 3  # after <unk>, <s>, </s>
LEADING_TEXT = 8


def _video_span(config: MomentorConfig) -> list:
    special = constants.special_token_ids(config.llm.vocab_size)
    return [special["vid_start"]] + [special["vid_patch"]] * config.num_frames + [special["vid_end"]]


def _text(rng, count: int, config: MomentorConfig) -> np.ndarray:
    return rng.integers(FIRST_TEXT_ID, config.llm.vocab_size - constants.NUM_ADDED_TOKENS, count)


def frames(config: MomentorConfig, batch_size: int, seed: int) -> np.ndarray:
    size = config.vision.image_size
    rng = np.random.default_rng(seed + 1)
    return rng.integers(0, 256, (batch_size, config.num_frames, size, size, 3), dtype=np.uint8)


def training_batch(config: MomentorConfig, batch_size: int, length: int, seed: int = 0,
                   placeholders: int = 4) -> dict:
    """A batch per constants.BATCH_KEYS with frames; `placeholders` <TEMP-INPUT> and <TEMP-OUTPUT> per row."""
    special = constants.special_token_ids(config.llm.vocab_size)
    head = [BOS_ID] + [0] * LEADING_TEXT + _video_span(config)
    answer_start = max(len(head) + placeholders + 1, length // 2)
    if answer_start + placeholders + 1 >= length:
        raise ValueError(f"length {length} is too short for a row with {config.num_frames} frames")
    rng = np.random.default_rng(seed)
    input_ids = np.zeros((batch_size, length), np.int32)
    placeholder_times = np.zeros((batch_size, length), np.float32)
    for row in range(batch_size):
        ids = np.concatenate([head, _text(rng, length - len(head), config)]).astype(np.int32)
        ids[1:1 + LEADING_TEXT] = _text(rng, LEADING_TEXT, config)
        question = rng.choice(np.arange(len(head), answer_start), placeholders, replace=False)
        answer = rng.choice(np.arange(answer_start + 1, length), placeholders, replace=False)
        ids[question], ids[answer] = special["temp_input"], special["temp_output"]
        placeholder_times[row, question] = rng.uniform(0.0, 1.0, placeholders)
        placeholder_times[row, answer] = rng.uniform(0.0, 1.0, placeholders)
        input_ids[row] = ids
    targets = np.zeros_like(input_ids)
    targets[:, :-1] = input_ids[:, 1:]
    loss_mask = np.zeros((batch_size, length), np.float32)
    loss_mask[:, answer_start:length - 1] = 1.0
    target_times = np.zeros_like(placeholder_times)
    target_times[:, :-1] = np.where(targets[:, :-1] == special["temp_output"], placeholder_times[:, 1:], 0.0)
    return {
        "input_ids": input_ids, "targets": targets, "loss_mask": loss_mask,
        "segment_ids": np.ones((batch_size, length), np.int32),
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch_size, length)).copy(),
        "placeholder_times": placeholder_times, "target_times": target_times,
        "durations": np.full((batch_size,), 60.0, np.float32),
        "frames": frames(config, batch_size, seed),
    }


def generation_prompt(config: MomentorConfig, batch_size: int, question_tokens: int = 32, seed: int = 0) -> dict:
    """The same question prompt in every row (one <TEMP-INPUT> at time 0.25), each row with its own video:
    {'input_ids', 'placeholder_times' [B, L], 'frames' [B, M, H, W, 3]}."""
    special = constants.special_token_ids(config.llm.vocab_size)
    rng = np.random.default_rng(seed)
    ids = np.concatenate([[BOS_ID], _text(rng, LEADING_TEXT, config), _video_span(config),
                          _text(rng, question_tokens, config)]).astype(np.int32)
    times = np.zeros(ids.shape, np.float32)
    placeholder = len(ids) - question_tokens // 2
    ids[placeholder], times[placeholder] = special["temp_input"], 0.25
    return {"input_ids": np.repeat(ids[None], batch_size, axis=0),
            "placeholder_times": np.repeat(times[None], batch_size, axis=0),
            "frames": frames(config, batch_size, seed)}
