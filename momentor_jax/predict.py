r"""Ask a trained Momentor about videos; times in the answers are seconds.

One question:
    python -m momentor_jax.predict --checkpoint CKPT --video FILE.mp4 --question "When does the red circle appear?" \
        [--json] [--max_new_tokens 128] [--temperature 0] [--top_p 1] [--seed 0]
Many (a JSONL file of {"video": path, "question": text[, "id": anything]}, video paths relative to the file):
    python -m momentor_jax.predict --checkpoint CKPT --questions questions.jsonl --out answers.jsonl [--batch_size 8]

CKPT: a training workdir (latest step), one of its step directories, or a converted checkpoint. Frames are sampled
as in training: the model's num_frames, uniformly over the whole video including both ends, at its image size.
--json prints {"video", "duration", "question", "answer", "times", "windows", "parsed"}: `times` are every time the
answer says, `windows` the (start, end) windows it states, read by the parser `evaluate` uses (loose times are not
windows; `parsed` is false when there is none). The batch output has one such object per input line, in input
order (with the input's "id"), or {"error": ...} for a video that could not be decoded; each video is decoded and
encoded once for all its questions, and with greedy decoding (the default) the answers equal those of one `predict`
call per question. Answers are kept as they are made in OUT.parts/; rerunning the same command resumes.

The video (or every video of --questions) and the questions are checked before the model loads.
Exit status: 0; 1 when some video of --questions could not be decoded; 2 on bad flags or bad input (a missing or
undecodable video, a bad questions file, a question too long for the model); 130 when interrupted.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional

from absl import flags

from momentor_jax import cli, fileio

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """The command's flags (defined only when it runs, so that importing the module defines none)."""
    cli.define_answer_flags(sampling=True)
    flags.adopt_module_key_flags(cli)
    flags.DEFINE_string("video", None, "video file (one question)")
    flags.DEFINE_string("question", None, "question about the video (one question)")
    flags.DEFINE_string("questions", None, "JSONL of {video, question[, id]} to answer in batches")
    flags.DEFINE_string("out", None, "with --questions: the answers JSONL to write (local or gs://)")
    flags.DEFINE_integer("batch_size", 8, "with --questions: questions decoded together (>= 1)")
    flags.DEFINE_bool("json", False, "print one JSON object instead of the answer text")


EXIT_FAILED_VIDEOS = 1
EXIT_BAD_INPUT = cli.EXIT_USAGE


def load_video(path: str, config) -> tuple:
    """(frames uint8 [M, S, S, 3], duration) sampled as extraction samples records (data/video_input.read_file);
    VideoDecodeError naming the file, ValueError for a model that reads cached features."""
    from momentor_jax.data import video_input  # noqa: PLC0415
    return video_input.read_file(path, video_input.VideoSpec.of(config))


class Predictor:
    """A checkpoint ready to answer: config and tokenizer load at once (cheap), the parameters on first use.

        predictor = Predictor(checkpoint, sampling)       # checks the sampling settings and the checkpoint
        frames, duration = predictor.video(path)          # decode like training (VideoDecodeError)
        predictor.check_question(question)                # ValueError if the prompt does not fit the model
        predictor.generator                               # generate.Generator (loads the parameters once)
        predictor.answer(question, frames, duration)      # -> generate.Answer
    """

    def __init__(self, checkpoint: str, sampling=None, seed: int = 0, system_prompt: Optional[str] = None,
                 progress: bool = True):
        from momentor_jax import checkpoints  # noqa: PLC0415
        from momentor_jax.inference import generate, load  # noqa: PLC0415
        self.checkpoint, self.seed, self.progress = checkpoint, seed, progress
        self.sampling = sampling or generate.SamplingConfig()
        self.located = checkpoints.locate(checkpoint)
        self.config = checkpoints.load_config(checkpoint)
        self.tokenizer = load.load_tokenizer(checkpoint, self.config)
        self.system_prompt = system_prompt or load.load_system_prompt(checkpoint)
        self._generator = None

    def video(self, path: str) -> tuple:
        return load_video(path, self.config)

    def prompt_length(self, question: str) -> int:
        from momentor_jax.inference import generate  # noqa: PLC0415
        return len(generate.question_prompt(question, self.tokenizer, self.config.num_frames,
                                            self.system_prompt)["input_ids"])

    def max_prompt_length(self) -> int:
        from momentor_jax.inference import generate  # noqa: PLC0415
        return generate.max_prompt_length(self.config, self.sampling)

    def check_question(self, question: str) -> None:
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty")
        length, limit = self.prompt_length(question), self.max_prompt_length()
        if length > limit:
            raise ValueError(f"the question makes a prompt of {length} tokens; with --max_new_tokens "
                             f"{self.sampling.max_new_tokens} the model takes at most {limit}")

    @property
    def generator(self):
        if self._generator is None:
            from momentor_jax import checkpoints  # noqa: PLC0415
            from momentor_jax.inference import generate, load  # noqa: PLC0415
            with _phase(f"loading the model from {self.located.params_dir}", self.progress):
                params = load.shard_params(checkpoints.load_params(self.checkpoint), self.config)
                self._generator = generate.Generator(params, self.config, self.tokenizer, self.system_prompt,
                                                     self.sampling, self.seed)
        return self._generator

    def answer(self, question: str, frames, duration: float):
        generator = self.generator
        return generator.answer_encoded([question], generator.encode(frames[None]), [duration])[0]


def _phase(what: str, enabled: bool):
    import contextlib  # noqa: PLC0415
    return cli.phase(what) if enabled else contextlib.nullcontext()


def answer_json(video: str, duration: float, question: str, answer) -> dict:
    """The --json object: {'video', 'duration', 'question', 'answer', 'times', 'windows', 'parsed'}."""
    return {"video": video, "duration": duration, "question": question, **answer.to_json()}


def predict(checkpoint: str, video: str, question: str, max_new_tokens: int = 128, temperature: float = 0.0,
            top_p: float = 1.0, seed: int = 0, system_prompt: Optional[str] = None, progress: bool = False) -> dict:
    """One answer as the --json object. Bad settings, checkpoint, video or question raise (ValueError,
    FileNotFoundError, VideoDecodeError) before the parameters load."""
    from momentor_jax.inference import generate  # noqa: PLC0415
    sampling = generate.SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    predictor = Predictor(checkpoint, sampling, seed, system_prompt, progress)
    with _phase(f"reading {video}", progress):
        frames, duration = predictor.video(video)
    predictor.check_question(question)
    predictor.generator  # noqa: B018 (loads the parameters, with its own progress lines)
    with _phase("answering (the first answer includes compilation)", progress):
        answer = predictor.answer(question, frames, duration)
    return answer_json(video, duration, question, answer)


# ------------------------------------------------------------------------------------------------ many questions
def read_questions(path: str) -> list[dict]:
    """[{'key': line index, 'video': as written, 'path': resolved, 'question'[, 'id']}] from a questions JSONL;
    annotations.AnnotationError lists every bad line (not an object, no video or question, duplicate id, missing
    video file)."""
    from momentor_jax.evaluation import annotations  # noqa: PLC0415
    problems = annotations.Problems(path)
    base = path.rsplit("/", 1)[0] if fileio.is_remote(path) else os.path.dirname(path)
    records, ids = [], {}
    for number, record in annotations.read_jsonl(path, problems):
        where = f"{path}, line {number}"
        if isinstance(record, annotations.BadLine):
            problems.lines.append(record.message)
            continue
        if not isinstance(record, dict):
            problems.add(where, f"expected a JSON object {{video, question}}, got {type(record).__name__}")
            continue
        errors = [e for e in (annotations.check_text(record.get("video"), "video"),
                              annotations.check_text(record.get("question"), "question")) if e]
        if "id" in record:
            key = json.dumps(record["id"], sort_keys=True)
            if key in ids:
                errors.append(f"duplicate id {record['id']!r} (first at line {ids[key]})")
            ids.setdefault(key, number)
        if not errors:
            video = record["video"]
            resolved = video if fileio.is_remote(video) or os.path.isabs(video) else fileio.join(base, video)
            if not fileio.isfile(resolved):
                errors.append(f"no such video file {resolved}")
        if errors:
            problems.add(where, "; ".join(errors))
            continue
        entry = {"key": len(records), "video": record["video"], "path": resolved, "question": record["question"]}
        if "id" in record:
            entry["id"] = record["id"]
        records.append(entry)
    problems.raise_if_any()
    if not records:
        raise annotations.AnnotationError(path, [f"{path}: no questions"])
    return records


def predict_batch(checkpoint: str, questions_path: str, out_path: str, max_new_tokens: int = 128,
                  temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, system_prompt: Optional[str] = None,
                  batch_size: int = 8, progress: bool = True) -> dict:
    """Answers every question of a questions JSONL into `out_path` (one object per input line, in order);
    returns {'answered', 'failed', 'out'}. Checks everything it can before the parameters load."""
    from momentor_jax.data.video import VideoDecodeError  # noqa: PLC0415
    from momentor_jax.evaluation import annotations  # noqa: PLC0415
    from momentor_jax import checkpoints  # noqa: PLC0415
    from momentor_jax.inference import batch, generate, results  # noqa: PLC0415

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    sampling = generate.SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    from momentor_jax import outputs  # noqa: PLC0415
    outputs.check_not_input(out_path, {"--questions": questions_path}, "--out")
    records = read_questions(questions_path)
    predictor = Predictor(checkpoint, sampling, seed, system_prompt, progress)
    annotations.check_prompts(((f"{questions_path}, question {r['key'] + 1}", r["question"]) for r in records),
                              predictor.prompt_length, predictor.max_prompt_length(), questions_path)
    settings = {"checkpoint": checkpoints.identity(checkpoint), "max_new_tokens": max_new_tokens,
                "temperature": temperature, "top_p": top_p, "seed": seed, "system_prompt": predictor.system_prompt,
                "batch_size": batch_size}
    log = results.ResultLog(out_path + ".parts", settings)
    by_key = {r["key"]: r for r in records}
    log.check_made_for(by_key, ("video", "question"), "questions file")

    def to_record(result) -> dict:
        record = by_key[result.item.key]
        if result.error is not None:
            return {"video": record["video"], "question": record["question"], "error": result.error}
        return answer_json(record["video"], result.video_duration, record["question"], result.answer)

    items = [batch.Item(r["key"], r["path"], r["question"]) for r in records]
    results.answer_and_log(items, log, lambda: predictor.generator,
                           batch.unavailable_on(predictor.video, VideoDecodeError), batch_size, to_record,
                           desc="predict", progress=progress)
    answered = results.latest(log.records, by_key)
    lines = []
    for key, record in by_key.items():
        out = {k: v for k, v in answered[key].items() if k != "key"}
        lines.append(json.dumps({"id": record["id"], **out} if "id" in record else out))
    fileio.write_text(out_path, "\n".join(lines) + "\n")
    failed = sum("error" in answered[key] for key in by_key)
    return {"answered": len(by_key) - failed, "failed": failed, "out": out_path}


def main(argv) -> None:
    if len(argv) > 1:
        raise cli.usage_error(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.checkpoint:
        raise cli.usage_error("--checkpoint is required")
    batch_mode = bool(FLAGS.questions)
    if batch_mode and (FLAGS.video or FLAGS.question):
        raise cli.usage_error("give either --video and --question, or --questions and --out")
    for name in (("questions", "out") if batch_mode else ("video", "question")):
        if not FLAGS[name].value:
            raise cli.usage_error(f"--{name} is required" + (" with --questions" if batch_mode else
                                                              " (or --questions FILE.jsonl --out FILE)"))
    from momentor_jax.data.video import VideoDecodeError  # noqa: PLC0415
    from momentor_jax.inference import generate  # noqa: PLC0415
    try:
        generate.SamplingConfig(max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                                top_p=FLAGS.top_p)
        if batch_mode and FLAGS.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {FLAGS.batch_size}")
    except ValueError as e:
        raise cli.usage_error(f"--{e}") from None
    settings = dict(max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature, top_p=FLAGS.top_p,
                    seed=FLAGS.seed, system_prompt=FLAGS.system_prompt)
    try:
        if batch_mode:
            summary = predict_batch(FLAGS.checkpoint, FLAGS.questions, FLAGS.out, batch_size=FLAGS.batch_size,
                                    **settings)
        else:
            result = predict(FLAGS.checkpoint, FLAGS.video, FLAGS.question, progress=True, **settings)
    except VideoDecodeError as e:
        print(f"error: video {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_INPUT)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        where = (f"; the answers so far are in {FLAGS.out}.parts, rerun the same command to resume"
                 if batch_mode else "")
        print(f"interrupted{where}", file=sys.stderr, flush=True)
        sys.exit(cli.EXIT_INTERRUPTED)
    if batch_mode:
        print(f"answered {summary['answered']} questions, {summary['failed']} failed (undecodable video); "
              f"wrote {summary['out']}", flush=True)
        sys.exit(EXIT_FAILED_VIDEOS if summary["failed"] else 0)
    print(json.dumps(result) if FLAGS.json else result["answer"], flush=True)


if __name__ == "__main__":
    cli.cpu_decode_flags()  # before JAX starts
    _define_flags()
    cli.run(main)
