"""Cached features: run the frozen CLIP vision tower once over frame records, write pooled features per video.

    frames-00003-of-00008.tfrecord  ->  OUT/features-00003-of-00008.tfrecord (+ .index)

Each output record is a feature record (frames.make_feature_record: video_id, duration, frame_times, features
float M x F, feature_dim), in the input's order, read back by the loader with `use_features=True`. Frames from
consecutive videos share fixed-size ViT batches (one compilation), sharded over this host's devices; JPEG decoding
runs in threads ahead of the device. Finished output shards are kept, so a rerun resumes. Frame records that fail
to read are skipped, counted and named in a warning; if every record fails the extraction raises.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
from typing import Any, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from momentor_jax import fileio
from momentor_jax.data import frames as frames_lib
from momentor_jax.data import tfrecord
from momentor_jax.models.config import VisionConfig
from momentor_jax.models.vit import VisionTower, clip_normalize

OUTPUT_PREFIX = "features"


@dataclasses.dataclass
class ExtractionStats:
    videos: int = 0
    frames: int = 0
    skipped_records: int = 0
    shards_written: int = 0
    shards_kept: int = 0  # already complete from an earlier run


def make_encoder(vision_config: VisionConfig, devices: Optional[Sequence[Any]] = None):
    """-> (encode(params, frames uint8 [N, H, W, 3]) -> float32 [N, F], mesh). N must divide by the mesh size.

    The frame axis is split over `devices` (default: this host's devices); parameters are replicated.
    """
    mesh = Mesh(np.array(list(devices if devices is not None else jax.local_devices())), ("frames",))
    by_frame, replicated = NamedSharding(mesh, PartitionSpec("frames")), NamedSharding(mesh, PartitionSpec())
    tower = VisionTower(vision_config)

    def encode(params, frames_uint8):
        pooled = tower.apply({"params": params}, clip_normalize(frames_uint8))
        return pooled.astype(jnp.float32)

    return jax.jit(encode, in_shardings=(replicated, by_frame), out_shardings=by_frame), mesh


def _unbox(params: Any) -> Any:
    """Plain arrays whether or not the tree still holds flax logical-partitioning boxes."""
    import flax.linen as nn  # noqa: PLC0415
    return nn.meta.unbox(params)


class FeatureExtractor:
    """Pooled features of whole videos, batching frames across videos into fixed [batch_frames, H, W, 3] calls."""

    def __init__(self, vision_params: Any, vision_config: VisionConfig, batch_frames: int = 64,
                 devices: Optional[Sequence[Any]] = None):
        self.config = vision_config
        self._encode, mesh = make_encoder(vision_config, devices)
        # Round up so every device gets the same number of frames.
        self.batch_frames = -(-max(1, batch_frames) // mesh.size) * mesh.size
        self._params = jax.device_put(_unbox(vision_params), NamedSharding(mesh, PartitionSpec()))
        self.frames_done = 0

    def check_frames(self, frames: np.ndarray, where: str) -> None:
        size = self.config.image_size
        if frames.ndim != 4 or frames.shape[1:] != (size, size, 3):
            raise ValueError(f"{where}: frames are {frames.shape[1:]}, the vision tower takes ({size}, {size}, 3); "
                             "extract frames at the checkpoint's image size")

    def __call__(self, videos: Iterator[tuple[Any, np.ndarray]]) -> Iterator[tuple[Any, np.ndarray]]:
        """(key, frames uint8 [M, H, W, 3]) in -> (key, features float32 [M, F]) out, in the same order.

        One ViT batch stays in flight while the next is assembled, so host work overlaps the device.
        """
        pending: list = []       # [key, frames still to batch, list of feature chunks, frames missing]
        buffer: list = []        # (pending entry, frames) pieces of the next batch
        buffered = 0
        in_flight = None         # (device result, [(entry, count)])

        def finish(flight):
            result, owners = flight
            values = np.asarray(jax.device_get(result))
            start = 0
            for entry, count in owners:
                entry[2].append(values[start:start + count])
                entry[3] -= count
                start += count
            self.frames_done += start

        def launch():
            nonlocal buffer, buffered
            pieces = [frames for _, frames in buffer]
            batch = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
            if len(batch) < self.batch_frames:  # the last, partial batch: pad, then drop the padding's output
                batch = np.concatenate([batch, np.zeros((self.batch_frames - len(batch),) + batch.shape[1:],
                                                        batch.dtype)])
            owners = [(entry, len(frames)) for entry, frames in buffer]
            buffer, buffered = [], 0
            return self._encode(self._params, batch), owners

        def completed():
            while pending and pending[0][3] == 0 and not pending[0][1].size:
                key, _, chunks, _ = pending.pop(0)
                yield key, np.concatenate(chunks)

        def step(flush: bool):
            nonlocal in_flight
            flight = launch() if buffer else None
            if in_flight is not None:
                finish(in_flight)
            in_flight = flight
            if flush and in_flight is not None:
                finish(in_flight)
                in_flight = None

        for key, frames in videos:
            frames = np.asarray(frames, np.uint8)
            entry = [key, frames, [], len(frames)]
            pending.append(entry)
            while entry[1].size:
                take = min(self.batch_frames - buffered, len(entry[1]))
                buffer.append((entry, entry[1][:take]))
                entry[1] = entry[1][take:]
                buffered += take
                if buffered == self.batch_frames:
                    step(flush=False)
                    yield from completed()
        step(flush=True)
        yield from completed()


def _read_records(path: str, indexes: Sequence[int], source: tfrecord.TFRecordDataSource, shard: int,
                  threads: int) -> Iterator[tuple[int, Optional[dict], Optional[str]]]:
    """(record number, parsed frame record or None, error) in order, decoded `threads` records ahead."""
    def load(record: int):
        try:
            parsed = frames_lib.parse_frame_record(source.read(shard, record))
            return record, parsed, None
        except (tfrecord.TFRecordCorruptionError, frames_lib.RecordError, OSError) as e:
            return record, None, f"{path} record {record}: {type(e).__name__}: {e}"

    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        window: list = []
        for record in indexes:
            window.append(pool.submit(load, record))
            if len(window) > 2 * threads:
                yield window.pop(0).result()
        for future in window:
            yield future.result()


def output_path(out_dir: str, shard: int, num_shards: int) -> str:
    return frames_lib.shard_name(fileio.join(out_dir, OUTPUT_PREFIX), shard, num_shards)  # local or gs://


def extract_features(frames: Any, out_dir: str, vision_params: Any, vision_config: VisionConfig, *,
                     batch_frames: int = 64, process_index: int = 0, process_count: int = 1, threads: int = 4,
                     overwrite: bool = False, devices: Optional[Sequence[Any]] = None) -> ExtractionStats:
    """Writes OUT/features-<i>-of-<n>.tfrecord for the i-th of the n input frame shards (this process's share:
    shards i with i % process_count == process_index). Returns counts; raises if no record could be read."""
    paths = frames_lib.expand_paths(frames)
    fileio.makedirs(out_dir)
    source = tfrecord.TFRecordDataSource(paths, key_fn=frames_lib.record_video_id)
    extractor = FeatureExtractor(vision_params, vision_config, batch_frames, devices)
    stats = ExtractionStats()
    mine = [s for s in range(len(paths)) if s % process_count == process_index]
    total_records = sum(len(source.indexes[s]) for s in mine)
    progress = tqdm.tqdm(total=total_records, unit="video", desc="extracting features", mininterval=10)
    try:
        for shard in mine:
            target = output_path(out_dir, shard, len(paths))
            if fileio.exists(target) and not overwrite:
                logging.info("%s exists; keeping it", target)
                stats.shards_kept += 1
                progress.update(len(source.indexes[shard]))
                continue
            _extract_shard(source, shard, target, extractor, threads, stats, progress)
    finally:
        progress.close()
        source.close()
    stats.frames = extractor.frames_done
    if stats.videos == 0 and stats.shards_kept == 0 and total_records:
        raise RuntimeError(f"no frame record of {len(mine)} shards could be read ({stats.skipped_records} failed); "
                           "see the warnings above")
    logging.info("features: %s", stats)
    return stats


def _extract_shard(source: tfrecord.TFRecordDataSource, shard: int, target: str, extractor: FeatureExtractor,
                   threads: int, stats: ExtractionStats, progress) -> None:
    path = source.paths[shard]
    metadata = {}

    def videos():
        for record, parsed, error in _read_records(path, range(len(source.indexes[shard])), source, shard, threads):
            progress.update(1)
            if parsed is None:
                logging.warning("skipping %s", error)
                stats.skipped_records += 1
                continue
            extractor.check_frames(parsed["frames"], f"{path} record {record}")
            metadata[record] = parsed
            yield record, parsed.pop("frames")

    with tfrecord.TFRecordWriter(target) as writer:
        for record, features in extractor(videos()):
            parsed = metadata.pop(record)
            writer.write(frames_lib.make_feature_record(parsed["video_id"], parsed["duration"],
                                                        parsed["frame_times"], features), key=parsed["video_id"])
            stats.videos += 1
        if len(writer) == 0 and len(source.indexes[shard]):
            writer.abort()  # nothing readable: leave no empty shard that a rerun would take for finished work
            logging.warning("%s: no readable frame record; no output shard written", path)
            return
    stats.shards_written += 1
