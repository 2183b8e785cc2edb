"""Per-video records (one `tf.train.Example` each) and random access to them by video id.

Frame records (written by `extract.py`):
    video_id (bytes) | duration (float, s) | frame_times (float x M) | frames (bytes x M, JPEG) | height, width (int)
  frame_times are the timestamps of the decoded frames taken: each is the frame nearest to i * duration / (M - 1),
  so within half a frame interval of it (one interval for the last, which is the last decodable frame).
Cached-feature records (pooled ViT features instead of pixels):
    video_id | duration | frame_times (float x M) | features (float x M*F, row major) | feature_dim (int F)
Records are serialized deterministically (the Example's feature map in key order; protobuf's default order
differs between processes), so one video gives the same bytes in any process or on any worker.
"""
from __future__ import annotations

import io
import logging
import math
import os
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image
from tensorflow_datasets.proto import tf_example_pb2

from momentor_jax import fileio
from momentor_jax.data import tfrecord

SHARD_SUFFIX = ".tfrecord"
MAX_SIDE = 8192  # a frame side beyond this is a damaged height/width field, not a video


class RecordError(ValueError):
    """A video record that is missing a field or whose fields disagree."""


# ------------------------------------------------------------------------------------------------ writing


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(frame, np.uint8), "RGB").save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def _common_example(video_id: str, duration: float, frame_times: Sequence[float]) -> tf_example_pb2.Example:
    example = tf_example_pb2.Example()
    feature = example.features.feature
    feature["video_id"].bytes_list.value.append(video_id.encode("utf-8"))
    feature["duration"].float_list.value.append(float(duration))
    feature["frame_times"].float_list.value.extend(np.asarray(frame_times, np.float64).tolist())
    return example


def make_frame_record(video_id: str, duration: float, frame_times: Sequence[float], frames: np.ndarray,
                      jpeg_quality: int = 90) -> bytes:
    """Serialized Example for frames uint8 [M, H, W, 3]."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise RecordError(f"video {video_id}: frames must be uint8 [M, H, W, 3], got {frames.dtype} {frames.shape}")
    if len(frame_times) != len(frames):
        raise RecordError(f"video {video_id}: {len(frame_times)} frame times for {len(frames)} frames")
    example = _common_example(video_id, duration, frame_times)
    feature = example.features.feature
    feature["frames"].bytes_list.value.extend(encode_jpeg(f, jpeg_quality) for f in frames)
    feature["height"].int64_list.value.append(frames.shape[1])
    feature["width"].int64_list.value.append(frames.shape[2])
    return example.SerializeToString(deterministic=True)  # the same bytes wherever they are written


def make_feature_record(video_id: str, duration: float, frame_times: Sequence[float], features: np.ndarray) -> bytes:
    """Serialized Example for pooled features float [M, F]."""
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or len(features) != len(frame_times):
        raise RecordError(f"video {video_id}: features must be [M={len(frame_times)}, F], got {features.shape}")
    example = _common_example(video_id, duration, frame_times)
    feature = example.features.feature
    feature["features"].float_list.value.extend(features.reshape(-1).tolist())
    feature["feature_dim"].int64_list.value.append(features.shape[1])
    return example.SerializeToString(deterministic=True)


# ------------------------------------------------------------------------------------------------ reading


def _parse_example(data: bytes):
    try:
        return tf_example_pb2.Example.FromString(bytes(data)).features.feature
    except Exception as e:  # protobuf's DecodeError and friends
        raise RecordError(f"record is not a tf.train.Example: {e}") from e


def _scalar(feature, name: str, kind: str, video_id: str):
    if name not in feature:
        raise RecordError(f"video {video_id}: record has no '{name}'")
    values = getattr(feature[name], kind).value
    if len(values) != 1:
        raise RecordError(f"video {video_id}: '{name}' must hold one value, got {len(values)}")
    return values[0]


def _video_id(feature) -> str:
    if "video_id" not in feature or len(feature["video_id"].bytes_list.value) != 1:
        raise RecordError("record has no video_id")
    raw = feature["video_id"].bytes_list.value[0]
    try:
        video_id = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError(f"record's video_id {raw[:40]!r} is not UTF-8") from None
    if not video_id:
        raise RecordError("record has an empty video_id")
    return video_id


def record_video_id(data: bytes) -> str:
    """The video id of a serialized frame or feature record."""
    return _video_id(_parse_example(data))


def _common_fields(feature, num_frames: Optional[int]) -> dict:
    video_id = _video_id(feature)
    duration = float(_scalar(feature, "duration", "float_list", video_id))
    if not math.isfinite(duration) or duration <= 0:
        raise RecordError(f"video {video_id}: duration must be positive, got {duration}")
    if "frame_times" not in feature:
        raise RecordError(f"video {video_id}: record has no 'frame_times'")
    frame_times = np.asarray(feature["frame_times"].float_list.value, np.float32)
    if len(frame_times) == 0:
        raise RecordError(f"video {video_id}: no frames")
    problem = frame_times_problem(frame_times)
    if problem:
        raise RecordError(f"video {video_id}: {problem}")
    if num_frames is not None and len(frame_times) != num_frames:
        raise RecordError(f"video {video_id}: {len(frame_times)} frames, expected {num_frames}")
    # float32 storage rounds; a frame time may not precede 0 nor pass the duration.
    if np.any(frame_times < -1e-3) or np.any(frame_times > duration * (1 + 1e-6) + 1e-3):
        raise RecordError(f"video {video_id}: frame times outside [0, {duration}]")
    return {"video_id": video_id, "duration": duration, "frame_times": frame_times}


def frame_times_problem(frame_times: np.ndarray) -> Optional[str]:
    """Why frame times cannot be a record's, or None. They must be finite and non-decreasing, and not all equal when
    there are several (equal neighbours are fine: a video with fewer decodable frames than M repeats frames)."""
    if not np.all(np.isfinite(frame_times)):
        return "frame_times hold NaN or infinity"
    steps = np.diff(frame_times)
    if np.any(steps < 0):
        first = int(np.flatnonzero(steps < 0)[0])
        return (f"frame_times decrease (frame {first + 1} at {frame_times[first + 1]} s after frame {first} at "
                f"{frame_times[first]} s)")
    if len(frame_times) > 1 and frame_times[-1] == frame_times[0]:
        return f"all {len(frame_times)} frame_times are {frame_times[0]} s"
    return None


def parse_frame_record(data: bytes, num_frames: Optional[int] = None) -> dict:
    """Serialized frame record -> {video_id, duration, frame_times float32 [M], frames uint8 [M, H, W, 3]}."""
    return _parse_record(_parse_example(data), num_frames, "frames")


def parse_feature_record(data: bytes, num_frames: Optional[int] = None) -> dict:
    """Serialized feature record -> {video_id, duration, frame_times float32 [M], features float32 [M, F]}."""
    return _parse_record(_parse_example(data), num_frames, "features")


def parse_video_record(data: bytes, num_frames: Optional[int] = None) -> dict:
    """Either kind of record, told apart by its 'frames' or 'features' field."""
    feature = _parse_example(data)
    return _parse_record(feature, num_frames, "features" if "features" in feature else "frames")


def _parse_record(feature, num_frames: Optional[int], kind: str) -> dict:
    """The common fields plus `kind` ('frames' or 'features') read from a parsed Example's feature map."""
    out = _common_fields(feature, num_frames)
    read = _decode_frames if kind == "frames" else _read_features
    out[kind] = read(feature, out["video_id"], len(out["frame_times"]))
    return out


def _decode_frames(feature, video_id: str, count: int) -> np.ndarray:
    height = int(_scalar(feature, "height", "int64_list", video_id))
    width = int(_scalar(feature, "width", "int64_list", video_id))
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise RecordError(f"video {video_id}: frame size {height} x {width} is outside 1..{MAX_SIDE}")
    jpegs = feature["frames"].bytes_list.value if "frames" in feature else []
    if len(jpegs) != count:
        raise RecordError(f"video {video_id}: {len(jpegs)} frames for {count} frame times")
    frames = np.empty((count, height, width, 3), np.uint8)
    for i, jpeg in enumerate(jpegs):
        try:
            image = Image.open(io.BytesIO(jpeg))
            pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        except Exception as e:  # PIL raises several types for broken JPEG data
            raise RecordError(f"video {video_id}: frame {i} is not a readable JPEG: {e}") from e
        if pixels.shape != (height, width, 3):
            raise RecordError(f"video {video_id}: frame {i} is {pixels.shape}, expected {(height, width, 3)}")
        frames[i] = pixels
    return frames


def _read_features(feature, video_id: str, count: int) -> np.ndarray:
    dim = int(_scalar(feature, "feature_dim", "int64_list", video_id))
    values = np.asarray(feature["features"].float_list.value if "features" in feature else [], np.float32)
    if dim <= 0 or values.size != count * dim:
        raise RecordError(f"video {video_id}: {values.size} feature values, expected {count} x {dim}")
    return values.reshape(count, dim)


# ------------------------------------------------------------------------------------------------ lookup by id


def shard_name(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}-{shard:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def expand_paths(paths: Union[str, Sequence[str]]) -> list:
    """A directory (all its *.tfrecord), a glob pattern, a comma-separated list or a list of paths -> sorted paths
    (local or gs://)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = os.fspath(paths)
        if any(c in paths for c in "*?["):
            found = fileio.glob(paths)
        elif "," not in paths and fileio.isdir(paths):
            found = fileio.glob(fileio.join(paths, f"*{SHARD_SUFFIX}"))
        else:
            found = [p for p in paths.split(",") if p]
    else:
        found = [os.fspath(p) for p in paths]
    if not found:
        raise FileNotFoundError(f"no TFRecord shards found at {paths!r}")
    for path in found:
        if not fileio.isfile(path):
            raise FileNotFoundError(f"TFRecord shard {path} does not exist")
    return found


class FrameRecordIndex:
    """video_id -> (shard, record) over many shards, for joining examples with their video.

    Picklable (grain workers): shards are reopened lazily in each process. Ids come from the sidecar indexes
    (written by extraction) or, when those lack them, from one scan of the shards.
    """

    def __init__(self, paths: Union[str, Sequence[str]], num_frames: Optional[int] = None):
        self.source = tfrecord.TFRecordDataSource(expand_paths(paths), key_fn=record_video_id, salvage=True)
        self.num_frames = num_frames
        self._where: dict[str, tuple[int, int]] = {}
        self.problems = [p for index in self.source.indexes for p in index.problems]
        if self.problems:
            logging.warning("FrameRecordIndex: %d damaged frame records skipped (their videos count as missing): %s",
                            len(self.problems), "; ".join(self.problems[:5]))
        self.num_bad_records = len(self.problems)
        duplicates = 0
        for shard, index in enumerate(self.source.indexes):
            for record, video_id in enumerate(index.keys):
                if video_id is None:
                    continue
                if video_id in self._where:
                    duplicates += 1
                    continue
                self._where[video_id] = (shard, record)
        if duplicates:
            logging.warning("FrameRecordIndex: %d duplicate video ids ignored (first occurrence kept)", duplicates)
        self.num_duplicates = duplicates

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._where

    def video_ids(self) -> list:
        return list(self._where)

    def locate(self, video_id: str) -> tuple[int, int]:
        try:
            return self._where[video_id]
        except KeyError:
            raise KeyError(f"video {video_id} is in none of the {len(self.source.paths)} frame shards") from None

    def get_bytes(self, video_id: str) -> bytes:
        return self.source.read(*self.locate(video_id))

    def get(self, video_id: str) -> dict:
        """The parsed record (frames or features) of one video."""
        record = parse_video_record(self.get_bytes(video_id), self.num_frames)
        if record["video_id"] != video_id:
            shard, index = self.locate(video_id)
            raise RecordError(f"{self.source.paths[shard]}: record {index} holds video {record['video_id']}, "
                              f"the index says {video_id}")
        return record

    def __repr__(self) -> str:
        return f"FrameRecordIndex(shards={len(self.source.paths)}, videos={len(self)})"
