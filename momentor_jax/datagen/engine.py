"""The data generation engine: a folder of untrimmed videos -> raw Moment-10M and GESM JSON (paper section 3).

Per video (`generate_video`, a pure function of the video and the loaded models, writing nothing):
    shots.scan_video         PySceneDetect cuts + frames sampled at config.shots.sample_fps
    clip.ClipModel           pooled features (our Flax tower) and projected embeddings of the samples
    events.merge_shots       adjacent shots merged by feature similarity -> segments
    captions.Captioner       one caption per segment (its middle sample) and per instance crop
    instances                detector on every sample, crops' CLIP features as appearance, tracker -> instances
    instructions.build       the ten data types + the GESM entry, scored with CLIP (see instructions.py)
It returns {"video_id", "duration", "moment10m": {data_type: [items]}, "gesm": {timestamps, captions}, "stats"}.
Models are loaded once (`Models.load`) and reused for every video: a Beam DoFn (the Beam issue) would load them in
setup() and call `generate_video` in process(); `run` is the single-machine driver.

`run(video_dir, out_dir, models, config)` (paths local or gs:// through momentor_jax/fileio.py) writes
    OUT/per_video/<video_id>.json   one result per finished video; a rerun skips these (resume)
    OUT/moment10m.json              {video_id: {data_type: [items]}}, every finished video, sorted by id
    OUT/gesm.json                   {video_id: {timestamps, captions}}, videos with at least one captioned segment
    OUT/generate_failures.jsonl     {"video_id", "path", "reason"} per video that failed in this run (retried by
                                    the next one)
    OUT/generate_metadata.json      models used (directory, model_type, architectures, config.json sha256) and
                                    their settings (detection threshold, generation lengths), the engine
                                    config, library versions, counts; a rerun with other models, settings or
                                    config into the same OUT is refused
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from momentor_jax import fileio
from momentor_jax.data import video_ids
from momentor_jax.datagen import events as events_lib
from momentor_jax.datagen import instances as instances_lib
from momentor_jax.datagen import instructions
from momentor_jax.datagen import shots as shots_lib
from momentor_jax.datagen.clip import unit

PER_VIDEO_DIR = "per_video"
MOMENT10M_FILE, GESM_FILE = "moment10m.json", "gesm.json"
FAILURES_FILE, METADATA_FILE = "generate_failures.jsonl", "generate_metadata.json"


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    shots: shots_lib.ShotConfig = shots_lib.ShotConfig()
    events: events_lib.EventConfig = events_lib.EventConfig()
    tracker: instances_lib.TrackerConfig = instances_lib.TrackerConfig()
    labels: tuple = instances_lib.COCO_LABELS
    max_instances: int = 8       # tracks kept per video: the most detections first, then the highest mean score
    crop_margin: float = 0.1     # crops around a box grow by this fraction of its size on every side
    seed: int = 0

    def __post_init__(self):
        if not self.labels or any(not isinstance(x, str) or not x.strip() for x in self.labels):
            raise ValueError("EngineConfig.labels must be a non-empty list of non-empty strings")
        if self.max_instances < 0 or self.crop_margin < 0:
            raise ValueError(f"EngineConfig: need max_instances >= 0 and crop_margin >= 0; got {self}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _describe_model(role: str, directory: Optional[str]) -> Optional[dict]:
    if directory is None:
        return None
    config_path = fileio.join(directory, "config.json")
    raw = fileio.read_bytes(config_path)
    config = json.loads(raw)
    return {"role": role, "directory": directory, "model_type": config.get("model_type"),
            "architectures": config.get("architectures"), "config_sha256": hashlib.sha256(raw).hexdigest()}


@dataclasses.dataclass
class Models:
    """Everything a video needs, loaded once: CLIP (required), detector, captioner, writer (each optional)."""
    clip: object
    detector: object = None
    captioner: object = None
    writer: object = None
    directories: dict = dataclasses.field(default_factory=dict)
    settings: dict = dataclasses.field(default_factory=dict)   # what else shapes the output (detection, lengths)

    @classmethod
    def load(cls, clip_dir: str, detector_dir: Optional[str] = None, captioner_dir: Optional[str] = None,
             llm_dir: Optional[str] = None, device: str = "cpu", detection_threshold: float = 0.3,
             max_detections: int = 20, caption_tokens: int = 30, llm_tokens: int = 40) -> "Models":
        from momentor_jax.datagen.captions import Captioner  # noqa: PLC0415
        from momentor_jax.datagen.clip import ClipModel  # noqa: PLC0415
        from momentor_jax.datagen.writer import LLMWriter  # noqa: PLC0415

        return cls(clip=ClipModel(clip_dir, device=device),
                   detector=instances_lib.HFDetector(detector_dir, detection_threshold, device,
                                                     max_detections=max_detections) if detector_dir else None,
                   captioner=Captioner(captioner_dir, device, max_new_tokens=caption_tokens)
                   if captioner_dir else None,
                   writer=LLMWriter(llm_dir, device, max_new_tokens=llm_tokens) if llm_dir else None,
                   directories={"clip": clip_dir, "detector": detector_dir, "captioner": captioner_dir,
                                "llm": llm_dir},
                   settings={"detection_threshold": detection_threshold, "max_detections": max_detections,
                             "caption_tokens": caption_tokens, "llm_tokens": llm_tokens})

    def describe(self) -> dict:
        described = {role: _describe_model(role, d) for role, d in self.directories.items()}
        return dict(described, settings=self.settings)


# ---- one video ----

def _crop(frame: np.ndarray, box: tuple, margin: float) -> np.ndarray:
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = box
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    left, right = int(max(0.0, x0 - mx) * w), int(np.ceil(min(1.0, x1 + mx) * w))
    top, bottom = int(max(0.0, y0 - my) * h), int(np.ceil(min(1.0, y1 + my) * h))
    if right - left < 2 or bottom - top < 2:
        return frame
    return frame[top:bottom, left:right]


def _inside(times: np.ndarray, start: float, end: float) -> np.ndarray:
    """Indices of sample times in [start, end); the nearest one to the middle when none is."""
    idx = np.flatnonzero((times >= start) & (times < end))
    return idx if idx.size else np.array([int(np.argmin(np.abs(times - (start + end) / 2)))])


def _caption(models: Models, images: list) -> list:
    return models.captioner.caption(images) if models.captioner is not None and images else [""] * len(images)


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(unit(a) * unit(b), axis=-1)


def _segments(models: Models, scanned, embeds: np.ndarray, events: list) -> list:
    times = scanned.sample_times
    members = [_inside(times, e.start, e.end) for e in events]
    seg_embeds = unit(np.stack([embeds[m].mean(axis=0) for m in members]))
    captions = _caption(models, [scanned.samples[int(m[len(m) // 2])] for m in members])
    text = models.clip.text_embeds([c or " " for c in captions])
    sim = text @ seg_embeds.T  # [caption i, segment j]
    segments = []
    for i, event in enumerate(events):
        others = np.delete(sim[i], i)
        segments.append(instructions.Segment(
            span=event.span, caption=captions[i], caption_score=float(sim[i, i]),
            locate_score=float(sim[i, i] / max(float(others.max()), 1e-3)) if others.size else None,
            next_similarity=float(seg_embeds[i] @ seg_embeds[i + 1]) if i + 1 < len(events) else None))
    return segments


def _instances(models: Models, scanned, embeds: np.ndarray, segments: list, config: EngineConfig) -> tuple:
    frames, times = scanned.samples, scanned.sample_times
    detections = models.detector.detect(frames, list(config.labels))
    pooled = models.clip.pooled([_crop(frames[f], d.box, config.crop_margin)
                                 for f, dets in enumerate(detections) for d in dets])
    appearance = np.split(pooled, np.cumsum([len(dets) for dets in detections])[:-1])
    tracks = instances_lib.track(detections, list(times), appearance, config.tracker)
    tracks = sorted(tracks, key=lambda t: (-len(t.frames), -float(np.mean(t.scores)), t.times[0]))
    tracks = sorted(tracks[:config.max_instances], key=lambda t: (t.times[0], t.label))
    interval = 1.0 / config.shots.sample_fps

    # Crops to caption: each track's best detection, and its best detection inside every segment it overlaps.
    jobs = []  # (track index, segment index or None, crop)
    for k, tr in enumerate(tracks):
        jobs.append((k, None, _crop(frames[tr.frames[tr.best]], tr.boxes[tr.best], config.crop_margin)))
        for j, seg in enumerate(segments):
            inside = [n for n, t in enumerate(tr.times) if seg.span[0] <= t < seg.span[1]]
            if inside:
                n = max(inside, key=lambda n: tr.scores[n])
                jobs.append((k, j, _crop(frames[tr.frames[n]], tr.boxes[n], config.crop_margin)))
    crops = [crop for _, _, crop in jobs]
    captions = _caption(models, crops)
    crop_embeds = models.clip.image_embeds(models.clip.pooled(crops)) if crops else np.zeros((0, 1))
    caption_scores = _cos_rows(models.clip.text_embeds([c or " " for c in captions]), crop_embeds) if crops else []
    whole = [n for n, (_, j, _) in enumerate(jobs) if j is None]  # one per track, in track order
    class_scores = (_cos_rows(models.clip.text_embeds([f"a photo of a {t.label}" for t in tracks]),
                              crop_embeds[whole]) if tracks else [])

    out = []
    for k, tr in enumerate(tracks):
        span = tr.span(interval, scanned.duration)
        mine = [n for n, (kk, _, _) in enumerate(jobs) if kk == k]
        inst = instructions.Instance(label=tr.label, span=span, click=tr.click(), caption=captions[mine[0]],
                                     caption_score=float(caption_scores[mine[0]]), class_score=float(class_scores[k]))
        for n in mine[1:]:
            j = jobs[n][1]
            seg = segments[j]
            moment = [max(span[0], seg.span[0]), min(span[1], seg.span[1])]
            if moment[1] <= moment[0]:
                continue
            inst.segment_captions.append((j, moment, captions[n], float(caption_scores[n])))
            if seg.caption:
                inst.composites.append((j, moment, instructions.composite_content(tr.label, seg.caption), None))
        out.append(inst)

    # Composite retrieval scores: the content text against the frames of its moment.
    pending = [(inst, c) for inst in out for c in range(len(inst.composites))]
    if pending:
        texts = models.clip.text_embeds([inst.composites[c][2] for inst, c in pending])
        for (inst, c), text in zip(pending, texts):
            j, moment, content, _ = inst.composites[c]
            frames_embed = unit(embeds[_inside(times, moment[0], moment[1])].mean(axis=0))
            inst.composites[c] = (j, moment, content, float(text @ frames_embed))
    return out, len(tracks)


def generate_video(video_id: str, path: str, models: Models, config: EngineConfig = EngineConfig()) -> dict:
    """One video's raw Moment-10M items, GESM entry and stats (see the module docstring)."""
    clock = [time.perf_counter()]
    seconds = {}

    def lap(stage: str) -> None:
        clock.append(time.perf_counter())
        seconds[f"seconds_{stage}"] = round(clock[-1] - clock[-2], 3)

    scanned = shots_lib.scan_video(path, config.shots)
    lap("shots")
    pooled = models.clip.pooled(scanned.samples)
    embeds = models.clip.image_embeds(pooled)
    shot_feats = events_lib.shot_features(scanned.shots, scanned.sample_times, pooled)
    events = events_lib.merge_shots(scanned.shots, shot_feats, config.events)
    lap("events")
    segments = _segments(models, scanned, embeds, events)
    lap("segments")
    instances, num_tracks = ([], 0) if models.detector is None else _instances(models, scanned, embeds, segments,
                                                                                 config)
    lap("instances")
    items, gesm, stats = instructions.build(video_id, segments, instances, seed=config.seed, writer=models.writer)
    lap("instructions")
    stats.update(shots=len(scanned.shots), segments=len(segments), tracks=num_tracks, samples=len(scanned.samples),
                 seconds=round(clock[-1] - clock[0], 3), **seconds)
    return {"video_id": video_id, "duration": scanned.duration,
            "moment10m": {t: v for t, v in items.items() if v}, "gesm": gesm, "stats": stats}


# ---- a folder ----

def list_videos(video_dir: str) -> dict:
    """{video_id: path} for the video files in a directory (local or gs://), ids by video_ids' rule (the name
    without its video extension); hidden files and other extensions are left out, two files with one id are an
    error (video_ids.VideoIdCollision)."""
    return video_ids.list_video_files(video_dir, fileio.listdir, fileio.join)


def _local_copy(path: str) -> tuple:
    """(a local path PyAV can open, a temp file to remove or None)."""
    if not fileio.is_remote(path):
        return path, None
    suffix = os.path.splitext(path)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as f:
        f.write(fileio.read_bytes(path))
    return f.name, f.name


def _check_metadata(out_dir: str, fingerprint: dict) -> None:
    path = fileio.join(out_dir, METADATA_FILE)
    if not fileio.exists(path):
        return
    previous = json.loads(fileio.read_text(path))
    for key in ("models", "config"):  # settings travel inside "models"
        if previous.get(key) != fingerprint[key]:
            raise ValueError(f"{path}: {out_dir} holds videos generated with other {key} ({previous.get(key)}); "
                             "use another --out, or remove it")


@dataclasses.dataclass
class RunSummary:
    generated: int
    already_done: int
    failed: list   # [(video_id, reason)]
    counts: dict   # {data_type: items} over every finished video

    def line(self, out_dir: str) -> str:
        total = sum(self.counts.values())
        return (f"generated {self.generated} videos, {self.already_done} already done, {len(self.failed)} failed; "
                f"{total} items in {fileio.join(out_dir, MOMENT10M_FILE)}"
                + (f"; failures in {fileio.join(out_dir, FAILURES_FILE)}" if self.failed else ""))


def run(video_dir: str, out_dir: str, models: Models, config: EngineConfig = EngineConfig(),
        progress: bool = True, log: Callable[[str], None] = lambda m: tqdm.write(m, file=sys.stderr)) -> RunSummary:
    """Generates every video of `video_dir` not yet in `out_dir`, then rewrites the merged outputs."""
    import importlib.metadata  # noqa: PLC0415

    if not fileio.isdir(video_dir):
        raise ValueError(f"{video_dir}: not a folder of videos")
    videos = list_videos(video_dir)
    fingerprint = json.loads(json.dumps({"models": models.describe(), "config": config.to_json()}))  # as stored
    fileio.makedirs(out_dir)
    _check_metadata(out_dir, fingerprint)
    if not fileio.exists(fileio.join(out_dir, METADATA_FILE)):  # before any video, so a killed run is checked too
        fileio.write_text(fileio.join(out_dir, METADATA_FILE), json.dumps(fingerprint, indent=1))
    per_video = fileio.join(out_dir, PER_VIDEO_DIR)
    fileio.makedirs(per_video)
    done = {name[:-len(".json")] for name in (fileio.listdir(per_video) if fileio.isdir(per_video) else [])
            if name.endswith(".json")}
    todo = [v for v in sorted(videos) if v not in done]
    failed, generated = [], 0
    bar = tqdm(todo, desc="generating", unit="video", disable=not progress, file=sys.stderr)
    for video_id in bar:
        path = videos[video_id]
        local, temp = None, None
        try:
            local, temp = _local_copy(path)
            result = generate_video(video_id, local, models, config)
            fileio.write_text(fileio.join(per_video, f"{video_id}.json"), json.dumps(result, ensure_ascii=False))
            generated += 1
        except Exception as e:  # noqa: BLE001 (one bad video is listed and skipped, never the end of the run)
            reason = f"{type(e).__name__}: {e}"
            failed.append((video_id, reason))
            log(f"failed {video_id} ({path}): {reason}")
        finally:
            if temp is not None and os.path.exists(temp):
                os.remove(temp)
        bar.set_postfix(failed=len(failed))

    moment10m, gesm, counts, stats_total = {}, {}, {}, {}
    for name in fileio.listdir(per_video):
        if not name.endswith(".json"):
            continue
        result = json.loads(fileio.read_text(fileio.join(per_video, name)))
        moment10m[result["video_id"]] = result["moment10m"]
        if result["gesm"]["timestamps"]:
            gesm[result["video_id"]] = result["gesm"]
        for data_type, items in result["moment10m"].items():
            counts[data_type] = counts.get(data_type, 0) + len(items)
        for key, value in result["stats"].items():
            stats_total[key] = stats_total.get(key, 0) + value
    fileio.write_text(fileio.join(out_dir, MOMENT10M_FILE), json.dumps(moment10m, ensure_ascii=False))
    fileio.write_text(fileio.join(out_dir, GESM_FILE), json.dumps(gesm, ensure_ascii=False))
    fileio.write_text(fileio.join(out_dir, FAILURES_FILE), "".join(
        json.dumps({"video_id": v, "path": videos[v], "reason": r}) + "\n" for v, r in failed))
    versions = {}
    for package in ("momentor_jax", "jax", "flax", "torch", "transformers", "scenedetect", "av"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    metadata = dict(fingerprint, versions=versions, videos=len(moment10m), failed=len(failed),
                    items=dict(sorted(counts.items())), totals=stats_total)
    fileio.write_text(fileio.join(out_dir, METADATA_FILE), json.dumps(metadata, indent=1))
    return RunSummary(generated, len(videos) - len(todo), failed, counts)
