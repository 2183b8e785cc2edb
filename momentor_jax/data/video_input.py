"""The model's video input from a frame record or a video file: the one path for training, evaluate and predict.

    VideoSpec(num_frames, image_size, use_features)     what the model takes; VideoSpec.of(model_config)
    read_record(index, video_id, spec) -> (video, duration)       a frame or feature record (data/frames.py)
    read_file(path, spec) -> (frames, duration)                    a video file, decoded (data/video.py)
    check_first_record(index, video_ids, spec)                     start-up check of a whole extraction

video: frames uint8 [num_frames, image_size, image_size, 3], or features float32 [num_frames, F] when
spec.use_features; duration: the record's (or the decoded video's) length in seconds, a float.

Records: a record of M >= num_frames frames gives the stored frames nearest to the model's frame times i * duration /
(num_frames - 1) (with M == num_frames, every frame in order, so a record extracted at the model's frame count passes
through as it is). A record with fewer frames than num_frames (frames would repeat), frames of another size than
image_size (None: any size), or features where frames are wanted (or the reverse) does not fit the model:
`RecordMismatch`. A damaged record (CRC, framing, protobuf, JPEG, fields that disagree) or a video that is in no shard:
`VideoInputError`. Both messages are one line naming the shard, the record number and the video (a video in no shard:
its id and the number of shards), e.g. `frames-00000-of-00004.tfrecord record 7: video v: the record holds 2 frames, the
model takes 4 ...`; the loader skips and counts such an example with this message, evaluate scores the query as a
missing video with it. Storage that cannot be reached (gcs.StorageError) propagates: it is no bad record.

Files: num_frames frames sampled uniformly over the whole video including both ends, in CLIP geometry at
image_size (data/video.decode_frames, as extraction writes records); a missing or undecodable file raises
video.VideoDecodeError naming the file. A spec with use_features cannot read a file (ValueError).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from momentor_jax import fileio, gcs
from momentor_jax.data import frames as frames_lib
from momentor_jax.data import tfrecord


class VideoInputError(ValueError):
    """A video that cannot become the model's input; the message names the shard and record (or the file)."""


class RecordMismatch(VideoInputError):
    """A readable record that does not fit the model (frame count, frame size, frames vs features)."""


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    num_frames: int
    image_size: Optional[int] = None  # None: frames of any size
    use_features: bool = False

    @classmethod
    def of(cls, model_config) -> "VideoSpec":
        """What a MomentorConfig's model takes."""
        return cls(model_config.num_frames, model_config.vision.image_size, bool(model_config.use_cached_features))


def nearest_frames(frame_times: np.ndarray, duration: float, num_frames: int) -> np.ndarray:
    """Indices of the stored frames nearest to the model's frame times i * duration / (num_frames - 1)."""
    if len(frame_times) == num_frames:
        return np.arange(num_frames)
    wanted = np.linspace(0.0, duration, num_frames) if num_frames > 1 else np.zeros(1)
    return np.abs(np.asarray(frame_times)[None, :] - wanted[:, None]).argmin(axis=1)


def take_rows(values: np.ndarray, pick: np.ndarray, dtype) -> np.ndarray:
    """values[pick] as a contiguous `dtype` array. When the record holds exactly the frames wanted (pick is every
    row in order) the freshly parsed array is handed on as it is: copying a video's pixels costs as much as a third
    of decoding its JPEGs."""
    if len(pick) == len(values) and np.array_equal(pick, np.arange(len(values))):
        return np.ascontiguousarray(values, dtype)
    return np.ascontiguousarray(values[pick], dtype)


def check_fits(record: dict, spec: VideoSpec) -> None:
    """RecordMismatch (without the record's location) when a parsed record cannot feed the model."""
    video_id, count = record["video_id"], len(record["frame_times"])
    if count < spec.num_frames:
        raise RecordMismatch(
            f"video {video_id}: the record holds {count} frames, the model takes {spec.num_frames} (frames would "
            f"repeat); re-extract with data/extract_frames.py --num_frames {spec.num_frames} or more")
    key, other = ("features", "frames") if spec.use_features else ("frames", "features")
    if key not in record:
        raise RecordMismatch(f"video {video_id}: a {other[:-1]} record, but the model takes {key} "
                             f"(use_features={spec.use_features})")
    size = spec.image_size
    if key == "frames" and size is not None and record["frames"].shape[1:3] != (size, size):
        height, width = record["frames"].shape[1:3]
        raise RecordMismatch(f"video {video_id}: frames are {height} x {width}, the model takes {size} x {size}")


def from_record(record: dict, spec: VideoSpec) -> tuple:
    """A parsed record -> (video, duration), resampled to spec.num_frames; RecordMismatch when it does not fit."""
    check_fits(record, spec)
    duration = float(record["duration"])
    pick = nearest_frames(record["frame_times"], duration, spec.num_frames)
    if spec.use_features:
        return take_rows(record["features"], pick, np.float32), duration
    return take_rows(record["frames"], pick, np.uint8), duration


def record_location(index: frames_lib.FrameRecordIndex, video_id: str) -> tuple:
    """(shard path, record number) of a video in the index."""
    shard, record = index.locate(video_id)
    return index.source.paths[shard], record


def _located(index: frames_lib.FrameRecordIndex, video_id: str, error: Exception) -> str:
    """One line naming the shard, the record and the video, then what is wrong."""
    path, record = record_location(index, video_id)
    text = str(error)
    if text.startswith(f"{path}:"):  # the TFRecord reader and the index name the shard and record themselves
        return f"{text} (video {video_id})"
    where = f"{path} record {record}"
    return f"{where}: {text}" if text.startswith(f"video {video_id}:") else f"{where}: video {video_id}: {text}"


# What reading and parsing a damaged record can raise (TFRecord framing and CRCs, protobuf, JPEGs, fields).
_DAMAGED = (tfrecord.TFRecordCorruptionError, frames_lib.RecordError, ValueError, KeyError, TypeError, OSError)


def read_record(index: frames_lib.FrameRecordIndex, video_id: str, spec: VideoSpec) -> tuple:
    """The model's (video, duration) of one video's record; VideoInputError / RecordMismatch in one line."""
    if video_id not in index:
        raise VideoInputError(f"video {video_id}: in none of the {len(index.source.paths)} frame shards")
    try:
        record = index.get(video_id)
    except gcs.StorageError:
        raise
    except _DAMAGED as e:
        raise VideoInputError(_located(index, video_id, e)) from e
    try:
        return from_record(record, spec)
    except RecordMismatch as e:
        raise RecordMismatch(_located(index, video_id, e)) from None


def check_first_record(index: frames_lib.FrameRecordIndex, video_ids: Sequence[str], spec: VideoSpec) -> None:
    """RecordMismatch when the first readable record (of the first 8 videos in the index) does not fit the model:
    records are extracted alike, so the whole data set would be skipped. Damaged records are left to the reader."""
    for video_id in [v for v in dict.fromkeys(video_ids) if v in index][:8]:
        try:
            read_record(index, video_id, spec)
        except RecordMismatch:
            raise
        except VideoInputError:
            continue
        return


def read_file(path: str, spec: VideoSpec) -> tuple:
    """(frames uint8 [M, S, S, 3], duration) of a video file sampled as extraction samples; VideoDecodeError naming
    the file."""
    from momentor_jax.data.video import VideoDecodeError, decode_frames  # noqa: PLC0415 (PyAV only where decoding)
    if spec.use_features:
        raise ValueError("this checkpoint reads cached ViT features (use_cached_features=True): it takes "
                         "feature records, not video files")
    if spec.image_size is None:
        raise ValueError("decoding a video file needs the model's image_size")
    if not fileio.isfile(path):
        raise VideoDecodeError(f"{path}: no such video file")
    try:
        decoded = decode_frames(path, spec.num_frames, spec.image_size)
    except VideoDecodeError:
        raise
    except Exception as e:  # PyAV and PIL raise many types on damaged input
        raise VideoDecodeError(f"{path}: cannot decode ({type(e).__name__}: {e})") from e
    return np.ascontiguousarray(decoded.frames, np.uint8), float(decoded.duration)
