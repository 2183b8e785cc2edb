"""Events: adjacent shots merged by the similarity of their frame features (pure numpy).

    shot_features(shots, sample_times, features) -> float32 [num_shots, D]
        the mean of the features of the samples inside each shot [start, end); a shot holding no sample (shorter
        than the sampling interval) takes the sample nearest to its middle.
    merge_shots(shots, shot_features, config) -> [Event]
        left to right, a shot joins the current event when the cosine similarity of its feature with the event's
        mean feature is >= config.threshold, else it starts a new event; then every event shorter than
        config.min_event_seconds is merged into the more similar of its neighbours (shortest first) until none
        is left or one event remains.
Event: start, end (seconds), shots (indices into `shots`), feature (unit-norm mean of its shots' features).
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class EventConfig:
    threshold: float = 0.85          # cosine similarity to join the current event
    min_event_seconds: float = 2.0

    def __post_init__(self):
        if not -1.0 <= self.threshold <= 1.0 or self.min_event_seconds < 0:
            raise ValueError(f"EventConfig: need -1 <= threshold <= 1 and min_event_seconds >= 0; got {self}")


@dataclasses.dataclass
class Event:
    start: float
    end: float
    shots: list
    feature: np.ndarray

    @property
    def span(self) -> list:
        return [round(self.start, 2), round(self.end, 2)]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def shot_features(shots: list, sample_times: np.ndarray, features: np.ndarray) -> np.ndarray:
    if len(sample_times) != len(features) or not len(features):
        raise ValueError(f"need one feature per sample time and at least one sample; got {len(sample_times)} times "
                         f"and {len(features)} features")
    sample_times = np.asarray(sample_times)
    out = []
    for start, end in shots:
        inside = (sample_times >= start) & (sample_times < end)
        if inside.any():
            out.append(features[inside].mean(axis=0))
        else:
            out.append(features[int(np.argmin(np.abs(sample_times - (start + end) / 2)))])
    return np.stack(out).astype(np.float32)


def _event(shots: list, indices: list, features: np.ndarray) -> Event:
    return Event(shots[indices[0]][0], shots[indices[-1]][1], list(indices), _unit(features[indices].mean(axis=0)))


def merge_shots(shots: list, features: np.ndarray, config: EventConfig = EventConfig()) -> list:
    if len(shots) != len(features):
        raise ValueError(f"{len(shots)} shots but {len(features)} shot features")
    if not shots:
        return []
    features = _unit(features)
    groups = [[0]]
    for i in range(1, len(shots)):
        mean = _unit(features[groups[-1]].mean(axis=0))
        if float(mean @ features[i]) >= config.threshold:
            groups[-1].append(i)
        else:
            groups.append([i])
    events = [_event(shots, g, features) for g in groups]
    while len(events) > 1:
        lengths = [e.end - e.start for e in events]
        short = int(np.argmin(lengths))
        if lengths[short] >= config.min_event_seconds:
            break
        neighbours = [j for j in (short - 1, short + 1) if 0 <= j < len(events)]
        other = max(neighbours, key=lambda j: float(events[j].feature @ events[short].feature))
        a, b = sorted((short, other))
        events[a:b + 1] = [_event(shots, events[a].shots + events[b].shots, features)]
    return events
