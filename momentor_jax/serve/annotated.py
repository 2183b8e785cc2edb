"""Ground truth and example questions for the web demo, from grounding annotations (`--annotations`).

    GroundTruth.read(path, video_dir=None)     any format `evaluate` reads (evaluation/annotations.py, checked the
                                               same way); a video is known by its id, the file name without extension
    ground_truth.events(video_name) -> [Event(query, windows)]       the video's annotated queries (may be [])
    ground_truth.matching(video_name, question) -> Event | None      the query the question asks about: the question
                                               is the query's grounding question (as `evaluate` asks it) or holds
                                               the query's words
    ground_truth.examples(count) -> [(video path, question)]         one per video, in file order, for the videos
                                               found in video_dir (.mp4 etc.)
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional

from momentor_jax import fileio


@dataclasses.dataclass(frozen=True)
class Event:
    query: str
    windows: tuple    # ((start, end), ...) in seconds


def video_name(path: str) -> str:
    """The id a video file is annotated under: its file name without the extension."""
    return os.path.splitext(os.path.basename(path))[0]


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


class GroundTruth:
    def __init__(self, events: dict, video_dir: Optional[str] = None, source: str = ""):
        self._events = events          # {video id: [Event]}
        self.video_dir = video_dir
        self.source = source

    @classmethod
    def read(cls, path: str, video_dir: Optional[str] = None) -> "GroundTruth":
        """Raises annotations.AnnotationError listing every bad record (file and line)."""
        from momentor_jax.evaluation import annotations  # noqa: PLC0415
        events: dict = {}
        for record in annotations.read_grounding(path).records:
            windows = tuple((float(s), float(e)) for s, e in record["relevant_windows"])
            events.setdefault(str(record["vid"]), []).append(Event(str(record["query"]), windows))
        return cls(events, video_dir, path)

    def __len__(self) -> int:
        return sum(len(v) for v in self._events.values())

    def events(self, name: str) -> list:
        return list(self._events.get(name, ()))

    def matching(self, name: str, question: str) -> Optional[Event]:
        from momentor_jax.evaluation.tasks import grounding_question  # noqa: PLC0415
        asked = _words(question)
        for event in self._events.get(name, ()):
            query = _words(event.query)
            if asked == _words(grounding_question(event.query)) or (query and query in asked):
                return event
        return None

    def video_path(self, name: str) -> Optional[str]:
        """The video file of an annotated id in video_dir, or None."""
        from momentor_jax.data.video import VIDEO_EXTENSIONS  # noqa: PLC0415
        if not self.video_dir:
            return None
        for extension in VIDEO_EXTENSIONS:
            path = fileio.join(self.video_dir, name + extension)
            if os.path.isfile(path):
                return path
        return None

    def examples(self, count: int) -> list:
        """[(video path, grounding question)]: the first annotated query of each of the first `count` videos found."""
        from momentor_jax.evaluation.tasks import grounding_question  # noqa: PLC0415
        found = []
        for name, events in self._events.items():
            if len(found) == count:
                break
            path = self.video_path(name)
            if path:
                found.append((path, grounding_question(events[0].query)))
        return found
