"""Synthetic videos with known events, and annotations for them in the raw Moment-10M / GESM / grounding formats.

Each video is a plain dark background on which 1-2 events happen: a coloured shape (8 kinds, distinct within a
video) is visible, gently bobbing, during a known interval [start, end] (a frame at time t = k / fps shows it iff
start <= t <= end). Events of a video sit in distinct quadrants, so overlapping events never hide each other.
Everything is a function of (seed, video number), so a seed always gives the same data set.

Files written under the output directory:
    videos/<id>.mp4                 h264 (mpeg4 when this PyAV has no h264 encoder), `size` x `size` at `fps`
    moment10m_train.json            {video_id: {data_type: [{id, data_type, conversations, variables, score}]}}
    moment10m_heldout.json          the same for the held-out videos
    gesm_train.json, gesm_heldout.json   {video_id: {timestamps: [[s, e], ...], captions: [...]}}
    grounding_heldout.jsonl         {"qid", "vid", "query", "duration", "relevant_windows": [[s, e]]} per event
    grounding_train.jsonl           the same for the training videos (what a query-blind baseline may be fit on)
    synthetic_videos.json           ground truth: {video_id: {duration, fps, size, num_frames, split, events}}
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import string
from typing import Iterable, Optional

import av
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from momentor_jax.data import conversation

BACKGROUND = (28, 28, 28)


@dataclasses.dataclass(frozen=True)
class ShapeKind:
    shape: str
    colour: str
    rgb: tuple

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def article(self) -> str:
        return "an" if self.colour[0] in "aeiou" else "a"


SHAPES = (
    ShapeKind("circle", "red", (225, 35, 35)),
    ShapeKind("square", "blue", (40, 80, 235)),
    ShapeKind("triangle", "green", (35, 195, 70)),
    ShapeKind("star", "yellow", (240, 220, 40)),
    ShapeKind("diamond", "purple", (155, 60, 215)),
    ShapeKind("cross", "orange", (250, 140, 25)),
    ShapeKind("hexagon", "cyan", (40, 215, 225)),
    ShapeKind("pentagon", "white", (240, 240, 240)),
)
SHAPES_BY_NAME = {kind.name: kind for kind in SHAPES}

# Quadrant centres as fractions of the frame side; the shape radius and its bobbing, too.
SLOTS = ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))
RADIUS = 0.19
BOB_AMPLITUDE = 0.03
BOB_PERIOD_SECONDS = 3.0
# Events per video and event length as a fraction of the video: short enough that no single fixed window
# grounds them well (the demo's fixed-window baseline), long enough to span several of 32 sampled frames.
MAX_EVENTS = 2
EVENT_FRACTION = (0.10, 0.30)

# Raw Moment-10M score thresholds (public scripts/convert_data.py): every synthetic score lies above its threshold.
THRESHOLDS = {
    "segment_caption_data": 0.145, "instance_segment_caption_data": 0.146, "instance_caption_data": 0.126,
    "appearance_data": 0.129, "qa_data": 0.177, "instance_qa_data": 0.159, "cross_segment_qa_data": 0.211,
    "hypo_scene_data": 0.888, "comp_ret_data": 0.195, "segment_locate_data": 1.067,
}
ID_ALPHABET = string.ascii_letters + string.digits + "_-"
ID_FIRST = string.ascii_letters + string.digits  # no leading '-', so ids never read as command-line flags


@dataclasses.dataclass(frozen=True)
class Event:
    kind: ShapeKind
    start: float
    end: float
    slot: int

    def visible(self, t: float) -> bool:
        return self.start - 1e-9 <= t <= self.end + 1e-9

    def center(self, t: float, size: int) -> tuple:
        """Shape centre in pixels at time t (inside the shape for every kind)."""
        cx, cy = SLOTS[self.slot]
        dy = BOB_AMPLITUDE * math.sin(2 * math.pi * (t - self.start) / BOB_PERIOD_SECONDS)
        return cx * size, (cy + dy) * size

    def caption(self) -> str:
        return f"{self.kind.article.capitalize()} {self.kind.name} appears."

    def to_json(self) -> dict:
        return {"name": self.kind.name, "shape": self.kind.shape, "colour": self.kind.colour,
                "rgb": list(self.kind.rgb), "start": self.start, "end": self.end, "slot": self.slot}


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    video_id: str
    duration: float
    fps: int
    size: int
    events: tuple

    @property
    def num_frames(self) -> int:
        return int(round(self.duration * self.fps))


# ------------------------------------------------------------------------------------------------ sampling


def _video_id(rng: np.random.Generator) -> str:
    first = ID_FIRST[rng.integers(len(ID_FIRST))]
    return first + "".join(ID_ALPHABET[i] for i in rng.integers(len(ID_ALPHABET), size=10))


def sample_video(seed: int, number: int, size: int = 64, fps: int = 8, min_duration: int = 12,
                 max_duration: int = 30, max_events: int = MAX_EVENTS) -> VideoSpec:
    """The `number`-th video of data set `seed`: whole-second duration, 1..max_events events, times on a 0.1 s
    grid, each event EVENT_FRACTION of the video long (at least 2 s) and placed uniformly."""
    if not 1 <= max_events <= len(SLOTS):
        raise ValueError(f"max_events must lie in [1, {len(SLOTS)}] (one quadrant per event), got {max_events}")
    rng = np.random.default_rng([seed, number])
    video_id = _video_id(rng)
    duration = float(rng.integers(min_duration, max_duration + 1))
    count = int(rng.integers(1, max_events + 1))
    kinds = rng.choice(len(SHAPES), size=count, replace=False)
    slots = rng.permutation(len(SLOTS))[:count]
    events = []
    for kind, slot in zip(kinds, slots):
        length = max(2.0, float(rng.uniform(*EVENT_FRACTION)) * duration)
        start = float(rng.uniform(0.5, duration - length - 0.5))
        start, end = round(start, 1), round(start + length, 1)
        events.append(Event(SHAPES[int(kind)], start, end, int(slot)))
    events.sort(key=lambda e: (e.start, e.end))
    return VideoSpec(video_id, duration, fps, size, tuple(events))


def sample_videos(seed: int, num_videos: int, **kwargs) -> list:
    """`num_videos` specs with distinct ids."""
    specs, seen = [], set()
    number = 0
    while len(specs) < num_videos:
        spec = sample_video(seed, number, **kwargs)
        number += 1
        if spec.video_id not in seen:
            seen.add(spec.video_id)
            specs.append(spec)
    return specs


# ------------------------------------------------------------------------------------------------ rendering


def _regular_polygon(cx, cy, r, sides, rotation=-math.pi / 2, inner: Optional[float] = None) -> list:
    points, steps = [], sides * (2 if inner else 1)
    for i in range(steps):
        radius = r if not inner or i % 2 == 0 else r * inner
        angle = rotation + 2 * math.pi * i / steps
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _draw_shape(draw: ImageDraw.ImageDraw, kind: ShapeKind, cx: float, cy: float, r: float) -> None:
    fill = kind.rgb
    if kind.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif kind.shape == "square":
        h = 0.85 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif kind.shape == "triangle":
        draw.polygon(_regular_polygon(cx, cy + 0.15 * r, 1.1 * r, 3), fill=fill)
    elif kind.shape == "star":
        draw.polygon(_regular_polygon(cx, cy, 1.1 * r, 5, inner=0.5), fill=fill)
    elif kind.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)], fill=fill)
    elif kind.shape == "cross":
        a = 0.38 * r
        draw.rectangle((cx - r, cy - a, cx + r, cy + a), fill=fill)
        draw.rectangle((cx - a, cy - r, cx + a, cy + r), fill=fill)
    elif kind.shape == "hexagon":
        draw.polygon(_regular_polygon(cx, cy, r, 6, rotation=0.0), fill=fill)
    elif kind.shape == "pentagon":
        draw.polygon(_regular_polygon(cx, cy, r, 5), fill=fill)
    else:
        raise ValueError(f"unknown shape {kind.shape}")


def render_frame(spec: VideoSpec, t: float) -> np.ndarray:
    """uint8 [size, size, 3]: the frame at time t."""
    image = Image.new("RGB", (spec.size, spec.size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for event in spec.events:
        if event.visible(t):
            cx, cy = event.center(t, spec.size)
            _draw_shape(draw, event.kind, cx, cy, RADIUS * spec.size)
    return np.asarray(image)


def video_codec() -> str:
    """h264 when this PyAV can encode it, else mpeg4."""
    for name in ("libx264", "h264"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 (UnknownCodecError and, in some builds, ValueError)
            continue
    return "mpeg4"


def write_video(spec: VideoSpec, path: str, codec: Optional[str] = None) -> None:
    """Encodes the video to `path` (mp4) atomically: a temp file, then a rename."""
    frames = (render_frame(spec, k / spec.fps) for k in range(spec.num_frames))
    encode_video(frames, spec.fps, spec.size, path, codec)


def encode_video(frames: Iterable[np.ndarray], fps: int, size: int, path: str, codec: Optional[str] = None) -> None:
    """Encodes uint8 [size, size, 3] frames (frame k at k / fps) to `path` (mp4) atomically."""
    if size % 2:
        raise ValueError(f"frame size must be even for yuv420p, got {size}")
    codec = codec or video_codec()
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width = stream.height = size
            stream.pix_fmt = "yuv420p"
            stream.codec_context.gop_size = 2 * fps  # a keyframe every 2 s, so seeking has somewhere to land
            if "264" in codec:
                stream.options = {"crf": "16", "preset": "veryfast"}
            else:
                stream.bit_rate = 400_000
            for k, pixels in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame.pts = k
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ------------------------------------------------------------------------------------------------ annotations


def _score(rng: np.random.Generator, data_type: str) -> float:
    return round(THRESHOLDS[data_type] + float(rng.uniform(0.05, 0.5)), 4)


def _item(video_id: str, data_type: str, conversations, variables: dict, rng, score_key: str) -> dict:
    return {"id": video_id, "data_type": data_type, "conversations": conversations, "variables": variables,
            score_key: _score(rng, data_type)}


def _pick(rng: np.random.Generator, options: tuple) -> str:
    return options[int(rng.integers(len(options)))]


def moment10m_items(spec: VideoSpec, seed: int) -> dict:
    """{data_type: [items]} for one video: six data types, all times as template variables."""
    rng = np.random.default_rng([seed, 1_000_003, *[ord(c) for c in spec.video_id]])
    vid, out = spec.video_id, {}

    def add(data_type, conversations, variables, score_key):
        out.setdefault(data_type, []).append(_item(vid, data_type, conversations, variables, rng, score_key))

    for e in spec.events:
        name, moment = e.kind.name, [e.start, e.end]
        ask = _pick(rng, ("When does the {n} appear?", "At what time is the {n} visible in the video?",
                          "Find the moment when the {n} shows up.")).format(n=name)
        answer = _pick(rng, ("It appears from {{moment}}.", "The {n} is visible from {{moment}}.")).format(n=name)
        add("segment_locate_data", [{"User": ask, "Assistant": answer}], {"moment": moment}, "match_score")
        add("segment_caption_data",
            {"User": _pick(rng, ("What happens in {SOURCE_CLIP}?", "Describe the video during {SOURCE_CLIP}.")),
             "Assistant": e.caption()},
            {"SOURCE_CLIP": moment}, "clip_similarity")
        add("appearance_data",
            {"User": "When is the {instance_class} visible?",
             "Assistant": "The {instance_class} is visible at {moment}."},
            {"instance_class": name, "moment": [moment]}, "clip_similarity")
        add("instance_qa_data",
            [{"User": "What colour is the shape that appears in {SOURCE_CLIP}?", "Assistant": "It is {content}."}],
            {"SOURCE_CLIP": moment, "content": e.kind.colour}, "match_score")
        t = round((e.start + e.end) / 2, 2)
        cx, cy = e.center(t, spec.size)
        add("instance_caption_data",
            {"User": "What is the object at {click_position}?",
             "Assistant": f"It is {e.kind.article} {{instance_class}}."},
            {"click_position": [t, [round(cx / spec.size, 3), round(cy / spec.size, 3)]], "instance_class": name},
            "clip_similarity")
    add("qa_data",
        {"User": "When are shapes visible in the video?", "Assistant": "Shapes are visible at {moment}."},
        {"moment": [[e.start, e.end] for e in spec.events]}, "match_score")
    return out


def gesm_entry(spec: VideoSpec) -> dict:
    return {"timestamps": [[e.start, e.end] for e in spec.events], "captions": [e.caption() for e in spec.events]}


def grounding_queries(spec: VideoSpec, first_qid: int) -> list:
    return [{"qid": first_qid + i, "vid": spec.video_id, "query": e.caption(), "duration": spec.duration,
             "relevant_windows": [[e.start, e.end]]} for i, e in enumerate(spec.events)]


# ------------------------------------------------------------------------------------------------ data set


def _write_json(path: str, payload) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def make_dataset(out_dir: str, num_videos: int, seed: int = 0, num_heldout: int = 2, size: int = 64, fps: int = 8,
                 min_duration: int = 12, max_duration: int = 30, progress: bool = True) -> dict:
    """Renders the videos and writes every annotation file; returns {"train": [ids], "heldout": [ids], ...}.

    The last `num_heldout` videos are held out. Videos already on disk are not rendered again.
    """
    if not 0 <= num_heldout <= num_videos:
        raise ValueError(f"num_heldout must lie in [0, num_videos={num_videos}], got {num_heldout}")
    specs = sample_videos(seed, num_videos, size=size, fps=fps, min_duration=min_duration,
                          max_duration=max_duration)
    video_dir = os.path.join(out_dir, "videos")
    os.makedirs(video_dir, exist_ok=True)
    codec = video_codec()
    for spec in tqdm(specs, desc="rendering videos", disable=not progress):
        path = os.path.join(video_dir, f"{spec.video_id}.mp4")
        if not os.path.exists(path):
            write_video(spec, path, codec)

    split_at = num_videos - num_heldout
    splits = {"train": specs[:split_at], "heldout": specs[split_at:]}
    truth, num_queries = {}, {}
    for split, group in splits.items():
        _write_json(os.path.join(out_dir, f"moment10m_{split}.json"),
                    {s.video_id: moment10m_items(s, seed) for s in group})
        _write_json(os.path.join(out_dir, f"gesm_{split}.json"), {s.video_id: gesm_entry(s) for s in group})
        queries = []
        for s in group:
            truth[s.video_id] = {"duration": s.duration, "fps": s.fps, "size": s.size, "num_frames": s.num_frames,
                                 "split": split, "events": [e.to_json() for e in s.events]}
            queries.extend(grounding_queries(s, len(queries)))
        with open(os.path.join(out_dir, f"grounding_{split}.jsonl"), "w") as f:
            f.writelines(json.dumps(q) + "\n" for q in queries)
        num_queries[split] = len(queries)
    _write_json(os.path.join(out_dir, "synthetic_videos.json"), truth)
    return {"train": [s.video_id for s in splits["train"]], "heldout": [s.video_id for s in splits["heldout"]],
            "codec": codec, "video_dir": video_dir, "num_queries": num_queries["heldout"],
            "num_train_queries": num_queries["train"]}


def load_specs(out_dir: str) -> dict:
    """The ground truth written by `make_dataset`, as {video_id: VideoSpec}."""
    with open(os.path.join(out_dir, "synthetic_videos.json")) as f:
        truth = json.load(f)
    return {vid: VideoSpec(vid, v["duration"], v["fps"], v["size"],
                           tuple(Event(SHAPES_BY_NAME[e["name"]], e["start"], e["end"], e["slot"])
                                 for e in v["events"]))
            for vid, v in truth.items()}


def tokenizer_texts(num_sentences: int = 400, seed: int = 0) -> list[str]:
    """Deterministic English-like sentences in the vocabulary of Momentor's prompts, to train the small sentencepiece
    models of the synthetic data sets (train, the demo, the bench suites, tests)."""

    rng = random.Random(seed)
    subjects = ["a man", "the woman", "a dog", "the person", "a child", "the chef", "two people", "the car"]
    verbs = ["runs", "jumps", "cooks food", "opens the door", "talks", "walks away", "picks up a cup", "waves"]
    questions = ["What happens in the video?", "When does the event happen?", "Describe the segment.",
                 "Localize every event in the video.", "Where is the object?", "What does the person do?"]
    texts = [conversation.SYSTEM_PROMPT, "USER: ASSISTANT:"] + questions
    for _ in range(num_sentences):
        start = rng.uniform(0, 200)
        texts.append(f"{rng.choice(subjects)} {rng.choice(verbs)} from {start:.2f} seconds to "
                     f"{start + rng.uniform(1, 30):.1f}s, then {rng.choice(subjects)} {rng.choice(verbs)}.")
    return texts
