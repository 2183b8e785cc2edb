"""Synthetic videos with known hard cuts, events and moving objects: the ground truth the data generation engine
(momentor_jax/datagen) is scored against.

A video is a run of events, an event a run of 1..MAX_SHOTS_PER_EVENT shots. Every frame of a shot is a flat
background of colour HSV(event hue, BACKGROUND_SATURATION, value), the value alternating between DARK and LIGHT
from one shot to the next over the whole video, so every cut changes luma by ~127 levels and a cut between events
also changes hue (neighbouring events' hues are >= MIN_HUE_STEP apart). Shots of one event therefore share their
hue and differ in brightness: features that see hue but not brightness (`hue_features`) group them into events,
while PySceneDetect's content detector sees every cut.

Movers: shapes from synthetic.SHAPES (saturated colours, far from the pale backgrounds) that move in a straight line
at constant speed, each in its own horizontal band (they never overlap), visible on frames [first, last] (inclusive,
crossing cuts freely); `box(k)` is the shape's box in frame k as fractions of the frame (x0, y0, x1, y1).

Frame k is at time k / fps; a cut at frame k means frame k is the first frame of a new shot.
Files (`make_dataset`): videos/<id>.mp4 and synthetic_cuts.json = {video_id: spec.to_json()}.
"""
from __future__ import annotations

import colorsys
import dataclasses
import json
import os
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from momentor_jax.data import synthetic

BACKGROUND_SATURATION = 0.4
DARK, LIGHT = 0.35, 0.85
MIN_HUE_STEP = 80.0  # degrees between neighbouring events' hues
MAX_SHOTS_PER_EVENT = 3
SHOT_SECONDS = (1.0, 2.5)
MOVER_RADIUS = 0.12
MOVER_BANDS = ((0.18, 0.3), (0.7, 0.82))  # centre heights of the first and second mover
TRUTH_FILE = "synthetic_cuts.json"


@dataclasses.dataclass(frozen=True)
class Mover:
    kind: synthetic.ShapeKind
    first: int          # first and last frame (inclusive) on which the shape is drawn
    last: int
    start_xy: tuple     # centre at `first` and at `last`, fractions of the frame side
    end_xy: tuple

    def center(self, k: int) -> tuple:
        a = 0.0 if self.last == self.first else (k - self.first) / (self.last - self.first)
        return tuple(s + a * (e - s) for s, e in zip(self.start_xy, self.end_xy))

    def box(self, k: int) -> Optional[tuple]:
        if not self.first <= k <= self.last:
            return None
        cx, cy = self.center(k)
        return (cx - MOVER_RADIUS, cy - MOVER_RADIUS, cx + MOVER_RADIUS, cy + MOVER_RADIUS)

    def to_json(self) -> dict:
        return {"name": self.kind.name, "first": self.first, "last": self.last, "start_xy": list(self.start_xy),
                "end_xy": list(self.end_xy)}


@dataclasses.dataclass(frozen=True)
class CutVideoSpec:
    video_id: str
    fps: int
    size: int
    shot_starts: tuple   # first frame of every shot (0 first); the cuts are shot_starts[1:]
    shot_values: tuple   # HSV value of every shot's background
    event_starts: tuple  # first frame of every event (0 first), a subset of shot_starts
    event_hues: tuple    # degrees
    num_frames: int
    movers: tuple = ()

    @property
    def cuts(self) -> list:
        return list(self.shot_starts[1:])

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    def event_spans(self) -> list:
        """[(start, end)] in seconds: an event covers its frames' times [first / fps, (last + 1) / fps)."""
        ends = list(self.event_starts[1:]) + [self.num_frames]
        return [(s / self.fps, e / self.fps) for s, e in zip(self.event_starts, ends)]

    def mover_span(self, mover: Mover) -> tuple:
        return mover.first / self.fps, (mover.last + 1) / self.fps

    def to_json(self) -> dict:
        return {"fps": self.fps, "size": self.size, "num_frames": self.num_frames,
                "shot_starts": list(self.shot_starts), "shot_values": list(self.shot_values),
                "event_starts": list(self.event_starts), "event_hues": list(self.event_hues),
                "movers": [m.to_json() for m in self.movers]}

    @classmethod
    def from_json(cls, video_id: str, d: dict) -> "CutVideoSpec":
        movers = tuple(Mover(synthetic.SHAPES_BY_NAME[m["name"]], m["first"], m["last"], tuple(m["start_xy"]),
                             tuple(m["end_xy"])) for m in d["movers"])
        return cls(video_id, d["fps"], d["size"], tuple(d["shot_starts"]), tuple(d["shot_values"]),
                   tuple(d["event_starts"]), tuple(d["event_hues"]), d["num_frames"], movers)


def sample_cut_video(seed: int, number: int, size: int = 64, fps: int = 10, num_events: tuple = (3, 5),
                     num_movers: tuple = (1, len(MOVER_BANDS))) -> CutVideoSpec:
    """The `number`-th cut video of data set `seed`."""
    rng = np.random.default_rng([seed, number, 7])
    video_id = synthetic._video_id(rng)
    shot_starts, shot_values, event_starts, event_hues = [], [], [], []
    frame, hue = 0, float(rng.uniform(0, 360))
    for e in range(int(rng.integers(num_events[0], num_events[1] + 1))):
        if e:
            hue = (hue + float(rng.uniform(MIN_HUE_STEP, 360 - MIN_HUE_STEP))) % 360
        event_starts.append(frame)
        event_hues.append(round(hue, 1))
        for _ in range(int(rng.integers(1, MAX_SHOTS_PER_EVENT + 1))):
            shot_starts.append(frame)
            shot_values.append(DARK if len(shot_values) % 2 == 0 else LIGHT)
            frame += int(round(float(rng.uniform(*SHOT_SECONDS)) * fps))
    frame = max(frame, 6 * fps)  # the last shot runs on, so a mover of >= 3 s fits with a second to spare each side
    movers = []
    kinds = rng.permutation(len(synthetic.SHAPES))
    for i in range(int(rng.integers(num_movers[0], num_movers[1] + 1))):
        length = int(rng.integers(3 * fps, min(8 * fps, frame - 2 * fps)))
        first = int(rng.integers(fps, frame - length - fps + 1))
        band = MOVER_BANDS[i]  # one horizontal band each, so movers never hide one another
        start_xy, end_xy = ((round(float(rng.uniform(0.2, 0.8)), 3), round(float(rng.uniform(*band)), 3))
                            for _ in range(2))
        movers.append(Mover(synthetic.SHAPES[int(kinds[i])], first, first + length - 1, start_xy, end_xy))
    return CutVideoSpec(video_id, fps, size, tuple(shot_starts), tuple(shot_values), tuple(event_starts),
                        tuple(event_hues), frame, tuple(movers))


def _shot_of(spec: CutVideoSpec, k: int) -> int:
    return int(np.searchsorted(spec.shot_starts, k, side="right")) - 1


def background(spec: CutVideoSpec, k: int) -> tuple:
    shot = _shot_of(spec, k)
    event = int(np.searchsorted(spec.event_starts, spec.shot_starts[shot], side="right")) - 1
    r, g, b = colorsys.hsv_to_rgb(spec.event_hues[event] / 360, BACKGROUND_SATURATION, spec.shot_values[shot])
    return round(255 * r), round(255 * g), round(255 * b)


def render_cut_frame(spec: CutVideoSpec, k: int) -> np.ndarray:
    """uint8 [size, size, 3]: frame k."""
    image = Image.new("RGB", (spec.size, spec.size), background(spec, k))
    draw = ImageDraw.Draw(image)
    for mover in spec.movers:
        if mover.first <= k <= mover.last:
            cx, cy = mover.center(k)
            synthetic._draw_shape(draw, mover.kind, cx * spec.size, cy * spec.size, MOVER_RADIUS * spec.size)
    return np.asarray(image)


def write_cut_video(spec: CutVideoSpec, path: str, codec: Optional[str] = None) -> None:
    frames = (render_cut_frame(spec, k) for k in range(spec.num_frames))
    synthetic.encode_video(frames, spec.fps, spec.size, path, codec)


def hue_features(frames: np.ndarray) -> np.ndarray:
    """float32 [N, 2]: per frame, the saturation-weighted mean of (cos hue, sin hue). Blind to brightness, so it
    groups this module's shots into their events (same hue: cosine 1; neighbouring events: <= cos(MIN_HUE_STEP));
    a hand-made stand-in for a trained frame encoder."""
    hsv = np.stack([np.asarray(Image.fromarray(f).convert("HSV")) for f in frames]).astype(np.float32)
    angle = hsv[..., 0] / 256 * 2 * np.pi
    weight = hsv[..., 1] / 255
    return np.stack([(weight * np.cos(angle)).mean(axis=(1, 2)), (weight * np.sin(angle)).mean(axis=(1, 2))],
                    axis=1).astype(np.float32)


def make_dataset(out_dir: str, num_videos: int, seed: int = 0, size: int = 64, fps: int = 10,
                 progress: bool = True) -> dict:
    """Renders `num_videos` cut videos into out_dir/videos and writes their truth; returns {video_id: spec}."""
    specs, seen, number = {}, set(), 0
    while len(specs) < num_videos:
        spec = sample_cut_video(seed, number, size=size, fps=fps)
        number += 1
        if spec.video_id not in seen:
            seen.add(spec.video_id)
            specs[spec.video_id] = spec
    video_dir = os.path.join(out_dir, "videos")
    os.makedirs(video_dir, exist_ok=True)
    codec = synthetic.video_codec()
    for spec in tqdm(specs.values(), desc="rendering cut videos", disable=not progress):
        path = os.path.join(video_dir, f"{spec.video_id}.mp4")
        if not os.path.exists(path):
            write_cut_video(spec, path, codec)
    synthetic._write_json(os.path.join(out_dir, TRUTH_FILE), {v: s.to_json() for v, s in specs.items()})
    return specs


def load_specs(out_dir: str) -> dict:
    with open(os.path.join(out_dir, TRUTH_FILE)) as f:
        return {v: CutVideoSpec.from_json(v, d) for v, d in json.load(f).items()}
