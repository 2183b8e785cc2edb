"""Apache Beam pipelines for the three preprocessing stages: download, frames, features (any Beam runner).

The per-video functions of the single-machine tools run inside DoFns, so a record written here is the record the
single-machine tool writes for that video:
    download  download.download_one            -> <video_path>/<id>.<ext>
    frames    extract.extract_record           -> <out_dir>/frames-SSSSS-of-NNNNN.tfrecord (+ .index)
    features  features.FeatureExtractor (ViT)  -> <out_dir>/features-SSSSS-of-NNNNN.tfrecord (+ .index)

Frames: video v belongs to shard extract.shard_of(v, N) (crc32 of the id mod N, as in the single-machine tool). A
DoFn decodes one video (in a child process, so a decoder crash costs one video, not the worker) and stages its
record as <out_dir>/.staging-frames/<id>.example; a GroupByKey on the shard number then gives every shard to one
step, which writes the shard's records (those already in it plus the staged ones) sorted by video id through an
atomic TFRecordWriter and removes the staged files. A fresh run therefore writes the same shard bytes as the
single-machine tool; a rerun or a retried step writes identical bytes; a run that dies after decoding keeps its
staged records for the next one. Videos already in a shard are skipped when the pipeline is built (resume);
a damaged shard keeps its intact records, and its damaged videos are decoded again (as extract.py repairs it).

Features: one step per input shard (the single-machine tool's unit), the model loaded once per DoFn instance in
setup(); output shards that exist are kept unless overwrite.

Every pipeline ends with one step that writes <stage>_failures.jsonl and <stage>_summary.json (attrition.py) into
its output directory, so the launcher reads results from storage whatever the runner. Runners and their options
come from `pipeline_args` (e.g. ["--runner=DataflowRunner", "--project=P", "--region=R",
"--temp_location=gs://B/tmp", "--setup_file=./setup.py"]). apache_beam is imported by this module only.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from typing import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from momentor_jax import fileio
from momentor_jax.data import attrition
from momentor_jax.data import download as download_lib
from momentor_jax.data import extract
from momentor_jax.data import frames as frames_lib
from momentor_jax.data import tfrecord
from momentor_jax.data import video_ids as id_rules

STAGING_DIR = ".staging-frames"
STAGED_SUFFIX = ".example"
METRICS_NAMESPACE = "momentor_jax"
_log = logging.getLogger(__name__)


@dataclasses.dataclass
class StageRun:
    summary: attrition.StageSummary
    failures_path: str
    summary_path: str
    counters: dict  # Beam counters of this run {name: value} (e.g. model_loads)

    def line(self) -> str:
        return self.summary.line() + (f" (failures listed in {self.failures_path})" if self.summary.failed else "")


def _counter(name: str):
    return beam.metrics.Metrics.counter(METRICS_NAMESPACE, name)


def _run(pipeline: beam.Pipeline, out_dir: str, stage: str) -> StageRun:
    result = pipeline.run()
    result.wait_until_finish()
    counters = {}
    try:
        query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(METRICS_NAMESPACE))
        for counter in query["counters"]:
            counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + counter.committed
    except (NotImplementedError, AttributeError, KeyError):  # a runner without metrics: the summary file is enough
        pass
    return StageRun(attrition.read_summary(out_dir, stage),
                    fileio.join(out_dir, attrition.FAILURES_FILE.format(stage=stage)),
                    fileio.join(out_dir, attrition.SUMMARY_FILE.format(stage=stage)), counters)


def _pipeline(pipeline_args: Sequence[str]) -> beam.Pipeline:
    """A pipeline on the runner the options name; DirectRunner means Beam's FnApiRunner.

    Beam's DirectRunner first fetches its Prism binary from GitHub at run time and hands the pipeline to it when it
    can; the FnApiRunner is the local runner it otherwise uses, runs offline, and is the one whose
    --direct_num_workers / --direct_running_mode=multi_processing give real worker processes. (--runner=PrismRunner
    still selects Prism.)
    """
    options = PipelineOptions(list(pipeline_args))
    runner = options.view_as(StandardOptions).runner
    if runner in (None, "DirectRunner", "SwitchingDirectRunner"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner  # noqa: PLC0415
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


def _write_report(_, out_dir: str, stage: str, requested: int, already_done: int, rows: list, done: int) -> None:
    summary = attrition.summarize(stage, requested, already_done, done, rows)
    attrition.write_report(out_dir, summary, rows)
    _log.info("%s", summary.line())


def _report(pipeline: beam.Pipeline, failures, done, out_dir: str, stage: str, requested: int,
            already_done: int) -> None:
    """The last step: failure rows (a PCollection of dicts) and done counts (of ints) -> the two report files."""
    rows = failures | f"{stage} failures" >> beam.combiners.ToList()
    total = done | f"{stage} done" >> beam.CombineGlobally(sum)
    _ = (pipeline | f"{stage} report" >> beam.Create([None])
         | f"write {stage} report" >> beam.Map(_write_report, out_dir, stage, requested, already_done,
                                               rows=beam.pvalue.AsSingleton(rows),
                                               done=beam.pvalue.AsSingleton(total)))


@contextlib.contextmanager
def _local_file(path: str):
    """The path itself when local; a temporary local copy of a remote object (decoders need a file)."""
    if not fileio.is_remote(path):
        yield path
        return
    suffix = os.path.splitext(path)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        with fileio.open(path, "rb") as source:
            shutil.copyfileobj(source, tmp, 1 << 22)
        tmp.flush()
        yield tmp.name


# ------------------------------------------------------------------------------------------------ frames


def list_videos(video_dir: str) -> dict:
    """{video_id: path} of a local or remote directory, by the single-machine tool's id rule (video_ids.py)."""
    if not fileio.is_remote(video_dir):
        return extract.list_videos(video_dir)
    return id_rules.list_video_files(video_dir, fileio.listdir, fileio.join)


def staged_path(out_dir: str, video_id: str) -> str:
    return fileio.join(out_dir, STAGING_DIR, video_id + STAGED_SUFFIX)


def _staged_ids(out_dir: str) -> set:
    staging = fileio.join(out_dir, STAGING_DIR)
    if not fileio.isdir(staging):
        return set()
    return {name[:-len(STAGED_SUFFIX)] for name in fileio.listdir(staging)
            if name.endswith(STAGED_SUFFIX) and not name.startswith(".")}


class _ExtractFrames(beam.DoFn):
    """(video_id, path) -> (shard, video_id) once the frame record is staged; failure rows on the 'failed' tag.

    Decoding runs in one child process per DoFn instance: a decoder that crashes takes the child down, the video is
    recorded as failed and a new child starts.
    """

    def __init__(self, out_dir: str, num_frames: int, size: int, num_shards: int, jpeg_quality: int):
        self.out_dir, self.num_frames, self.size = out_dir, num_frames, size
        self.num_shards, self.jpeg_quality = num_shards, jpeg_quality
        self._pool = None

    def setup(self):
        fileio.makedirs(fileio.join(self.out_dir, STAGING_DIR))
        self._pool = None

    def _decode(self, task) -> tuple:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return self._pool.submit(extract.extract_record, task).result()
        except concurrent.futures.process.BrokenProcessPool:
            self._pool = None
            return extract._crash_result(task)

    def process(self, element):
        video_id, path = element
        shard = extract.shard_of(video_id, self.num_shards)
        with _local_file(path) as local:
            task = extract._Task(video_id, local, shard, self.num_frames, self.size, self.jpeg_quality)
            _, record, reason = self._decode(task)
        if record is None:
            _counter("frames_failed").inc()
            _log.warning("skipping %s: %s", path, reason)
            yield beam.pvalue.TaggedOutput("failed", attrition.failure_row(video_id, attrition.FRAMES, reason))
            return
        fileio.write_bytes(staged_path(self.out_dir, video_id), record)
        _counter("frames_decoded").inc()
        yield shard, video_id

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _shard_records(path: str) -> tuple:
    """({video_id: record} of the shard's intact records, whether it is damaged), as the single-machine tool keeps
    them: a damaged shard is salvaged record by record (its damaged videos were left out of the launcher's done set,
    so they are decoded again)."""
    existing = extract._existing(path)
    if not existing.keep:
        records = {frames_lib.record_video_id(d): d for d in tfrecord.iter_records(path)} if existing.ids else {}
        return records, bool(existing.problems)
    _log.warning("%s is damaged: keeping its %d intact records", path, len(existing.keep))
    reader = fileio.RangeReader([path])
    try:
        return {video_id: tfrecord.read_record_at(reader, 0, 0, offset, length)
                for offset, length, video_id in existing.keep}, True
    finally:
        reader.close()


class _WriteShard(beam.DoFn):
    """(shard, [video ids]) -> number of videos added: the shard's records plus the staged ones, by video id.

    The shard on disk is read when the step runs, not when the pipeline was built, so a retried step (its staged
    files already moved into the shard) finds its videos there and writes nothing. A damaged shard is rewritten
    with its intact records even when nothing was added (an empty id asks for that check alone).
    """

    def __init__(self, out_dir: str, num_shards: int):
        self.out_dir, self.num_shards = out_dir, num_shards

    def process(self, element):
        shard, ids = element
        ids = sorted({video_id for video_id in ids if video_id})
        path = extract.shard_paths(self.out_dir, self.num_shards)[shard]
        records, damaged = _shard_records(path)
        added = {}
        for video_id in ids:
            staged = staged_path(self.out_dir, video_id)
            if fileio.exists(staged):
                if video_id not in records:
                    added[video_id] = fileio.read_bytes(staged)
            elif video_id not in records:
                raise FileNotFoundError(f"{staged}: the staged frame record of {video_id} is gone and shard "
                                        f"{path} does not hold it")
        if added or damaged:
            records.update(added)
            writer = tfrecord.TFRecordWriter(path, atomic=True)
            try:
                for video_id in sorted(records):
                    writer.write(records[video_id], key=video_id)
            except BaseException:
                writer.abort()
                raise
            writer.close()
            _counter("shards_written").inc()
        for video_id in ids:  # every staged record is now in the shard
            staged = staged_path(self.out_dir, video_id)
            if fileio.exists(staged):
                fileio.remove(staged)
        yield len(added)


def _plan_frames(video_dir: str, out_dir: str, num_shards: int) -> tuple:
    """(videos {id: path}, done ids, staged ids to write, [(id, path)] to decode, damaged shard numbers), decided
    on the launcher."""
    videos = list_videos(video_dir)
    done, damaged = set(), []
    for shard, path in enumerate(extract.shard_paths(out_dir, num_shards)):
        existing = extract._existing(path)
        done.update(existing.ids)
        if existing.problems:
            damaged.append(shard)
    staged = _staged_ids(out_dir)
    for video_id in sorted(staged & done):  # moved into its shard by a run that stopped before cleaning up
        fileio.remove(staged_path(out_dir, video_id))
    staged = {v for v in staged - done if v in videos}
    todo = sorted((v, p) for v, p in videos.items() if v not in done and v not in staged)
    return videos, done, staged, todo, damaged


def extract_frames(video_dir: str, out_dir: str, pipeline_args: Sequence[str], num_frames: int = 300,
                   size: int = 224, num_shards: int = 1, jpeg_quality: int = 90) -> StageRun:
    """The Beam twin of extract.extract_frames: same shard files, same records, plus frames_{failures,summary}."""
    if num_frames < 1 or size < 1 or num_shards < 1 or not 1 <= jpeg_quality <= 100:
        raise ValueError("num_frames, size and num_shards must be positive and jpeg_quality in [1, 100]")
    fileio.makedirs(out_dir)
    extract._check_config(out_dir, {"num_frames": num_frames, "size": size, "num_shards": num_shards,
                                    "jpeg_quality": jpeg_quality})
    videos, done, staged, todo, damaged = _plan_frames(video_dir, out_dir, num_shards)
    already_done = sum(1 for v in videos if v in done)
    _log.info("frames: %d videos, %d already in shards, %d staged by an earlier run, %d to decode, %d damaged "
              "shards to repair", len(videos), already_done, len(staged), len(todo), len(damaged))

    pipeline = _pipeline(pipeline_args)
    decoded = (pipeline | "videos" >> beam.Create(todo)
               | "spread videos" >> beam.Reshuffle()
               | "decode" >> beam.ParDo(_ExtractFrames(out_dir, num_frames, size, num_shards, jpeg_quality))
               .with_outputs("failed", main="staged"))
    earlier = pipeline | "staged earlier, damaged shards" >> beam.Create(
        sorted((extract.shard_of(v, num_shards), v) for v in staged) + [(shard, "") for shard in damaged])
    added = ((decoded.staged, earlier) | "all staged" >> beam.Flatten()
             | "by shard" >> beam.GroupByKey()
             | "write shards" >> beam.ParDo(_WriteShard(out_dir, num_shards)))
    _report(pipeline, decoded.failed, added, out_dir, attrition.FRAMES, len(videos), already_done)
    return _run(pipeline, out_dir, attrition.FRAMES)


# ------------------------------------------------------------------------------------------------ download


def download_with_retries(video_id: str, video_path: str, url_template: str, fmt: str, attempts: int = 3,
                          backoff_seconds: float = 5.0) -> tuple:
    """download.download_one, tried again (with exponential backoff) while the error looks transient."""
    for attempt in range(1, attempts + 1):
        status, detail = download_lib.download_one(video_id, video_path, url_template, fmt)
        if status == "downloaded" or attempt == attempts or not attrition.is_transient(detail):
            return status, detail
        _log.info("download of %s failed (%s); attempt %d of %d", video_id, detail, attempt + 1, attempts)
        time.sleep(backoff_seconds * 2 ** (attempt - 1))
    return status, detail


class _Download(beam.DoFn):
    """video_id -> 1 once <video_path>/<id>.<ext> exists; failure rows on the 'failed' tag.

    A remote video_path gets the file after it is complete (downloaded into a local temporary folder first).
    """

    def __init__(self, video_path: str, url_template: str, fmt: str, attempts: int, backoff_seconds: float):
        self.video_path, self.url_template, self.fmt = video_path, url_template, fmt
        self.attempts, self.backoff_seconds = attempts, backoff_seconds

    def process(self, video_id):
        remote = fileio.is_remote(self.video_path)
        local_dir = tempfile.mkdtemp(prefix="download-") if remote else self.video_path
        try:
            status, detail = download_with_retries(video_id, local_dir, self.url_template, self.fmt,
                                                   self.attempts, self.backoff_seconds)
            if status == "downloaded" and remote:
                target = fileio.join(self.video_path, os.path.basename(detail))
                with open(detail, "rb") as source, fileio.open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 22)
        finally:
            if remote:
                shutil.rmtree(local_dir, ignore_errors=True)
        if status == "downloaded":
            _counter("downloaded").inc()
            yield 1
        else:
            _counter("download_failed").inc()
            _log.warning("download of %s failed: %s", video_id, detail)
            yield beam.pvalue.TaggedOutput("failed", attrition.failure_row(video_id, attrition.DOWNLOAD, detail))


def _present(video_path: str) -> set:
    """Ids with a finished file in video_path (names as download.existing_file checks them)."""
    if not fileio.isdir(video_path):
        return set()
    return {video_id for video_id in map(id_rules.video_id_from_filename, fileio.listdir(video_path))
            if video_id is not None}


def download_videos(video_ids: Sequence[str], video_path: str, pipeline_args: Sequence[str],
                    url_template: str = download_lib.DEFAULT_URL_TEMPLATE, fmt: str = download_lib.DEFAULT_FORMAT,
                    attempts: int = 3, backoff_seconds: float = 5.0) -> StageRun:
    """The Beam twin of download.download_videos, plus transient-error retries and download_{failures,summary}."""
    if "{id}" not in url_template:
        raise ValueError(f"--url_template must contain {{id}}, got {url_template!r}")
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    fileio.makedirs(video_path)
    video_ids = list(dict.fromkeys(video_ids))
    present = _present(video_path)
    invalid = [attrition.failure_row(v, attrition.DOWNLOAD, "invalid YouTube id (want 11 characters of "
                                     "[A-Za-z0-9_-])") for v in video_ids if not download_lib.is_valid_id(v)]
    todo = [v for v in video_ids if download_lib.is_valid_id(v) and v not in present]
    already = sum(1 for v in video_ids if download_lib.is_valid_id(v) and v in present)
    _log.info("download: %d ids, %d present, %d invalid, %d to fetch", len(video_ids), already, len(invalid),
                 len(todo))

    pipeline = _pipeline(pipeline_args)
    fetched = (pipeline | "ids" >> beam.Create(todo)
               | "spread ids" >> beam.Reshuffle()
               | "download" >> beam.ParDo(_Download(video_path, url_template, fmt, attempts, backoff_seconds))
               .with_outputs("failed", main="downloaded"))
    failures = ((fetched.failed, pipeline | "invalid ids" >> beam.Create(invalid)) | "all failures" >> beam.Flatten())
    _report(pipeline, failures, fetched.downloaded, video_path, attrition.DOWNLOAD, len(video_ids), already)
    run = _run(pipeline, video_path, attrition.DOWNLOAD)
    if not fileio.is_remote(video_path):
        with contextlib.suppress(OSError):  # only when empty: another run may be using it
            os.rmdir(os.path.join(video_path, download_lib.TEMP_DIR))
    return run


# ------------------------------------------------------------------------------------------------ features


class _EncodeShard(beam.DoFn):
    """input shard number -> counts, after writing its feature shard; the vision tower is loaded in setup()."""

    def __init__(self, paths: Sequence[str], out_dir: str, checkpoint: str, batch_frames: int, threads: int):
        self.paths, self.out_dir, self.checkpoint = list(paths), out_dir, checkpoint
        self.batch_frames, self.threads = batch_frames, threads
        self._extractor, self._load_counted = None, False

    def setup(self):
        from momentor_jax import checkpoints  # noqa: PLC0415 (jax only on the workers that encode)
        from momentor_jax.data import features  # noqa: PLC0415

        params, config = checkpoints.load_params(self.checkpoint), checkpoints.load_config(self.checkpoint)
        if "vision" not in params:
            raise ValueError(f"{self.checkpoint}: the checkpoint has no vision tower ('vision' parameters)")
        self._extractor = features.FeatureExtractor(params["vision"], config.vision, self.batch_frames)
        self._load_counted = False

    def process(self, shard):
        from momentor_jax.data import features  # noqa: PLC0415

        if not self._load_counted:  # counted here: Beam attributes no metrics to setup()
            _counter("model_loads").inc()
            self._load_counted = True
        stats = features.ExtractionStats()
        source = tfrecord.TFRecordDataSource([self.paths[shard]], key_fn=frames_lib.record_video_id)
        target = features.output_path(self.out_dir, shard, len(self.paths))
        frames_before = self._extractor.frames_done
        try:
            features._extract_shard(source, 0, target, self._extractor, self.threads, stats, _NoProgress())
        finally:
            source.close()
        _counter("feature_shards_written").inc(stats.shards_written)
        yield {"videos": stats.videos, "records": len(source.indexes[0]), "skipped": stats.skipped_records,
               "frames": self._extractor.frames_done - frames_before, "shard": self.paths[shard]}


class _NoProgress:
    def update(self, _):
        pass


def _features_report(_, out_dir: str, requested: int, already_done: int, counts: list) -> None:
    rows = [attrition.failure_row(c["shard"], attrition.FEATURES, f"{c['skipped']} unreadable frame records")
            for c in counts if c["skipped"]]
    skipped = sum(c["skipped"] for c in counts)
    summary = attrition.StageSummary(attrition.FEATURES, requested, already_done, sum(c["videos"] for c in counts),
                                     {attrition.UNREADABLE_RECORD: skipped} if skipped else {})
    attrition.write_report(out_dir, summary, rows)
    _log.info("%s", summary.line())


def extract_features(frames: str, out_dir: str, checkpoint: str, pipeline_args: Sequence[str],
                     batch_frames: int = 64, threads: int = 4, overwrite: bool = False) -> StageRun:
    """The Beam twin of features.extract_features: the same feature shards, one step per input shard.

    Summary counts are frame records (videos): requested = all input records, already_done = those in output
    shards kept from an earlier run. A failure row names the input shard (an unreadable record has no trustworthy
    video id) and how many of its records could not be read.
    """
    from momentor_jax.data import features  # noqa: PLC0415 (jax only where features are made)

    paths = frames_lib.expand_paths(frames)
    fileio.makedirs(out_dir)
    records = [len(tfrecord.load_index(p)) for p in paths]
    todo = [s for s in range(len(paths))
            if overwrite or not fileio.exists(features.output_path(out_dir, s, len(paths)))]
    already_done = sum(records) - sum(records[s] for s in todo)
    _log.info("features: %d input shards, %d kept from an earlier run, %d to encode", len(paths),
                 len(paths) - len(todo), len(todo))
    pipeline = _pipeline(pipeline_args)
    counts = (pipeline | "shards" >> beam.Create(todo)
              | "spread shards" >> beam.Reshuffle()
              | "encode" >> beam.ParDo(_EncodeShard(paths, out_dir, checkpoint, batch_frames, threads))
              | "collect counts" >> beam.combiners.ToList())
    _ = (pipeline | "features report" >> beam.Create([None])
         | "write features report" >> beam.Map(_features_report, out_dir, sum(records), already_done,
                                               counts=beam.pvalue.AsSingleton(counts)))
    return _run(pipeline, out_dir, attrition.FEATURES)
