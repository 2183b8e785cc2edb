"""Videos -> sharded TFRecords of frame records (one Example per video), resumable and parallel.

Video v goes to shard crc32(v) % S, so a re-run with the same flags finds every finished video where it left it:
videos already in a shard are skipped, and a shard that gains videos is rewritten atomically (old records copied,
new ones appended, temp file renamed). Videos that cannot be decoded are skipped and listed in
`extract_failures.jsonl`; a re-run tries them again. The videos are local files; the output directory may be local
or gs:// (through momentor_jax/fileio.py: there a shard is uploaded as it is written and appears whole when done).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import json
import logging
import multiprocessing
import os
import zlib
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from momentor_jax import fileio
from momentor_jax.data import frames as frames_lib
from momentor_jax.data import tfrecord
from momentor_jax.data import video as video_lib

SHARD_PREFIX = "frames"
FAILURES_FILE = "extract_failures.jsonl"
CONFIG_FILE = "extract_config.json"


@dataclasses.dataclass
class ExtractSummary:
    extracted: int
    already_done: int
    failed: list  # [(video_id, reason)]
    shards: list  # every shard path of this run's layout that exists
    failures_path: str

    def line(self) -> str:
        return (f"extracted {self.extracted} videos, {self.already_done} already done, {len(self.failed)} failed"
                + (f" (listed in {self.failures_path})" if self.failed else ""))


def video_id_of(filename: str) -> str:
    """The id is the file name up to its first dot (YouTube ids have none)."""
    return os.path.basename(filename).split(".", 1)[0]


def list_videos(video_dir: str) -> dict:
    """{video_id: path} for the video files in a directory (hidden and partial downloads left out)."""
    videos = {}
    for name in sorted(os.listdir(video_dir)):
        if name.startswith(".") or not name.lower().endswith(video_lib.VIDEO_EXTENSIONS):
            continue
        video_id = video_id_of(name)
        if video_id in videos:
            logging.warning("%s: two files for video %s; using %s", video_dir, video_id, videos[video_id])
            continue
        videos[video_id] = os.path.join(video_dir, name)
    return videos


def shard_of(video_id: str, num_shards: int) -> int:
    return zlib.crc32(video_id.encode("utf-8")) % num_shards


def shard_paths(out_dir: str, num_shards: int) -> list:
    return [fileio.join(out_dir, frames_lib.shard_name(SHARD_PREFIX, s, num_shards)) for s in range(num_shards)]


@dataclasses.dataclass(frozen=True)
class _Task:
    video_id: str
    path: str
    shard: int
    num_frames: int
    size: int
    jpeg_quality: int


def extract_record(task: _Task) -> tuple:
    """Worker: (video_id, serialized frame record or None, failure reason or None)."""
    try:
        decoded = video_lib.decode_frames(task.path, task.num_frames, task.size)
        record = frames_lib.make_frame_record(task.video_id, decoded.duration, decoded.frame_times, decoded.frames,
                                              task.jpeg_quality)
        return task.video_id, record, None
    except Exception as e:  # any decoder failure is one skipped video, never the end of the run
        return task.video_id, None, f"{type(e).__name__}: {e}"


def _crash_result(task: _Task) -> tuple:
    return task.video_id, None, "worker process crashed while decoding"


def _run_isolated(fn: Callable, task) -> tuple:
    """Runs one task in its own process, so a crash is pinned on that task."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, task).result()
        except concurrent.futures.process.BrokenProcessPool:
            return _crash_result(task)


def run_ordered(fn: Callable, tasks: Iterable, workers: int) -> Iterator:
    """fn over tasks in order; with workers > 1 in spawned processes, at most 2 x workers tasks in flight.

    A worker that dies (e.g. a decoder segfault) breaks the pool: the tasks it had in flight are rerun one by one
    in fresh processes, and the one that crashes again is reported through `_crash_result`.
    """
    tasks = iter(tasks)
    if workers <= 1:
        yield from map(fn, tasks)
        return
    context = multiprocessing.get_context("spawn")
    while True:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            window = collections.deque((t, pool.submit(fn, t)) for t in itertools.islice(tasks, 2 * workers))
            if not window:
                return
            broken = False
            while window:
                task, future = window.popleft()
                try:
                    result = future.result()
                except concurrent.futures.process.BrokenProcessPool:
                    broken = True
                    break
                yield result
                for nxt in itertools.islice(tasks, 1):
                    window.append((nxt, pool.submit(fn, nxt)))
        if not broken:
            return
        for t in [task] + [t for t, _ in window]:
            yield _run_isolated(fn, t)


def _check_config(out_dir: str, config: dict) -> None:
    """Refuses to mix records made with other frame counts, sizes or shard counts in one directory."""
    path = fileio.join(out_dir, CONFIG_FILE)
    if fileio.exists(path):
        previous = json.loads(fileio.read_text(path))
        for key in ("num_frames", "size", "num_shards"):
            if previous.get(key) != config[key]:
                raise ValueError(f"{path}: {out_dir} holds records made with {key}={previous.get(key)}, "
                                 f"not {config[key]}; use another --out_dir")
    fileio.write_text(path, json.dumps(config, indent=1))


def _existing_ids(path: str) -> list:
    """Video ids already in a finished shard; a shard that fails its checks counts as empty (it is rewritten)."""
    if not fileio.exists(path):
        return []
    try:
        return list(tfrecord.load_index(path, key_fn=frames_lib.record_video_id).keys)
    except (tfrecord.TFRecordCorruptionError, frames_lib.RecordError) as e:
        logging.warning("ignoring damaged shard %s (it will be rewritten): %s", path, e)
        return []


def _remove_stale_temps(out_dir: str) -> None:
    if fileio.is_remote(out_dir):  # remote shards are written in place and appear whole: no temp files
        return
    for tmp in fileio.glob(fileio.join(out_dir, f"{SHARD_PREFIX}-*{frames_lib.SHARD_SUFFIX}.tmp-*")):
        fileio.remove(tmp)


def _open_shard(path: str, keep_existing: bool) -> tfrecord.TFRecordWriter:
    """A writer for the shard's replacement, holding the shard's current records first."""
    writer = tfrecord.TFRecordWriter(path, atomic=True)
    if keep_existing and fileio.exists(path):
        for data in tfrecord.iter_records(path):
            writer.write(data, key=frames_lib.record_video_id(data))
    return writer


def extract_frames(video_dir: str, out_dir: str, num_frames: int = 300, size: int = 224, num_shards: int = 1,
                   workers: int = 1, jpeg_quality: int = 90, progress: bool = True) -> ExtractSummary:
    """Writes out_dir/frames-XXXXX-of-YYYYY.tfrecord (+ .index) for every video in video_dir."""
    if num_frames < 1 or size < 1 or num_shards < 1 or not 1 <= jpeg_quality <= 100:
        raise ValueError("num_frames, size and num_shards must be positive and jpeg_quality in [1, 100]")
    fileio.makedirs(out_dir)
    _check_config(out_dir, {"num_frames": num_frames, "size": size, "num_shards": num_shards,
                            "jpeg_quality": jpeg_quality})
    _remove_stale_temps(out_dir)
    paths = shard_paths(out_dir, num_shards)
    existing = [_existing_ids(p) for p in paths]
    damaged = [fileio.exists(p) and not ids for p, ids in zip(paths, existing)]
    done = set(itertools.chain.from_iterable(existing))
    videos = list_videos(video_dir)
    tasks = sorted((_Task(v, p, shard_of(v, num_shards), num_frames, size, jpeg_quality)
                    for v, p in videos.items() if v not in done), key=lambda t: (t.shard, t.video_id))
    remaining = collections.Counter(t.shard for t in tasks)
    already_done = sum(1 for v in videos if v in done)

    extracted, failed = 0, []
    writer, writer_shard, written = None, None, 0
    results = run_ordered(extract_record, tasks, workers)
    try:
        for task, (video_id, record, reason) in tqdm(zip(tasks, results), total=len(tasks),
                                                       desc="extracting frames", disable=not progress):
            if writer_shard != task.shard:
                writer = _open_shard(paths[task.shard], keep_existing=bool(existing[task.shard]))
                writer_shard, written = task.shard, 0
            if record is None:
                failed.append((video_id, reason))
                logging.warning("skipping %s: %s", task.path, reason)
            else:
                writer.write(record, key=video_id)
                written += 1
                extracted += 1
            remaining[task.shard] -= 1
            if remaining[task.shard] == 0:
                if written or damaged[task.shard]:
                    writer.close()
                else:  # nothing new: the shard on disk stays as it was
                    writer.abort()
                writer, writer_shard = None, None
    finally:
        results.close()
        if writer is not None:  # interrupted: the shard being written is dropped, finished ones stay
            writer.abort()

    failures_path = fileio.join(out_dir, FAILURES_FILE)
    fileio.write_text(failures_path, "".join(
        json.dumps({"video_id": video_id, "path": videos[video_id], "reason": reason}) + "\n"
        for video_id, reason in failed))
    return ExtractSummary(extracted, already_done, failed, [p for p in paths if fileio.exists(p)], failures_path)
