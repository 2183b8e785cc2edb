"""Video decoding with PyAV: duration, uniform frame sampling including both ends, CLIP preprocessing geometry.

Frame i of M is wanted at t_i = i * duration / (M - 1); the decoded frame whose timestamp is nearest to t_i is taken
(ties go to the earlier frame, and t_{M-1} = duration lands on the last decodable frame). Decoding is sequential and
seeks only when the next wanted time is far ahead of the decoder.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterator, Optional

import av
import numpy as np
from PIL import Image

from momentor_jax.data.video_ids import VIDEO_EXTENSIONS  # noqa: F401 (the one list; re-exported)

SEEK_AHEAD_SECONDS = 8.0  # seek instead of decoding through when the next wanted frame is this far ahead
# Decodable frames must reach this close to the stated duration; a truncated download otherwise yields a video
# whose tail is one frame repeated.
MISSING_TAIL_SECONDS = 1.0
MISSING_TAIL_FRACTION = 0.05


class VideoDecodeError(IOError):
    """A video that cannot be opened or decoded."""


@dataclasses.dataclass
class DecodedVideo:
    frames: np.ndarray       # uint8 [M, size, size, 3]
    frame_times: np.ndarray  # float64 [M]: timestamps (seconds from the start) of the frames taken
    sample_times: np.ndarray  # float64 [M]: the wanted times i * duration / (M - 1)
    duration: float


def sample_times(duration: float, num_frames: int) -> np.ndarray:
    """t_i = i * duration / (M - 1), i = 0..M-1 (a single frame sits at 0)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if num_frames == 1:
        return np.zeros(1)
    return np.arange(num_frames) * (duration / (num_frames - 1))


def clip_geometry(image: Image.Image, size: int) -> np.ndarray:
    """CLIP geometry: resize the shorter side to `size` (bicubic), center crop size x size -> uint8 [size, size, 3].

    Output sizes and crop offsets follow Hugging Face's CLIPImageProcessor (long side int(size * long / short),
    crop top/left = (dimension - size) // 2).
    """
    image = image.convert("RGB") if image.mode != "RGB" else image
    width, height = image.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def _stream_start(stream) -> int:
    return stream.start_time if stream.start_time is not None else 0


def _frame_time(frame, stream, fallback_index: int) -> float:
    """Seconds since the stream start (falls back to index / rate when a frame carries no timestamp)."""
    if frame.pts is not None and stream.time_base is not None:
        return float((frame.pts - _stream_start(stream)) * stream.time_base)
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    return fallback_index / rate


def _metadata_duration(container, stream) -> Optional[float]:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _decoded_duration(container, stream) -> float:
    """Duration by decoding everything: last frame time plus one frame interval."""
    last, count = None, 0
    for frame in container.decode(stream):
        last = _frame_time(frame, stream, count)
        count += 1
    if last is None:
        raise VideoDecodeError("no decodable video frames")
    rate = float(stream.average_rate or stream.guessed_rate or 0)
    return last + (1.0 / rate if rate > 0 else 0.0)


def _frames(container, stream) -> Iterator[tuple[float, av.VideoFrame]]:
    for count, frame in enumerate(container.decode(stream)):
        yield _frame_time(frame, stream, count), frame


def _nearest_frames(container, stream, targets: np.ndarray, size: int) -> list:
    """For each target time (ascending) the (time, CLIP-geometry pixels) of the nearest decoded frame.

    Only chosen frames are converted to RGB, each once, so decoded frames are not kept around.
    """
    chosen = []
    previous = current = None
    decoder = _frames(container, stream)
    exhausted = False
    last_pick = last_pixels = None
    for target in targets:
        if (current is not None and not exhausted and target - current[0] > SEEK_AHEAD_SECONDS
                and stream.time_base is not None and current[1].pts is not None):
            # Land on the keyframe at or before the target, then decode forward from there.
            container.seek(int(target / stream.time_base) + _stream_start(stream), backward=True,
                           any_frame=False, stream=stream)
            decoder = _frames(container, stream)
            previous = current = None
        while not exhausted and (current is None or current[0] < target):
            try:
                candidate = next(decoder)
            except StopIteration:
                exhausted = True
                break
            previous, current = current, candidate
        if current is None:
            raise VideoDecodeError(f"no decodable frame near {target:.3f}s")
        pick = previous if previous is not None and target - previous[0] <= current[0] - target else current
        if pick is not last_pick:
            last_pick, last_pixels = pick, clip_geometry(pick[1].to_image(), size)
        chosen.append((pick[0], last_pixels))
    return chosen


def _video_stream(container, path: str):
    if not container.streams.video:
        raise VideoDecodeError(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def probe_duration(path: str) -> float:
    """Seconds, from the stream or container metadata, else by decoding every frame."""
    with av.open(os.fspath(path)) as container:
        stream = _video_stream(container, path)
        duration = _metadata_duration(container, stream)
        return duration if duration is not None else _decoded_duration(container, stream)


def decode_frames(path: str, num_frames: int, size: int) -> DecodedVideo:
    """Samples `num_frames` frames uniformly over the whole video (both ends), in CLIP geometry."""
    path = os.fspath(path)
    try:
        duration = probe_duration(path)
        if not math.isfinite(duration) or duration <= 0:
            raise VideoDecodeError(f"{path}: bad duration {duration}")
        targets = sample_times(duration, num_frames)
        with av.open(path) as container:
            chosen = _nearest_frames(container, _video_stream(container, path), targets, size)
        last_time = chosen[-1][0]
        if duration - last_time > max(MISSING_TAIL_SECONDS, MISSING_TAIL_FRACTION * duration):
            raise VideoDecodeError(f"{path}: decodable frames end at {last_time:.2f}s of a {duration:.2f}s video "
                                   "(truncated file?)")
        frames = np.stack([pixels for _, pixels in chosen])
    except VideoDecodeError as e:
        message = str(e)
        raise VideoDecodeError(message if message.startswith(path) else f"{path}: {message}") from e
    except (av.FFmpegError, ValueError, OSError, StopIteration) as e:
        raise VideoDecodeError(f"{path}: {type(e).__name__}: {e}") from e
    times = np.array([t for t, _ in chosen], np.float64)
    return DecodedVideo(frames=frames, frame_times=times, sample_times=targets, duration=float(duration))


def iter_frames(path: str, max_side: Optional[int] = None) -> Iterator[tuple[float, np.ndarray]]:
    """Every decoded frame in order: (seconds from the stream start, uint8 RGB [H, W, 3]), scaled down (aspect
    kept, even sides) when its longer side exceeds `max_side`. Decoder errors raise VideoDecodeError naming `path`."""
    path = os.fspath(path)
    try:
        with av.open(path) as container:
            stream = _video_stream(container, path)
            for time, frame in _frames(container, stream):
                width, height = frame.width, frame.height
                if max_side and max(width, height) > max_side:
                    scale = max_side / max(width, height)
                    width, height = max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)
                yield time, frame.to_ndarray(format="rgb24", width=width, height=height)
    except (av.FFmpegError, ValueError, OSError) as e:
        raise VideoDecodeError(f"{path}: {type(e).__name__}: {e}") from e


def frame_rate(path: str) -> float:
    """Frames per second from the stream metadata (average, else guessed); 0.0 when neither is known."""
    path = os.fspath(path)
    try:
        with av.open(path) as container:
            stream = _video_stream(container, path)
            return float(stream.average_rate or stream.guessed_rate or 0)
    except (av.FFmpegError, ValueError, OSError) as e:
        raise VideoDecodeError(f"{path}: {type(e).__name__}: {e}") from e
