"""Many questions over many videos: each video decoded and encoded once, the questions answered in fixed-shape batches.

    Item(key, video, question)                      `video`: whatever the caller's load_video takes (a path, an id)
    answer_items(generator, items, load_video, batch_size, done=()) -> iterator of [Result] per batch

Items are taken grouped by video, videos in order of first appearance, so that a video's questions share one
encoding, which is dropped after its last question. Keys in `done` are skipped without moving the others between
batches: a run interrupted between batches and resumed with the finished keys answers the rest in the batches (and
so with the numerics) of an uninterrupted run. load_video(video) -> (frames [M, S, S, 3] uint8 or features [M, F],
duration in seconds); raising `VideoUnavailable` turns every item of that video into a Result with `error` set (the
run goes on); any other exception propagates.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Hashable, Iterable, Iterator, Optional, Sequence

import numpy as np


class VideoUnavailable(Exception):
    """A video that cannot be found or decoded; the message names it."""


@dataclasses.dataclass(frozen=True)
class Item:
    key: Hashable
    video: Hashable
    question: str


@dataclasses.dataclass
class Result:
    item: Item
    answer: Any = None                       # generate.Answer, None when the video was unavailable
    video_duration: Optional[float] = None   # seconds, as decoded (the answer's time axis)
    error: Optional[str] = None


def unavailable_on(load_video: Callable[[Any], tuple], *errors: type) -> Callable[[Any], tuple]:
    """`load_video` with the given exceptions turned into VideoUnavailable (message kept)."""
    def load(video):
        try:
            return load_video(video)
        except errors as e:
            raise VideoUnavailable(str(e)) from e
    return load


def grouped(items: Sequence[Item]) -> list[Item]:
    """Items grouped by video (stable), videos in order of first appearance."""
    order: dict = {}
    for item in items:
        order.setdefault(item.video, []).append(item)
    return [item for group in order.values() for item in group]


def answer_items(generator, items: Sequence[Item], load_video: Callable[[Any], tuple], batch_size: int,
                 done: Iterable[Hashable] = ()) -> Iterator[list[Result]]:
    """Yields the Results of each batch (in the grouped order; see the module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keys = [item.key for item in items]
    if len(set(keys)) != len(keys):
        raise ValueError("answer_items: item keys must be unique")
    done = set(done)
    todo = [item for item in grouped(items) if item.key not in done]
    left: dict = {}
    for item in todo:
        left[item.video] = left.get(item.video, 0) + 1
    encoded: dict = {}    # video -> (embeddings [1, M, D], duration)
    failed: dict = {}     # video -> error message
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        for video in dict.fromkeys(item.video for item in batch):
            if video in encoded or video in failed:
                continue
            try:
                frames, duration = load_video(video)
            except VideoUnavailable as e:
                failed[video] = str(e)
                continue
            encoded[video] = (generator.encode(np.asarray(frames)[None]), float(duration))
        ready = [item for item in batch if item.video in encoded]
        answers = {}
        if ready:
            import jax.numpy as jnp  # noqa: PLC0415
            embeds = jnp.concatenate([encoded[item.video][0] for item in ready])
            durations = [encoded[item.video][1] for item in ready]
            for item, answer in zip(ready, generator.answer_encoded([i.question for i in ready], embeds, durations,
                                                                    batch_size=batch_size)):
                answers[item.key] = answer
        results = []
        for item in batch:
            if item.video in failed:
                results.append(Result(item, error=failed[item.video]))
            else:
                results.append(Result(item, answers[item.key], encoded[item.video][1]))
            left[item.video] -= 1
            if not left[item.video]:
                encoded.pop(item.video, None)
        yield results
