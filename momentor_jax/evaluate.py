r"""Zero-shot evaluation of a Momentor checkpoint on one task.

    python -m momentor_jax.evaluate --checkpoint CKPT --task grounding --annotations FILE \
        (--video_dir DIR | --frames_dir DIR) --out DIR [--max_examples N] [--batch_size B] [--durations FILE]

Tasks (evaluation/tasks.py): grounding, highlights, dense_captioning, action_segmentation; annotation formats in
evaluation/annotations.py (QVHighlights .jsonl, Charades-STA .txt with --durations, ActivityNet Captions .json, frame
labels .json). Videos come from frame TFRecords (--frames_dir, as written by data/extract_frames.py; a record of more
frames than the model takes is resampled as the training loader resamples it) or are decoded from
--video_dir/<vid>.<ext> (any case of a known extension) with the training sampling, both through
data/video_input.py. A record the loader would skip is a missing video here, with the loader's one-line reason.

Order of work: the flags, the annotations (every bad record listed at once) and the video source (with --frames_dir,
that the first readable record fits the model) are checked, then the checkpoint's config and tokenizer (every question
must fit the model's positions), and only then, if any answer is still missing, are the parameters loaded. Answers are
written as they are made to OUT/answers.parts/ (a part every 32 answers or 30 s, and on Ctrl-C or an error); rerunning
the same command resumes from them, and gives the metrics an uninterrupted run gives. A finished OUT is re-scored
without loading the model.

Writes OUT/predictions.jsonl (grounding, highlights) or OUT/predictions.json, OUT/answers.jsonl (the raw answer text
of every query), OUT/metrics.json (the task's metrics plus num_queries, num_unparsable, num_missing_videos and
ground_truth_notes) and OUT/timeline.png. A query whose video is missing or unreadable, or whose answer states no
window, is kept with an empty prediction and scored as a miss.
Exit status: 0; 2 on bad flags or bad input (nothing is loaded); 130 when interrupted (answers so far are kept).
"""
from __future__ import annotations

import collections
import json
import logging
import os
import sys
from typing import Optional

from absl import flags

from momentor_jax import cli, fileio

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """The command's flags (defined only when it runs, so that importing the module defines none)."""
    cli.define_answer_flags(sampling=False)
    flags.adopt_module_key_flags(cli)
    flags.DEFINE_enum("task", None, ["grounding", "highlights", "dense_captioning", "action_segmentation"],
                      "evaluation task")
    flags.DEFINE_string("annotations", None, "ground-truth file of the task (formats: see above)")
    flags.DEFINE_string("video_dir", None, "directory of <vid>.mp4 (.mkv, .webm, ...) videos")
    flags.DEFINE_string("frames_dir", None, "frame TFRecords (directory, glob or comma list)")
    flags.DEFINE_string("durations", None, "JSON {vid: seconds} (Charades-STA txt); default: from the videos")
    flags.DEFINE_string("out", None, "output directory (local or gs://); rerun with the same one to resume")
    flags.DEFINE_integer("max_examples", None, "evaluate only the first N queries (N >= 1)")
    flags.DEFINE_integer("batch_size", 4, "queries decoded together (fixed batch shape)")
    flags.DEFINE_integer("num_timelines", 12, "queries drawn in timeline.png (0: no figure)")


ANSWERS_DIR = "answers.parts"
AFTER_THE_END = "windows starting at or after the decoded video's end (kept as annotated)"


class MissingVideo(Exception):
    """A video that the source does not hold or cannot read."""


class VideoSource:
    """vid -> (frames [M, S, S, 3] uint8 or features [M, F], duration) from frame records or video files, through
    data/video_input.py as training reads them (records resampled to the model's frame count).

    Files in --video_dir are found by their name without the extension, whatever the extension's case
    (`clip.v1.MP4` is video `clip.v1`)."""

    def __init__(self, config, video_dir: Optional[str] = None, frames_dir: Optional[str] = None,
                 cache_size: int = 8):
        from momentor_jax.data import video_input  # noqa: PLC0415
        if (video_dir is None) == (frames_dir is None):
            raise ValueError("give exactly one of --video_dir and --frames_dir")
        self.video_dir = video_dir
        self.spec = video_input.VideoSpec.of(config)
        self.index = None
        self._files: Optional[dict] = None
        if frames_dir is not None:
            from momentor_jax.data.frames import FrameRecordIndex  # noqa: PLC0415
            self.index = FrameRecordIndex(frames_dir)
        elif self.spec.use_features:
            raise ValueError("this checkpoint reads cached ViT features; pass --frames_dir with feature records")
        elif not fileio.isdir(video_dir):
            raise FileNotFoundError(f"--video_dir {video_dir}: no such directory")
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._cache_size = cache_size

    def check(self, vids) -> None:
        """ValueError (video_input.RecordMismatch) when the first readable record of these videos does not fit the
        model, as training's start-up check: the records are extracted alike."""
        if self.index is not None:
            from momentor_jax.data import video_input  # noqa: PLC0415
            video_input.check_first_record(self.index, vids, self.spec)

    def get(self, vid: str):
        if vid not in self._cache:
            self._cache[vid] = self._load(vid)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return self._cache[vid]

    def video_files(self) -> dict:
        """{vid: [paths]} of the video files in --video_dir (listed once; ids by data/video_ids.py's rule)."""
        if self._files is None:
            from momentor_jax.data.video_ids import group_video_files  # noqa: PLC0415
            self._files = {vid: [fileio.join(self.video_dir, name) for name in names]
                           for vid, names in group_video_files(fileio.listdir(self.video_dir)).items()}
        return self._files

    def _load(self, vid: str):
        from momentor_jax.data import video_input  # noqa: PLC0415
        from momentor_jax.data.video import VideoDecodeError  # noqa: PLC0415
        if self.index is not None:
            try:
                return video_input.read_record(self.index, vid, self.spec)
            except video_input.VideoInputError as e:
                raise MissingVideo(str(e)) from e
        paths = self.video_files().get(vid, [])
        if not paths:
            raise MissingVideo(f"{fileio.join(self.video_dir, vid)}.mp4: no such video (nor another extension)")
        if len(paths) > 1:
            raise MissingVideo(f"video {vid}: several files ({', '.join(paths)}); keep one")
        try:
            return video_input.read_file(paths[0], self.spec)
        except VideoDecodeError as e:
            raise MissingVideo(str(e)) from e


def check_settings(batch_size: int, max_examples: Optional[int], num_timelines: int) -> None:
    """ValueError naming the setting; max_examples None means all queries (never a Python slice of negatives)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int)
                                     or max_examples < 1):
        raise ValueError(f"max_examples must be an integer >= 1 (leave it unset for all queries), got {max_examples!r}")
    if num_timelines < 0:
        raise ValueError(f"num_timelines must be >= 0, got {num_timelines}")


def _status(record: Optional[dict]) -> Optional[str]:
    if record is None or record.get("error") is not None:
        return "missing video"
    return None if record.get("parsed") else "unparsable"


def evaluate(checkpoint: str, task_name: str, annotations: str, out_dir: str, video_dir: Optional[str] = None,
             frames_dir: Optional[str] = None, durations_path: Optional[str] = None,
             max_examples: Optional[int] = None, batch_size: int = 4, max_new_tokens: int = 128,
             num_timelines: int = 12, progress: bool = True, system_prompt: Optional[str] = None) -> dict:
    """Runs (or resumes) one task end to end and returns the metrics written to OUT/metrics.json.

    Bad input raises ValueError (annotations.AnnotationError lists every bad record) or FileNotFoundError before
    the parameters load; KeyboardInterrupt leaves the answers so far in OUT/answers.parts."""
    from momentor_jax.evaluation import annotations as annotations_lib  # noqa: PLC0415
    from momentor_jax.evaluation import tasks  # noqa: PLC0415
    from momentor_jax import checkpoints  # noqa: PLC0415
    from momentor_jax.inference import batch, generate, load, results  # noqa: PLC0415

    check_settings(batch_size, max_examples, num_timelines)
    sampling = generate.SamplingConfig(max_new_tokens=max_new_tokens)
    if (video_dir is None) == (frames_dir is None):
        raise ValueError("give exactly one of video_dir and frames_dir")
    durations = annotations_lib.read_durations(durations_path) if durations_path else None
    task = tasks.make_task(task_name, annotations, durations)
    for note in task.annotations.notes[:20]:
        logging.warning("%s", note)
    queries = task.queries[:max_examples] if max_examples is not None else task.queries

    located = checkpoints.locate(checkpoint)
    config = checkpoints.load_config(checkpoint)
    tokenizer = load.load_tokenizer(checkpoint, config)
    system_prompt = system_prompt or load.load_system_prompt(checkpoint)
    annotations_lib.check_prompts(
        ((q.where, q.question) for q in queries),
        lambda question: len(generate.question_prompt(question, tokenizer, config.num_frames,
                                                      system_prompt)["input_ids"]),
        generate.max_prompt_length(config, sampling), annotations)
    source = VideoSource(config, video_dir, frames_dir)
    source.check([q.vid for q in queries])

    settings = {"checkpoint": checkpoints.identity(checkpoint), "task": task_name, "max_new_tokens": max_new_tokens,
                "system_prompt": system_prompt, "batch_size": batch_size}
    log = results.ResultLog(fileio.join(out_dir, ANSWERS_DIR), settings)
    by_qid = {q.qid: q for q in queries}
    log.check_made_for({q.qid: {"vid": q.vid, "question": q.question} for q in queries}, ("vid", "question"),
                       "annotations")

    def make_generator():
        with cli.phase(f"loading the model from {located.params_dir}"):
            params = load.shard_params(checkpoints.load_params(checkpoint), config)
        if progress:
            cli.progress(f"answering {len(queries) - len(log.keys() & set(by_qid))} of {len(queries)} queries "
                         "(the first batch includes compilation)")
        return generate.Generator(params, config, tokenizer, system_prompt, sampling)

    results.answer_and_log(_items(queries), log, make_generator, batch.unavailable_on(source.get, MissingVideo),
                           batch_size, lambda result: _to_record(by_qid[result.item.key], result),
                           desc=f"evaluate {task_name}", progress=progress)
    return _finish(task, queries, results.latest(log.records, by_qid), out_dir, checkpoint, num_timelines)


def _items(queries) -> list:
    from momentor_jax.inference import batch  # noqa: PLC0415
    return [batch.Item(q.qid, q.vid, q.question) for q in queries]


def _to_record(query, result) -> dict:
    """One answer record (answers.jsonl) of a query from its inference/batch.Result."""
    record = {"qid": query.qid, "vid": query.vid, "question": query.question}
    if result.error is not None:
        logging.warning("query %s: %s; scored as a miss", query.qid, result.error)
        return {**record, "answer": None, "parsed": False, "video_duration": None, "error": result.error}
    return {**record, "answer": result.answer.text, "parsed": result.answer.parsed,
            "video_duration": result.video_duration, "error": None}


def answer_and_score(task, queries, generator, source: VideoSource, batch_size: int, out_dir: Optional[str] = None,
                     checkpoint: str = "", num_timelines: int = 0) -> dict:
    """The task's metrics (plus num_queries, num_unparsable, num_missing_videos) of a loaded generator's answers,
    kept in memory (evaluation during training, training/evals.py); with out_dir, also the files `evaluate` writes
    there (submission, answers.jsonl, metrics.json naming `checkpoint`, timeline.png). `evaluate` is this with the
    answers logged to disk as they are made."""
    from momentor_jax.inference import batch  # noqa: PLC0415
    by_qid = {q.qid: q for q in queries}
    records = {}
    for done in batch.answer_items(generator, _items(queries), batch.unavailable_on(source.get, MissingVideo),
                                   batch_size):
        records.update((r.item.key, _to_record(by_qid[r.item.key], r)) for r in done)
    if out_dir is None:
        return _score(task, queries, records, 0)[0]
    return _finish(task, queries, records, out_dir, checkpoint, num_timelines)


def _finish(task, queries, records: dict, out_dir: str, checkpoint: str, num_timelines: int) -> dict:
    """Submission, answers.jsonl, metrics.json and timeline.png from one answer record per query."""
    from momentor_jax.evaluation import plots  # noqa: PLC0415

    metrics, predictions, answers, rows = _score(task, queries, records, num_timelines)
    fileio.makedirs(out_dir)
    submission = task.write(predictions, out_dir)
    fileio.write_text(fileio.join(out_dir, "answers.jsonl"), "".join(json.dumps(a) + "\n" for a in answers))
    metrics.update(checkpoint=checkpoint if fileio.is_remote(checkpoint) else os.path.abspath(checkpoint),
                   predictions=submission)
    fileio.write_text(fileio.join(out_dir, "metrics.json"), json.dumps(metrics, indent=1))
    if rows:
        plots.plot_timelines(rows, fileio.join(out_dir, "timeline.png"), title=f"{task.name}: {checkpoint}",
                             total=len(queries))
    return metrics


def _score(task, queries, records: dict, num_timelines: int) -> tuple:
    """(metrics, predictions, answer records, timeline rows) from one answer record per query."""
    from momentor_jax.evaluation import annotations as annotations_lib  # noqa: PLC0415

    predictions, answers, rows = {}, [], []
    unparsable = missing = 0
    notes = dict(task.annotations.counts)
    for query in queries:
        record = records[query.qid]
        if record["error"] is not None:
            missing += 1
            duration = float(query.duration or 1.0)
            predictions[query.qid] = task.to_prediction(query, "", duration)[0]
        else:
            # Answers are rendered on the decoded video's time axis, then clipped to the annotated duration.
            duration = float(query.duration) if query.duration else float(record["video_duration"])
            prediction, parsed = task.to_prediction(query, record["answer"], duration)
            unparsable += not parsed
            predictions[query.qid] = prediction
            if query.duration is None:  # a duration known only now (Charades-STA without --durations)
                for window in query.record.get("relevant_windows", []):
                    error, past_end = annotations_lib.check_window(window, duration)
                    kind = AFTER_THE_END if error else annotations_lib.PAST_THE_END if past_end else None
                    if kind:
                        notes[kind] = notes.get(kind, 0) + 1
        answers.append({k: v for k, v in record.items() if k != "key"})
        if len(rows) < num_timelines:
            row = task.timeline(query, predictions[query.qid], duration)
            rows.append(dict(row, status=_status(record)))
    metrics = dict(task.score(predictions))
    metrics.update(task=task.name, num_queries=len(queries), num_unparsable=unparsable, num_missing_videos=missing,
                   ground_truth_notes=notes)
    return metrics, predictions, answers, rows


def main(argv) -> None:
    if len(argv) > 1:
        raise cli.usage_error(f"unexpected arguments: {argv[1:]}")
    for name in ("checkpoint", "task", "annotations", "out"):
        if not FLAGS[name].value:
            raise cli.usage_error(f"--{name} is required")
    if bool(FLAGS.video_dir) == bool(FLAGS.frames_dir):
        raise cli.usage_error("give exactly one of --video_dir and --frames_dir")
    try:
        check_settings(FLAGS.batch_size, FLAGS.max_examples, FLAGS.num_timelines)
        if FLAGS.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {FLAGS.max_new_tokens}")
    except ValueError as e:
        raise cli.usage_error(f"--{e}") from None
    try:
        metrics = evaluate(FLAGS.checkpoint, FLAGS.task, FLAGS.annotations, FLAGS.out, FLAGS.video_dir,
                           FLAGS.frames_dir, FLAGS.durations, FLAGS.max_examples, FLAGS.batch_size,
                           FLAGS.max_new_tokens, FLAGS.num_timelines, system_prompt=FLAGS.system_prompt)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(cli.EXIT_USAGE)
    except KeyboardInterrupt:
        print(f"interrupted: the answers so far are in {fileio.join(FLAGS.out, ANSWERS_DIR)}; rerun the same "
              "command to resume", file=sys.stderr, flush=True)
        sys.exit(cli.EXIT_INTERRUPTED)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    cli.cpu_decode_flags()  # before JAX starts
    _define_flags()
    cli.run(main)
