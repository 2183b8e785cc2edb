"""The web demo's back end: videos checked, decoded and encoded once (cached by content), multi-turn dialogues.

    engine = Engine(predictor, work_dir, max_upload_bytes, allowed_dirs, cache_videos=8, ground_truth=None,
                    generator=None, upload_dir=None)
    video = engine.open_video(upload_path, typed_path)    -> Video (a typed path wins when both are given)
    dialogue = engine.ask(video, question, dialogue)      -> Dialogue with the new Turn last
    engine.truth(video, question)                         -> None or (label, windows, titles) for the timeline

Every refusal is media.InputRefused with the message the page shows: a typed path outside --allowed_dir, an upload
over the size limit or outside `upload_dir` (Gradio's upload folder, when given), a file PyAV does not decode as
video, an empty question, a dialogue that no longer fits the model's context. A video is read only after
media.probe accepts it.

Videos are keyed by the sha256 of their bytes: the frame embeddings [1, M, D] of the last `cache_videos` videos stay
on the device, so every question about a video after the first (and the same file uploaded again) skips decoding
and the vision tower. A dialogue's prompt is the whole conversation so far, in the template training dialogues use:
earlier answers go back in with <TEMP-OUTPUT> where the model wrote a temporal token and its time in
temporal_output_times (generate.history_reply), so the model reads its own earlier times as it was trained to.
A turn whose answer was empty is left out of later prompts (the template has no empty reply).

`generator` is what answers (generate.Generator: encode(frames [1, M, ...]) -> embeddings, answer_prompts(prompts,
embeddings, durations) -> [Answer]); by default the predictor's, loaded from the checkpoint.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import threading
from typing import Any, Optional, Sequence

from momentor_jax import cli
from momentor_jax.serve import annotated, media


@dataclasses.dataclass(frozen=True)
class Video:
    key: str            # sha256 of the file
    path: str           # the file read
    name: str           # file name without extension (the id annotations know it by)
    duration: float     # seconds, as decoded (the answers' time axis)
    browser_path: str   # the file the player plays (the video itself, or a transcoded copy)
    transcoded: bool


@dataclasses.dataclass(frozen=True)
class Turn:
    question: str
    answer: str          # the answer text, times in seconds
    times: tuple         # every time the model wrote (seconds)
    windows: tuple       # the windows the answer states ((start, end), ...), clipped to the video
    reply: str           # the answer as an assistant turn of later prompts (<TEMP-OUTPUT> placeholders)
    reply_times: tuple   # the placeholders' times in seconds


@dataclasses.dataclass(frozen=True)
class Dialogue:
    video_key: Optional[str] = None
    turns: tuple = ()


class Engine:
    def __init__(self, predictor, work_dir: str, max_upload_bytes: int, allowed_dirs: Sequence[str] = (),
                 cache_videos: int = 8, ground_truth: Optional[annotated.GroundTruth] = None,
                 generator: Any = None, progress: bool = True, upload_dir: Optional[str] = None):
        if cache_videos < 1:
            raise ValueError(f"cache_videos must be >= 1, got {cache_videos}")
        self.predictor, self.work_dir = predictor, work_dir
        self.max_upload_bytes, self.allowed_dirs = max_upload_bytes, [os.path.realpath(d) for d in allowed_dirs]
        self.cache_videos, self.ground_truth, self.progress = cache_videos, ground_truth, progress
        self._generator = generator
        self.upload_dir = os.path.realpath(upload_dir) if upload_dir else None
        self._cache: collections.OrderedDict = collections.OrderedDict()  # key -> (embeddings, duration, browser)
        self._lock = threading.Lock()
        self.stats = {"videos_encoded": 0, "cache_hits": 0, "answers": 0}

    @property
    def generator(self):
        if self._generator is None:
            self._generator = self.predictor.generator
        return self._generator

    def _log(self, message: str) -> None:
        if self.progress:
            cli.progress(message)

    # ------------------------------------------------------------------------------------------------ videos
    def open_video(self, upload_path: Optional[str], typed_path: Optional[str]) -> Video:
        if typed_path and typed_path.strip():
            path = media.resolve_typed_path(typed_path, self.allowed_dirs)
        elif upload_path:
            path = os.path.realpath(upload_path)
            if self.upload_dir and os.path.commonpath([path, self.upload_dir]) != self.upload_dir:
                # Gradio accepts only its own uploads already; this holds even if a request names another file.
                raise media.InputRefused(f"{os.path.basename(path)}: not an upload of this server")
            media.check_size(path, self.max_upload_bytes)
        else:
            raise media.InputRefused("upload a video or type its path first")
        with self._lock:
            return self._open(path)

    def _open(self, path: str) -> Video:
        try:
            key = media.file_digest(path)
        except OSError as e:
            raise media.InputRefused(f"{os.path.basename(path)}: cannot be read ({e.strerror or e})") from e
        name = annotated.video_name(path)
        if key in self._cache:
            self._cache.move_to_end(key)
            self.stats["cache_hits"] += 1
            _, duration, browser = self._cache[key]
            return Video(key, path, name, duration, browser, browser != path)
        info = media.probe(path)
        with cli.phase(f"preparing {name}") if self.progress else contextlib.nullcontext():
            browser = media.browser_copy(path, info, self.work_dir, key)
            from momentor_jax.data.video import VideoDecodeError  # noqa: PLC0415
            try:
                frames, duration = self.predictor.video(path)
            except VideoDecodeError as e:
                raise media.InputRefused(f"{os.path.basename(path)}: cannot be decoded "
                                         f"({str(e).removeprefix(path + ': ')})") from e
            embeddings = self.generator.encode(frames[None])
        self.stats["videos_encoded"] += 1
        self._cache[key] = (embeddings, float(duration), browser)
        while len(self._cache) > self.cache_videos:
            self._cache.popitem(last=False)
        return Video(key, path, name, float(duration), browser, browser != path)

    # ------------------------------------------------------------------------------------------------ dialogue
    def prompt(self, video: Video, question: str, dialogue: Dialogue) -> dict:
        """The generation prompt of the dialogue so far plus `question` (encode.build_prompt's arrays)."""
        from momentor_jax.data.encode import build_prompt  # noqa: PLC0415
        history = [t for t in dialogue.turns if t.reply]
        conversations = [{"User": t.question, "Assistant": t.reply} for t in history]
        conversations.append({"User": question, "Assistant": None})
        times = [s for t in history for s in t.reply_times]
        try:
            prompt = build_prompt(conversations, self.predictor.tokenizer, self.predictor.config.num_frames,
                                  for_generation=True, duration=video.duration, temporal_output_times=times,
                                  system_prompt=self.predictor.system_prompt)
        except ValueError as e:
            raise media.InputRefused(f"the question cannot be asked: {str(e).removeprefix('example prompt: ')}") \
                from e
        length, limit = len(prompt["input_ids"]), self.predictor.max_prompt_length()
        if length > limit:
            what = "this dialogue no longer fits" if history else "the question does not fit"
            raise media.InputRefused(f"{what} the model's context ({length} prompt tokens, at most {limit} with "
                                     f"--max_new_tokens {self.predictor.sampling.max_new_tokens})"
                                     + ("; start a new dialogue" if history else ""))
        return prompt

    def ask(self, video: Video, question: str, dialogue: Optional[Dialogue] = None) -> Dialogue:
        from momentor_jax.inference import generate  # noqa: PLC0415
        question = (question or "").strip()
        if not question:
            raise media.InputRefused("the question is empty: type a question about the video")
        if dialogue is None or dialogue.video_key != video.key:
            dialogue = Dialogue(video.key)
        prompt = self.prompt(video, question, dialogue)
        with self._lock:
            if video.key not in self._cache:  # dropped from the cache since it was opened
                video = self._open(video.path)
            embeddings = self._cache[video.key][0]
            answer = self.generator.answer_prompts([prompt], embeddings, [video.duration])[0]
            self.stats["answers"] += 1
        reply, reply_times = generate.history_reply(answer, self.predictor.tokenizer)
        turn = Turn(question, answer.text, tuple(answer.times), tuple(tuple(w) for w in answer.windows), reply,
                    tuple(reply_times))
        return Dialogue(video.key, dialogue.turns + (turn,))

    def truth(self, video: Video, question: str) -> Optional[tuple]:
        """(label, windows, titles) of the ground truth for the timeline, or None when the video is not annotated:
        the windows of the query the question asks about, else every annotated event of the video."""
        if self.ground_truth is None:
            return None
        event = self.ground_truth.matching(video.name, question)
        if event is not None:
            return f"ground truth: {event.query}", event.windows, None
        events = self.ground_truth.events(video.name)
        if not events:
            return None
        windows = [w for e in events for w in e.windows]
        titles = [e.query for e in events for _ in e.windows]
        return "annotated events of this video", windows, titles

