"""Zero-shot evaluation of a Momentor checkpoint on one task.

    python -m momentor_jax.evaluate --checkpoint CKPT --task grounding --annotations FILE
        (--video_dir DIR | --frames_dir DIR) --out DIR [--max_examples N] [--batch_size B] [--durations FILE]

Tasks (evaluation/tasks.py): grounding, highlights, dense_captioning, action_segmentation. Videos come from
frame TFRecords (--frames_dir, as written by data/extract_frames.py) or are decoded from --video_dir/<vid>.mp4 with
the training sampling. Writes OUT/predictions.jsonl (grounding, highlights) or OUT/predictions.json, OUT/answers.jsonl
(the raw answer text of every query), OUT/metrics.json (the task's metrics plus num_queries, num_unparsable and
num_missing_videos) and OUT/timeline.png. A query whose video is missing or unreadable, or whose answer cannot be
parsed, is kept with an empty prediction and scored as a miss.
"""
from __future__ import annotations

import collections
import json
import logging
import os
from typing import Optional

import numpy as np
from absl import app, flags

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "training workdir, step directory or converted checkpoint")
_TASK = flags.DEFINE_enum("task", None, ["grounding", "highlights", "dense_captioning", "action_segmentation"],
                          "evaluation task")
_ANNOTATIONS = flags.DEFINE_string("annotations", None, "ground-truth file of the task")
_VIDEO_DIR = flags.DEFINE_string("video_dir", None, "directory of <vid>.mp4 videos")
_FRAMES_DIR = flags.DEFINE_string("frames_dir", None, "frame TFRecords (directory, glob or comma list)")
_DURATIONS = flags.DEFINE_string("durations", None, "JSON {vid: seconds} (Charades-STA txt); default: from the videos")
_OUT = flags.DEFINE_string("out", None, "output directory")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None, "evaluate only the first N queries")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 4, "queries decoded together (fixed batch shape)")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 128, "longest answer in tokens")
_SYSTEM_PROMPT = flags.DEFINE_string("system_prompt", None, "override the checkpoint's system prompt")
_NUM_TIMELINES = flags.DEFINE_integer("num_timelines", 12, "queries drawn in timeline.png")


class MissingVideo(Exception):
    """A video that the source does not hold or cannot read."""


class VideoSource:
    """vid -> (frames [M, S, S, 3] uint8 or features [M, F], duration) from frame records or video files."""

    def __init__(self, config, video_dir: Optional[str] = None, frames_dir: Optional[str] = None,
                 cache_size: int = 8):
        if (video_dir is None) == (frames_dir is None):
            raise ValueError("give exactly one of --video_dir and --frames_dir")
        self.config, self.video_dir = config, video_dir
        self.index = None
        if frames_dir is not None:
            from momentor_jax.data.frames import FrameRecordIndex  # noqa: PLC0415
            self.index = FrameRecordIndex(frames_dir, config.num_frames)
        elif config.use_cached_features:
            raise ValueError("this checkpoint reads cached ViT features; pass --frames_dir with feature records")
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._cache_size = cache_size

    def get(self, vid: str):
        if vid not in self._cache:
            self._cache[vid] = self._load(vid)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return self._cache[vid]

    def _load(self, vid: str):
        if self.index is not None:
            return self._from_record(vid)
        from momentor_jax.data.video import VIDEO_EXTENSIONS, decode_frames  # noqa: PLC0415
        path = next((os.path.join(self.video_dir, vid + ext) for ext in VIDEO_EXTENSIONS
                     if os.path.isfile(os.path.join(self.video_dir, vid + ext))), None)
        if path is None:
            raise MissingVideo(f"{os.path.join(self.video_dir, vid)}.mp4: no such video")
        try:
            decoded = decode_frames(path, self.config.num_frames, self.config.vision.image_size)
        except Exception as e:  # PyAV / PIL raise many types on damaged files
            raise MissingVideo(f"{path}: cannot decode ({e})") from e
        return decoded.frames, float(decoded.duration)

    def _from_record(self, vid: str):
        if vid not in self.index:
            raise MissingVideo(f"video {vid}: not in the frame records")
        try:
            record = self.index.get(vid)
        except Exception as e:  # damaged record
            raise MissingVideo(f"video {vid}: unreadable frame record ({e})") from e
        key = "features" if self.config.use_cached_features else "frames"
        if key not in record:
            raise MissingVideo(f"video {vid}: the record holds no '{key}' (use_cached_features="
                               f"{self.config.use_cached_features})")
        video = record[key]
        size = self.config.vision.image_size
        if key == "frames" and video.shape[1:3] != (size, size):
            raise ValueError(f"video {vid}: record frames are {video.shape[1:3]}, the model wants {size}x{size}")
        return video, float(record["duration"])


def _batches(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def evaluate(checkpoint: str, task_name: str, annotations: str, out_dir: str, video_dir: Optional[str] = None,
             frames_dir: Optional[str] = None, durations_path: Optional[str] = None,
             max_examples: Optional[int] = None, batch_size: int = 4, max_new_tokens: int = 128,
             num_timelines: int = 12, progress: bool = True, system_prompt: Optional[str] = None) -> dict:
    """Runs one task end to end and returns the metrics written to OUT/metrics.json."""
    from tqdm import tqdm  # noqa: PLC0415

    from momentor_jax.evaluation import plots, tasks  # noqa: PLC0415
    from momentor_jax.inference import generate, load  # noqa: PLC0415

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    durations = None
    if durations_path:
        with open(durations_path) as f:
            durations = {str(k): float(v) for k, v in json.load(f).items()}
    task = tasks.make_task(task_name, annotations, durations)
    queries = task.queries[:max_examples] if max_examples else task.queries
    if not queries:
        raise ValueError(f"{annotations}: no queries to evaluate")

    params, config, tokenizer = load.load_model(checkpoint)
    params = load.shard_params(params, config)
    generator = generate.Generator(params, config, tokenizer, system_prompt or load.load_system_prompt(checkpoint),
                                   generate.SamplingConfig(max_new_tokens=max_new_tokens))
    source = VideoSource(config, video_dir, frames_dir)
    os.makedirs(out_dir, exist_ok=True)

    predictions, rows, answers = {}, [], []
    unparsable = missing = 0
    bar = tqdm(total=len(queries), desc=f"evaluate {task_name}", disable=not progress)
    for batch in _batches(queries, batch_size):
        ready, videos, video_seconds = [], [], []
        for query in batch:
            try:
                video, video_duration = source.get(query.vid)
            except MissingVideo as e:
                logging.warning("query %s: %s; scored as a miss", query.qid, e)
                missing += 1
                duration = float(query.duration or 1.0)
                predictions[query.qid] = task.to_prediction(query, "", duration)[0]
                answers.append({"qid": query.qid, "vid": query.vid, "answer": None, "error": str(e)})
                continue
            ready.append(query)
            videos.append(video)
            video_seconds.append(video_duration)
        if ready:
            # Answers are rendered on the decoded video's time axis, then clipped to the annotated duration.
            results = generator.answer([q.question for q in ready], np.stack(videos), video_seconds,
                                       batch_size=batch_size)
            for query, result, video_duration in zip(ready, results, video_seconds):
                duration = float(query.duration) if query.duration else video_duration
                prediction, parsed = task.to_prediction(query, result.text, duration)
                unparsable += not parsed
                predictions[query.qid] = prediction
                answers.append({"qid": query.qid, "vid": query.vid, "question": query.question,
                                "answer": result.text, "parsed": parsed})
                if len(rows) < num_timelines:
                    rows.append(task.timeline(query, prediction, duration))
        bar.update(len(batch))
    bar.close()

    submission = task.write(predictions, out_dir)
    with open(os.path.join(out_dir, "answers.jsonl"), "w") as f:
        f.writelines(json.dumps(a) + "\n" for a in answers)
    metrics = dict(task.score(predictions))
    metrics.update(task=task_name, num_queries=len(queries), num_unparsable=unparsable, num_missing_videos=missing,
                   checkpoint=os.path.abspath(checkpoint), predictions=submission)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    if rows:
        plots.plot_timelines(rows, os.path.join(out_dir, "timeline.png"), title=f"{task_name}: {checkpoint}")
    return metrics


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for flag in (_CHECKPOINT, _TASK, _ANNOTATIONS, _OUT):
        if not flag.value:
            raise app.UsageError(f"--{flag.name} is required")
    if bool(_VIDEO_DIR.value) == bool(_FRAMES_DIR.value):
        raise app.UsageError("give exactly one of --video_dir and --frames_dir")
    metrics = evaluate(_CHECKPOINT.value, _TASK.value, _ANNOTATIONS.value, _OUT.value, _VIDEO_DIR.value,
                       _FRAMES_DIR.value, _DURATIONS.value, _MAX_EXAMPLES.value, _BATCH_SIZE.value,
                       _MAX_NEW_TOKENS.value, _NUM_TIMELINES.value, system_prompt=_SYSTEM_PROMPT.value)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    app.run(main)
