"""The Grain input pipeline: JSONL examples joined to frame records, encoded, padded and batched per process.

Training (`make_train_loader`), one `grain.MapDataset` chain over example numbers:

    range(examples whose video has a record)              missing videos counted, skipped, logged once
      .shuffle(seed)                                      a new global order every epoch (grain folds in the epoch)
      [: epoch_len]                                       drop the remainder: a whole number of global batches
      [process_index :: process_count]                    processes' slices partition every epoch
      .repeat(num_epochs)                                 None: forever
      .map(load)                                          JSONL line + frame record -> encode_example -> fixed shapes
    .to_iter_dataset(read threads)                        decoding in threads, order kept
    -> skip bad records (counted) -> .batch(per-process batch) -> .mp_prefetch(workers) -> count skips

Everything is a pure function of (seed, files, process_index, process_count), so two loaders with the same arguments
yield the same batches, and `get_state()`/`set_state()` (JSON-able dicts) resume exactly where a run stopped.

Checkpointing the iterator: the iterator is a `grain.DatasetIterator`, so either
  - its state dict goes into any JSON store, or
  - orbax's CheckpointManager saves it with grain's handler (what momentor_jax/checkpoints.py does in training):
        item_handlers={"data": grain.checkpoint.CheckpointHandler()}
        manager.save(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator), ...))
        manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(iterator), ...))
    (it writes `process_<i>-of-<n>.json`; orbax's v1 API can also save the iterator itself, since grain iterators
    implement orbax's StatefulCheckpointable `save`/`load`).
A state is only valid for the same files, seed, batch size, process count and worker count (each worker's position
is part of it). With several workers, each worker batches its own slice of the example order, so batches differ
from the in-process ones (still deterministic for a given worker count); one worker gives the in-process batches.

Bad records (CRC errors, unreadable JPEGs, examples the encoder rejects) are skipped in the process that reads
them, with a warning naming the shard, record and video; each batch carries how many were skipped before it, and
the returned iterator sums them in `num_skipped_records` (exact: a finite run reconciles it at its end with the
examples it was given, so skips before a dropped remainder are counted too). Skipped too: examples whose times are
not finite, negative, reversed or past the video's end by more than encode.past_end_tolerance; records that do not
fit the model (data/video_input.py: fewer frames than num_frames, frames of another size than `image_size`, frames
where features are wanted or the reverse) and frame_times that are not finite and non-decreasing. A record's frames
become the model's through data/video_input.read_record, which evaluate uses too (resampled to num_frames, the same
one-line error). Times past the end within the tolerance are clipped and counted in `num_clipped_times`. Frame
records that cannot be framed or carry no readable video id are listed at start-up (`num_bad_frame_records`).
Start-up stops with video_input.RecordMismatch (a ValueError) when the first readable record already does not fit
the model (the whole extraction does not). Many consecutive failures, or an epoch where nothing loads,
raise. A skipped record shifts later batches by one example, so processes may end a finite run a batch apart:
train for a step count with `num_epochs=None`.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Iterator, Optional, Sequence, Union

import grain
import numpy as np
import tqdm
from absl import flags

from momentor_jax import fileio, gcs
from momentor_jax.data import frames as frames_lib
from momentor_jax.data import packing as packing_lib
from momentor_jax.data import tfrecord, video_input

SKIPPED_KEY = "_num_skipped"
CLIPPED_KEY = "_num_clipped_times"
ENCODED_KEYS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions", "placeholder_times", "target_times")
MAX_CONSECUTIVE_BAD = 1000
_SHOW_IDS = 5


# ---------------------------------------------------------------------------------------------------- JSONL examples


def expand_example_paths(patterns: Union[str, Sequence[str]]) -> list:
    """JSONL paths or globs (a list, or one string with commas; local or gs://) -> paths, in the given order, globs
    sorted."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [p for p in os.fspath(patterns).split(",") if p]
    paths = []
    for pattern in patterns:
        pattern = os.fspath(pattern)
        found = fileio.glob(pattern) if any(c in pattern for c in "*?[") else [pattern]
        if not found:
            raise FileNotFoundError(f"no example files match {pattern!r}")
        for path in found:
            if not fileio.isfile(path):
                raise FileNotFoundError(f"example file {path} does not exist")
        paths.extend(found)
    if not paths:
        raise ValueError("no example files given")
    return paths


class JsonlExamples:
    """Random access to JSONL examples by number: each line's file, byte offset and length, read with one positional
    read (`pread` locally, a ranged GET on gs://).

    Compact (a few bytes per example), picklable (files reopen lazily in each process, so grain workers can use it).
    Build with `scan_jsonl`.
    """

    def __init__(self, paths: Sequence[str], file_ids: np.ndarray, offsets: np.ndarray, lengths: np.ndarray):
        self.paths = list(paths)
        self.file_ids = np.asarray(file_ids, np.int32)
        self.offsets = np.asarray(offsets, np.int64)
        self.lengths = np.asarray(lengths, np.int32)
        self._files = fileio.RangeReader(self.paths)

    def __len__(self) -> int:
        return len(self.offsets)

    def subset(self, keep: np.ndarray) -> "JsonlExamples":
        return JsonlExamples(self.paths, self.file_ids[keep], self.offsets[keep], self.lengths[keep])

    def where(self, i: int) -> str:
        return f"{self.paths[self.file_ids[i]]} at byte {self.offsets[i]}"

    def __getitem__(self, i: int) -> dict:
        file_id = int(self.file_ids[i])
        line = self._files.read(file_id, int(self.offsets[i]), int(self.lengths[i]))
        return json.loads(line)


def scan_jsonl(patterns: Union[str, Sequence[str]]) -> tuple:
    """Reads every line once -> (JsonlExamples, video id per example). Unparsable lines or lines without a string
    `id` are skipped with a warning naming the file and line."""
    paths = expand_example_paths(patterns)
    file_ids, offsets, lengths, video_numbers = [], [], [], []
    video_number: dict = {}
    total = sum(fileio.size(p) for p in paths)
    bad = []
    with tqdm.tqdm(total=total, unit="B", unit_scale=True, desc="scanning examples", mininterval=5,
                   disable=total < (64 << 20)) as progress:
        for file_id, path in enumerate(paths):
            offset = 0
            with fileio.open(path, "rb") as f:
                for line_number, line in enumerate(f, start=1):
                    progress.update(len(line))
                    start, offset = offset, offset + len(line)
                    if not line.strip():
                        continue
                    try:
                        video_id = json.loads(line)["id"]
                        if not isinstance(video_id, str):
                            raise TypeError(f"id is {type(video_id).__name__}, not a string")
                    except (ValueError, KeyError, TypeError, RecursionError) as e:
                        bad.append(f"{path}:{line_number} ({type(e).__name__}: {e})")
                        continue
                    file_ids.append(file_id)
                    offsets.append(start)
                    lengths.append(len(line))
                    video_numbers.append(video_number.setdefault(video_id, len(video_number)))
    if bad:
        logging.warning("skipped %d unreadable example lines, e.g. %s", len(bad), "; ".join(bad[:_SHOW_IDS]))
    if not offsets:
        raise ValueError(f"no readable examples in {paths}")
    videos = np.array(list(video_number), dtype=object)
    examples = JsonlExamples(paths, np.array(file_ids), np.array(offsets), np.array(lengths))
    return examples, videos[np.array(video_numbers)]


def join_with_videos(examples: JsonlExamples, video_ids: np.ndarray, videos: frames_lib.FrameRecordIndex) -> tuple:
    """Keeps the examples whose video has a record -> (examples, number of examples dropped)."""
    has_video = {v: v in videos for v in set(video_ids.tolist())}
    keep = np.array([has_video[v] for v in video_ids], dtype=bool)
    dropped = int((~keep).sum())
    if dropped:
        missing = sorted(v for v, ok in has_video.items() if not ok)
        logging.warning("skipped %d of %d examples: %d videos have no frame record, e.g. %s", dropped, len(keep),
                        len(missing), ", ".join(missing[:_SHOW_IDS]))
    if not keep.any():
        raise ValueError(f"none of the {len(keep)} examples has its video in {videos!r}")
    return examples.subset(np.flatnonzero(keep)), dropped


# ---------------------------------------------------------------------------------------------------- one example


class Skipped:
    """Stands in for an example that failed to load; dropped (and counted) before batching."""

    def __init__(self, reason: str):
        self.reason = reason


# What a bad record can raise: TFRecord CRC/length errors, malformed Examples or JPEGs, encoder rejections.
_RECORD_ERRORS = (tfrecord.TFRecordCorruptionError, frames_lib.RecordError, ValueError, KeyError, TypeError, OSError)


class VideoCache:
    """Videos as the model takes them (read_record's output), by video id, up to `max_bytes` in all: filled as videos
    are first read and never evicted. An epoch reads every video in a new random order, so with room for all of them
    later epochs decode none, and without it the ones that fit stay (an LRU would keep the same share here and churn).
    Each loading process holds its own. Thread-safe; the cached arrays are read-only."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self._videos = {}
        self._lock = threading.Lock()

    def get(self, video_id: str):
        with self._lock:
            found = self._videos.get(video_id)
            self.hits += found is not None
            return found

    def put(self, video_id: str, video: np.ndarray, duration: float) -> None:
        video.setflags(write=False)
        with self._lock:
            if video_id not in self._videos and self.bytes + video.nbytes <= self.max_bytes:
                self._videos[video_id] = (video, duration)
                self.bytes += video.nbytes

    def __len__(self) -> int:
        return len(self._videos)

    def __getstate__(self) -> dict:  # a worker process starts with an empty cache of the same size
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_bytes"])


class LoadExample:
    """Example number -> dict of fixed-shape numpy arrays (the BATCH_KEYS of one example), or `Skipped`.

    The video comes through data/video_input.read_record, as evaluate reads it (or from `video_cache`)."""

    def __init__(self, examples: JsonlExamples, videos: frames_lib.FrameRecordIndex, tokenizer, num_frames: int,
                 max_length: int, use_features: bool = False, keep_ids: bool = False,
                 system_prompt: Optional[str] = None, image_size: Optional[int] = None,
                 video_cache: Optional[VideoCache] = None):
        self.examples = examples
        self.videos = videos
        self.tokenizer = tokenizer
        self.num_frames = num_frames
        self.max_length = max_length
        # image_size None: frames of any size (batching then needs them all alike)
        self.spec = video_input.VideoSpec(num_frames, None if use_features else image_size, use_features)
        self.keep_ids = keep_ids
        self.system_prompt = system_prompt  # None: the template's own; tiny test models need a shorter one
        self.video_cache = video_cache

    def _video_location(self, video_id: str) -> str:
        try:
            path, record = video_input.record_location(self.videos, video_id)
            return f"{path} record {record}"
        except KeyError:
            return "no frame record"

    def __call__(self, index: int):
        index = int(index)
        video_id = None
        try:
            example = self.examples[index]
            video_id = example["id"]
            return self.load(example)
        except gcs.StorageError:
            raise  # storage that cannot be reached after retries is no bad record: the run stops, in one line
        except video_input.VideoInputError as e:  # its message names the shard, record and video
            reason = f"example {self.examples.where(index)}: {e}"
        except (*_RECORD_ERRORS, RecursionError) as e:
            where = self._video_location(video_id) if video_id is not None else "unread"
            reason = (f"example {self.examples.where(index)} (video {video_id}, {where}): "
                      f"{type(e).__name__}: {e}")
        logging.warning("skipping %s", reason)
        return Skipped(reason)

    def load(self, example: dict) -> dict:
        from momentor_jax.data.encode import count_past_end, encode_example  # noqa: PLC0415

        video_id = example["id"]
        cached = self.video_cache.get(video_id) if self.video_cache is not None else None
        if cached is None:
            video, duration = video_input.read_record(self.videos, video_id, self.spec)
            if self.video_cache is not None:
                self.video_cache.put(video_id, video, duration)
        else:
            video, duration = cached
        extra = {} if self.system_prompt is None else {"system_prompt": self.system_prompt}
        out = dict(encode_example(example, self.tokenizer, duration, self.num_frames, self.max_length, **extra))
        out[CLIPPED_KEY] = np.int32(count_past_end(example, duration))
        out["features" if self.spec.use_features else "frames"] = video
        out["durations"] = np.float32(duration)
        if self.keep_ids:
            out["id"] = video_id
            out["example"] = example
        return out


# ---------------------------------------------------------------------------------------------------- skip and count


class SkipBadRecordsIterDataset(grain.IterDataset):
    """Drops `Skipped` elements, writing how many were dropped before each kept one into its SKIPPED_KEY."""

    def __init__(self, parent: grain.IterDataset, max_consecutive_bad: int = MAX_CONSECUTIVE_BAD):
        super().__init__(parent)
        self._max_consecutive_bad = max_consecutive_bad

    def __iter__(self):
        return _SkipBadRecordsIterator(self._parent.__iter__(), self._max_consecutive_bad)

    def __str__(self) -> str:
        return "SkipBadRecordsIterDataset"


class _SkipBadRecordsIterator(grain.DatasetIterator):

    def __init__(self, parent: grain.DatasetIterator, max_consecutive_bad: int):
        super().__init__(parent)
        self._max_consecutive_bad = max_consecutive_bad
        self._pending = 0      # skipped since the last element handed on
        self._loaded_any = False

    def __next__(self):
        while True:
            try:
                element = next(self._parent)
            except StopIteration:
                if self._pending and not self._loaded_any:
                    raise RuntimeError(f"every one of {self._pending} examples failed to load; "
                                       "see the warnings above for the records") from None
                raise
            if isinstance(element, Skipped):
                self._pending += 1
                if self._pending >= self._max_consecutive_bad:
                    raise RuntimeError(f"{self._pending} examples in a row failed to load; last: {element.reason}")
                continue
            self._loaded_any = True
            element[SKIPPED_KEY] = np.int32(self._pending)
            self._pending = 0
            return element

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "pending": self._pending, "loaded_any": self._loaded_any}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._pending = int(state["pending"])
        self._loaded_any = bool(state["loaded_any"])

    def __str__(self) -> str:
        return "SkipBadRecordsIterator"


class CountSkippedIterDataset(grain.IterDataset):
    """Takes SKIPPED_KEY and CLIPPED_KEY out of each batch and keeps the running totals (part of the iterator
    state); drops batches short of `batch_size`."""

    def __init__(self, parent: grain.IterDataset, batch_size: Optional[int] = None,
                 scheduled: Optional[int] = None):
        super().__init__(parent)
        self._batch_size, self._scheduled = batch_size, scheduled

    def __iter__(self):
        return LoaderIterator(self._parent.__iter__(), self._batch_size, self._scheduled)

    def __str__(self) -> str:
        return "CountSkippedIterDataset"


class LoaderIterator(grain.DatasetIterator):
    """What the loaders return: per-process batches; `num_skipped_records`, `num_clipped_times`,
    `num_missing_videos`, `num_bad_frame_records` for logging. Batches short of `batch_size` (a finite run's
    remainder) are dropped here, after their counts are taken."""

    def __init__(self, parent: grain.DatasetIterator, batch_size: Optional[int] = None,
                 scheduled: Optional[int] = None):
        super().__init__(parent)
        self.batch_size = batch_size
        self.scheduled = scheduled   # examples this process is given in all (None: forever)
        self.num_skipped_records = 0
        self.num_clipped_times = 0
        self.num_loaded = 0          # examples that loaded, dropped remainders included
        self.num_missing_videos = 0  # examples dropped at startup for want of a frame record
        self.num_bad_frame_records = 0  # frame records unreadable at startup (listed in the warnings)
        self.num_examples = 0        # examples (with a video) this loader draws from, all processes together
        self.num_examples_seen = 0   # dialogues this process has handed on (packed rows hold several)
        self.examples_per_row = 1.0  # packed: the estimate `make_train_loader` made for step counts

    def __next__(self) -> dict:
        while True:
            try:
                batch = dict(next(self._parent))
            except StopIteration:
                if self.scheduled is not None:  # every example given either loaded or was skipped
                    self.num_skipped_records = self.scheduled - self.num_loaded
                raise
            self.num_skipped_records += int(np.sum(batch.pop(SKIPPED_KEY)))
            self.num_clipped_times += int(np.sum(batch.pop(CLIPPED_KEY, 0)))
            examples = packing_lib.batch_examples(batch["segment_ids"])
            self.num_loaded += examples
            if self.batch_size is None or len(batch["segment_ids"]) == self.batch_size:
                self.num_examples_seen += examples
                return batch

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "num_skipped_records": self.num_skipped_records,
                "num_clipped_times": self.num_clipped_times, "num_loaded": self.num_loaded,
                "num_examples_seen": self.num_examples_seen}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self.num_skipped_records = int(state["num_skipped_records"])
        self.num_clipped_times = int(state.get("num_clipped_times", 0))
        self.num_loaded = int(state.get("num_loaded", 0))
        self.num_examples_seen = int(state.get("num_examples_seen", 0))

    def __str__(self) -> str:
        return "LoaderIterator"


# ---------------------------------------------------------------------------------------------------- loaders


def _config_value(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def _mixed_seed(seed: int) -> int:
    # grain shuffles epoch e with seed + e: spread user seeds apart so seed s+1 is not seed s one epoch later.
    return int(np.random.SeedSequence(int(seed)).generate_state(1)[0])


def open_examples(examples: Union[str, Sequence[str]], frames: Union[str, Sequence[str]]) -> tuple:
    """Scans the JSONL files and the frame index and joins them -> (JsonlExamples, FrameRecordIndex, dropped)."""
    videos = frames_lib.FrameRecordIndex(frames)
    all_examples, video_ids = scan_jsonl(examples)
    kept, dropped = join_with_videos(all_examples, video_ids, videos)
    logging.info("%d examples over %d videos (%d examples without a video skipped)", len(kept), len(videos),
                 dropped)
    return kept, videos, dropped


def _ensure_flags_parsed() -> None:
    # grain's worker processes read absl flags; a program that never ran absl.app has not parsed them.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_train_loader(data_config: Any, *, tokenizer, num_frames: int, max_length: int, global_batch_size: int,
                      seed: int, process_index: int = 0, process_count: int = 1, num_epochs: Optional[int] = None,
                      worker_count: int = 0, use_features: bool = False, read_threads: Optional[int] = None,
                      worker_buffer_size: int = 2, image_size: Optional[int] = None,
                      packing: Optional[packing_lib.PackingOptions] = None) -> LoaderIterator:
    """Shuffled, repeated per-process batches for training.

    data_config: has `examples` (JSONL paths or globs) and `frames` (glob, directory or list of TFRecord shards);
    optional `read_threads` (decode threads per process, default 4), `system_prompt` (only for tiny test models
    whose context cannot hold the template's) and `video_cache_mb` (VideoCache per loading process; 0: none).
    Batches hold BATCH_KEYS with the per-process batch size global_batch_size // process_count: the encoded text,
    `frames` uint8 [B, M, H, W, 3] (or `features` float32 [B, M, F] when use_features) and `durations` float32 [B].
    num_epochs None repeats forever.
    worker_count > 0 decodes in that many processes (grain mp_prefetch), 0 in this process with threads.
    image_size: the model's frame side; records of another size are skipped and counted (None: not checked).
    packing: rows of several dialogues (data/packing.py; `frames` / `features` gain a per-row video axis and
    `num_videos` [B] comes along); the batch size then counts rows, and the iterator's `examples_per_row` is
    estimated from up to PACKING_SAMPLE dialogues' lengths (text only, seeded) for step counts.
    """
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} processes")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    batch_size = global_batch_size // process_count
    examples, videos, dropped = open_examples(_config_value(data_config, "examples"),
                                              _config_value(data_config, "frames"))
    epoch_length = len(examples) // global_batch_size * global_batch_size
    if epoch_length == 0:
        raise ValueError(f"{len(examples)} examples (with a video) are fewer than one global batch of "
                         f"{global_batch_size}")
    if read_threads is None:
        read_threads = int(_config_value(data_config, "read_threads", 4))

    cache_mb = float(_config_value(data_config, "video_cache_mb", 0) or 0)
    if cache_mb < 0:
        raise ValueError(f"video_cache_mb is {cache_mb}; it must be >= 0")
    load = LoadExample(examples, videos, tokenizer, num_frames, max_length, use_features=use_features,
                       system_prompt=_config_value(data_config, "system_prompt"), image_size=image_size,
                       video_cache=VideoCache(int(cache_mb * 2 ** 20)) if cache_mb else None)
    video_input.check_first_record(videos, [examples[i]["id"] for i in range(min(len(examples), 8))], load.spec)
    ds = grain.MapDataset.range(len(examples)).shuffle(seed=_mixed_seed(seed))
    ds = ds[:epoch_length][process_index::process_count]
    scheduled = None if num_epochs is None else len(ds) * num_epochs
    ds = ds.repeat(num_epochs).map(load)
    # A frame record is large (300 x 224 x 224 x 3 bytes): keep grain's read-ahead to a couple of batches.
    read_options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2 * batch_size,
                                                                                         read_threads, 1))
    it_ds = SkipBadRecordsIterDataset(ds.to_iter_dataset(read_options))
    if packing is not None:
        if packing.max_length != max_length:
            raise ValueError(f"packing rows of {packing.max_length} tokens, but max_length is {max_length}")
        it_ds = packing_lib.PackIterDataset(it_ds, packing)
    it_ds = it_ds.batch(batch_size, drop_remainder=False)  # LoaderIterator drops the remainder after counting it
    if worker_count > 0:
        _ensure_flags_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                               per_worker_buffer_size=worker_buffer_size))
    iterator = iter(CountSkippedIterDataset(it_ds, batch_size, scheduled))
    iterator.num_missing_videos = dropped
    iterator.num_bad_frame_records = videos.num_bad_records
    iterator.num_examples = len(examples)
    iterator.video_cache = load.video_cache  # None without one; with workers each fills its own, and this one none
    if packing is not None:
        iterator.examples_per_row = estimate_examples_per_row(load, packing, seed)
    return iterator


PACKING_SAMPLE = 2048


def estimate_examples_per_row(load: LoadExample, packing: packing_lib.PackingOptions, seed: int) -> float:
    """Dialogues per packed row over a seeded sample of the examples, encoded without their videos."""
    from momentor_jax.data.encode import encode_example  # noqa: PLC0415

    extra = {} if load.system_prompt is None else {"system_prompt": load.system_prompt}

    def length(index: int) -> Optional[int]:
        try:
            # Lengths do not depend on the times: a duration past every time keeps the time checks quiet.
            encoded = encode_example(load.examples[index], load.tokenizer, 1e9, load.num_frames, load.max_length,
                                     **extra)
        except (ValueError, KeyError, TypeError):
            return None  # counted when the loader reaches it
        return packing_lib.real_length(encoded)

    count = min(PACKING_SAMPLE, len(load.examples))
    lengths = packing_lib.sample_lengths(length, count, len(load.examples), seed)
    if not lengths:
        raise RuntimeError(f"none of {count} sampled examples could be encoded; see the examples' format")
    estimate = packing_lib.estimate_examples_per_row(lengths, packing)
    logging.info("packing: %.2f dialogues per row of %d tokens (estimated from %d dialogues)", estimate,
                 packing.max_length, len(lengths))
    return estimate


class EvalExamples:
    """One deterministic pass over examples in file order (this process's slice), unbatched, ids kept.

    Each item: the encoded arrays (when a tokenizer is given), `frames` or `features`, `durations` (a float32
    scalar), `id` (the video id) and `example` (the JSONL record). Bad records are skipped and counted in
    `num_skipped_records` (per pass); examples without a frame record in `num_missing_videos`. max_examples keeps
    the first that many examples (with a video) before the processes split them; `num_total` counts them.
    """

    def __init__(self, examples: Union[str, Sequence[str]], frames: Union[str, Sequence[str]], *, tokenizer,
                 num_frames: int, max_length: int, process_index: int = 0, process_count: int = 1,
                 use_features: bool = False, read_threads: int = 4, system_prompt: Optional[str] = None,
                 image_size: Optional[int] = None, max_examples: Optional[int] = None):
        kept, self.videos, self.num_missing_videos = open_examples(examples, frames)
        self.num_bad_frame_records = self.videos.num_bad_records
        self._load = LoadExample(kept, self.videos, tokenizer, num_frames, max_length, use_features=use_features,
                                 keep_ids=True, system_prompt=system_prompt, image_size=image_size)
        self.num_total = len(kept) if max_examples is None else min(len(kept), max_examples)
        self._indices = grain.MapDataset.range(self.num_total)[process_index::process_count]
        self._read_threads = read_threads
        self.num_skipped_records = 0
        self.num_clipped_times = 0

    def __len__(self) -> int:
        return len(self._indices)

    def __iter__(self) -> Iterator[dict]:
        ds = self._indices.map(self._load).to_iter_dataset(
            grain.ReadOptions(num_threads=self._read_threads, prefetch_buffer_size=max(2 * self._read_threads, 1)))
        loaded, self.num_skipped_records, self.num_clipped_times = 0, 0, 0
        for element in ds:
            if isinstance(element, Skipped):
                self.num_skipped_records += 1
                continue
            loaded += 1
            self.num_clipped_times += int(element.pop(CLIPPED_KEY, 0))
            yield element
        if loaded == 0 and len(self):
            raise RuntimeError(f"none of the {len(self)} evaluation examples loaded; see the warnings above")


def make_eval_examples(data_config: Any, *, tokenizer, num_frames: int, max_length: int, process_index: int = 0,
                       process_count: int = 1, use_features: bool = False,
                       image_size: Optional[int] = None, max_examples: Optional[int] = None) -> EvalExamples:
    """`EvalExamples` over data_config's `examples` and `frames` (no shuffle, no repeat, every example once)."""
    return EvalExamples(_config_value(data_config, "examples"), _config_value(data_config, "frames"),
                        tokenizer=tokenizer, num_frames=num_frames, max_length=max_length,
                        process_index=process_index, process_count=process_count, use_features=use_features,
                        read_threads=int(_config_value(data_config, "read_threads", 4)),
                        system_prompt=_config_value(data_config, "system_prompt"), image_size=image_size,
                        max_examples=max_examples)
