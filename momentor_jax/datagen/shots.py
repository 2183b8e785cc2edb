"""Shots: one decoding pass over a video that finds hard cuts with PySceneDetect's content detector and keeps frames
sampled on a fixed time grid for the later stages.

Frames are decoded by momentor_jax/data/video.py (PyAV). Every frame is fed, scaled to `detect_side` on its longer
side and in BGR, to `scenedetect.ContentDetector` (the paper's tool; its per-frame HSV/edge difference against a
threshold, with a minimum shot length); a cut at frame k means frame k starts a new shot. Samples: the first frame
at or after each grid time i / sample_fps (minus half a frame), kept as uint8 RGB scaled to `max_side`.

Contract of `scan_video(path, config) -> ScannedVideo`:
    duration        seconds: last frame time + one frame interval
    frame_rate      the stream's average rate (else the median frame interval)
    cut_frames      [int]: first frame of every shot but the first, ascending
    shots           [(start, end)] seconds, contiguous, covering [0, duration)
    sample_times    float64 [S]; samples: [S] uint8 RGB arrays [H, W, 3]
"""
from __future__ import annotations

import dataclasses

import numpy as np

from momentor_jax.data import video as video_lib


@dataclasses.dataclass(frozen=True)
class ShotConfig:
    threshold: float = 27.0          # ContentDetector's default
    min_shot_seconds: float = 0.5
    detect_side: int = 256           # PySceneDetect's own default downscale aims at ~256 px
    sample_fps: float = 1.0
    max_side: int = 448              # samples feed CLIP (224), the detector and the captioner

    def __post_init__(self):
        if self.threshold <= 0 or self.min_shot_seconds < 0 or self.sample_fps <= 0:
            raise ValueError(f"ShotConfig: need threshold > 0, min_shot_seconds >= 0, sample_fps > 0; got {self}")
        if self.detect_side < 16 or self.max_side < 16:
            raise ValueError(f"ShotConfig: detect_side and max_side must be >= 16; got {self}")


@dataclasses.dataclass
class ScannedVideo:
    duration: float
    frame_rate: float
    cut_frames: list
    shots: list
    sample_times: np.ndarray
    samples: list


def _resize(frame: np.ndarray, side: int) -> np.ndarray:
    import cv2  # noqa: PLC0415 (opencv comes with scenedetect, the datagen extra)

    h, w = frame.shape[:2]
    if max(h, w) <= side:
        return frame
    scale = side / max(h, w)
    return cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def scan_video(path: str, config: ShotConfig = ShotConfig()) -> ScannedVideo:
    """Shots and samples of one video in one decoding pass (raises video.VideoDecodeError on a bad file)."""
    from scenedetect import ContentDetector, FrameTimecode  # noqa: PLC0415

    rate = video_lib.frame_rate(path)
    times, samples, sample_times, cuts = [], [], [], []
    detector = None
    next_sample = 0.0
    for k, (t, frame) in enumerate(video_lib.iter_frames(path, max(config.max_side, config.detect_side))):
        if k == 1 and rate <= 0:
            rate = 1.0 / max(t - times[0], 1e-3)
        times.append(t)
        half_frame = 0.5 / rate if rate > 0 else 0.0
        if t >= next_sample - half_frame:
            samples.append(_resize(frame, config.max_side))
            sample_times.append(t)
            next_sample = (np.floor((t + half_frame) * config.sample_fps) + 1) / config.sample_fps
        if detector is None:
            detector = ContentDetector(threshold=config.threshold,
                                       min_scene_len=max(1, int(round(config.min_shot_seconds * (rate or 25)))))
        small = np.ascontiguousarray(_resize(frame, config.detect_side)[..., ::-1])
        cuts.extend(tc.frame_num for tc in detector.process_frame(FrameTimecode(k, rate or 25), small))
    if not times:
        raise video_lib.VideoDecodeError(f"{path}: no decodable video frames")
    cuts.extend(tc.frame_num for tc in detector.post_process(FrameTimecode(len(times) - 1, rate or 25)))
    if rate <= 0:
        rate = 25.0
    duration = times[-1] + (float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / rate)
    cut_frames = sorted({c for c in cuts if 0 < c < len(times)})
    bounds = [0.0] + [times[c] for c in cut_frames] + [duration]
    return ScannedVideo(duration=float(duration), frame_rate=float(rate), cut_frames=cut_frames,
                        shots=list(zip(bounds[:-1], bounds[1:])), sample_times=np.asarray(sample_times, np.float64),
                        samples=samples)
