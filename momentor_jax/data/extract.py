"""Videos -> sharded TFRecords of frame records (one Example per video), resumable and parallel.

Video v goes to shard crc32(v) % S, so a re-run with the same flags finds every finished video where it left it:
videos already in a shard are skipped, and a shard that gains videos is rewritten atomically (old records copied,
new ones appended, temp file renamed). Videos that cannot be decoded are skipped and listed in
`extract_failures.jsonl`; a re-run tries them again. The videos are local files; the output directory may be local
or gs:// (through momentor_jax/fileio.py: there a shard is uploaded as it is written and appears whole when done).

A shard that fails its checks (a flipped bit, a truncated tail) is repaired, not dropped: its intact records are
kept, the videos of the damaged ones (named by the old sidecar index where it has them) are extracted again from
--video_dir, and the summary lists per shard what was damaged, redone and lost (no video file to redo it from; those
also count as failed). Video ids come from file names by data/video_ids.py's rule; two files with one id stop the
run before anything is written.
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
from momentor_jax.data import attrition
from momentor_jax.data import frames as frames_lib
from momentor_jax.data import tfrecord
from momentor_jax.data import video as video_lib
from momentor_jax.data import video_ids

SHARD_PREFIX = "frames"
FAILURES_FILE = "extract_failures.jsonl"
CONFIG_FILE = "extract_config.json"


@dataclasses.dataclass(kw_only=True)
class ExtractSummary(attrition.LocalRun):
    extracted: int
    shards: list  # every shard path of this run's layout that exists
    repaired: list = dataclasses.field(default_factory=list)  # [ShardRepair] of the damaged shards found

    def line(self) -> str:
        redone = sum(len(r.redone) for r in self.repaired)
        return (f"extracted {self.extracted} videos, {self.already_done} already done, {len(self.failed)} failed"
                + (f", {len(self.repaired)} damaged shards repaired ({redone} videos redone)" if self.repaired else "")
                + self.listed(bool(self.failed)))


@dataclasses.dataclass
class ShardRepair:
    """A damaged shard found by a re-run: what its checks said, what was kept, redone and lost."""
    path: str
    problems: list   # "file: record i at byte b: why"
    kept: int        # intact records copied into the rewritten shard
    redone: list     # video ids extracted again because their record was damaged
    lost: list       # video ids whose record was damaged and whose video file is not in --video_dir
    unknown: int     # damaged records whose video id no index recorded

    def lines(self) -> list:
        out = [f"repaired {self.path}: kept {self.kept} intact records; {len(self.problems)} problems: "
               + "; ".join(self.problems)]
        if self.redone:
            out.append(f"  redone from the videos: {', '.join(self.redone)}")
        if self.lost:
            out.append(f"  lost (no video file to redo them): {', '.join(self.lost)}")
        if self.unknown:
            out.append(f"  {self.unknown} damaged records had no id in the index; every video of --video_dir "
                       "missing from the shard was extracted")
        return out


def video_id_of(filename: str) -> str:
    """The id of a video file: its name without the video extension (video_ids' rule, used everywhere)."""
    video_id = video_ids.video_id_from_filename(os.path.basename(filename))
    if video_id is None:
        raise ValueError(f"{filename} is not a video file (extensions: {', '.join(video_ids.VIDEO_EXTENSIONS)})")
    return video_id


def list_videos(video_dir: str) -> dict:
    """{video_id: path} for the video files in a directory (hidden files left out); two files with one id are an
    error (video_ids.VideoIdCollision)."""
    return video_ids.list_video_files(video_dir, lambda d: os.listdir(d), os.path.join)


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
    except Exception as e:  # noqa: BLE001 (any decoder failure is one skipped video, never the end of the run)
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


@dataclasses.dataclass
class _Existing:
    ids: list                 # video ids of the shard's intact records
    keep: list                # (offset, length, video_id) of those records
    problems: list            # empty for a sound shard
    damaged_ids: list         # ids of the damaged records, as far as the old sidecar knows them
    unknown: int = 0          # damaged records (or an unframeable tail) no sidecar names


def _existing(path: str) -> _Existing:
    """What a finished shard holds; a shard that fails its checks is salvaged record by record."""
    if not fileio.exists(path):
        return _Existing([], [], [], [])
    try:
        index = tfrecord.load_index(path, key_fn=frames_lib.record_video_id)
        return _Existing(list(index.keys), [], [], [])
    except (tfrecord.TFRecordCorruptionError, frames_lib.RecordError):
        pass
    old = tfrecord.saved_index(path)
    old_keys = dict(zip(old.offsets, old.keys)) if old is not None and old.keys is not None else {}
    scanned = tfrecord.scan_index(path, key_fn=frames_lib.record_video_id, salvage=True)
    keep = [(o, n, k) for o, n, k in zip(scanned.offsets, scanned.lengths, scanned.keys) if k is not None]
    kept_offsets = {o for o, _, _ in keep}
    damaged_ids, unknown = [], 0
    for offset in [o for o in scanned.offsets if o not in kept_offsets]:
        if old_keys.get(offset) is not None:
            damaged_ids.append(old_keys[offset])
        else:
            unknown += 1
    scan_end = scanned.end()
    if scan_end < scanned.size:  # an unframeable tail: the old index may know what was there
        tail = [k for o, k in old_keys.items() if o >= scan_end and k is not None]
        damaged_ids.extend(tail)
        unknown += 0 if tail else 1
    kept_ids = {k for _, _, k in keep}
    damaged_ids = sorted(set(damaged_ids) - kept_ids)
    return _Existing([k for _, _, k in keep], keep, scanned.problems, damaged_ids, unknown)


def _remove_stale_temps(out_dir: str) -> None:
    if fileio.is_remote(out_dir):  # remote shards are written in place and appear whole: no temp files
        return
    for tmp in fileio.glob(fileio.join(out_dir, f"{SHARD_PREFIX}-*{frames_lib.SHARD_SUFFIX}.tmp-*")):
        fileio.remove(tmp)


def _open_shard(path: str, existing: _Existing) -> tfrecord.TFRecordWriter:
    """A writer for the shard's replacement, holding the shard's current (intact) records first."""
    writer = tfrecord.TFRecordWriter(path, atomic=True)
    if not existing.ids:
        return writer
    if existing.keep:  # a salvaged shard: copy the intact records one by one
        reader = fileio.RangeReader([path])
        try:
            for offset, length, video_id in existing.keep:
                writer.write(tfrecord.read_record_at(reader, 0, 0, offset, length), key=video_id)
        finally:
            reader.close()
    else:
        for data in tfrecord.iter_records(path):
            writer.write(data, key=frames_lib.record_video_id(data))
    return writer


def extract_frames(video_dir: str, out_dir: str, num_frames: int = 300, size: int = 224, num_shards: int = 1,
                   workers: int = 1, jpeg_quality: int = 90, progress: bool = True) -> ExtractSummary:
    """Writes out_dir/frames-XXXXX-of-YYYYY.tfrecord (+ .index) for every video in video_dir."""
    if num_frames < 1 or size < 1 or num_shards < 1 or not 1 <= jpeg_quality <= 100:
        raise ValueError("num_frames, size and num_shards must be positive and jpeg_quality in [1, 100]")
    videos = list_videos(video_dir)  # before anything is written: an id collision stops the run here
    fileio.makedirs(out_dir)
    _check_config(out_dir, {"num_frames": num_frames, "size": size, "num_shards": num_shards,
                            "jpeg_quality": jpeg_quality})
    _remove_stale_temps(out_dir)
    paths = shard_paths(out_dir, num_shards)
    existing = [_existing(p) for p in paths]
    damaged = [bool(e.problems) for e in existing]
    done = set(itertools.chain.from_iterable(e.ids for e in existing))
    tasks = sorted((_Task(v, p, shard_of(v, num_shards), num_frames, size, jpeg_quality)
                    for v, p in videos.items() if v not in done), key=lambda t: (t.shard, t.video_id))
    remaining = collections.Counter(t.shard for t in tasks)
    already_done = sum(1 for v in videos if v in done)
    repairs = {}
    for shard, found in enumerate(existing):
        if found.problems:
            repairs[shard] = ShardRepair(paths[shard], found.problems, len(found.keep),
                                         [v for v in found.damaged_ids if v in videos],
                                         [v for v in found.damaged_ids if v not in videos], found.unknown)
            for line in repairs[shard].lines():
                logging.warning("%s", line)

    extracted, failed = 0, []
    writer, writer_shard, written = None, None, 0
    results = run_ordered(extract_record, tasks, workers)
    try:
        for task, (video_id, record, reason) in tqdm(zip(tasks, results), total=len(tasks),
                                                       desc="extracting frames", disable=not progress):
            if writer_shard != task.shard:
                writer = _open_shard(paths[task.shard], existing[task.shard])
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
                    damaged[task.shard] = False
                else:  # nothing new: the shard on disk stays as it was
                    writer.abort()
                writer, writer_shard = None, None
    finally:
        results.close()
        if writer is not None:  # interrupted: the shard being written is dropped, finished ones stay
            writer.abort()
    for shard in [s for s, still in enumerate(damaged) if still]:  # damaged shards with nothing to redo
        _open_shard(paths[shard], existing[shard]).close()

    failures_path = fileio.join(out_dir, FAILURES_FILE)
    for repair in repairs.values():
        failed.extend((v, f"its record in {repair.path} was damaged and --video_dir has no file for it")
                      for v in repair.lost)
    fileio.write_text(failures_path, "".join(
        json.dumps({"video_id": video_id, "path": videos.get(video_id), "reason": reason}) + "\n"
        for video_id, reason in failed))
    return ExtractSummary(extracted=extracted, already_done=already_done, failed=failed, failures_path=failures_path,
                          shards=[p for p in paths if fileio.exists(p)], repaired=list(repairs.values()))
