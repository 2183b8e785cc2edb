"""The end-to-end CPU demo: a small Momentor trained from scratch learns to localize events in synthetic videos.

    python -m momentor_jax.demo [--workdir=demo_workdir] [--quick] [--ablate_tpm] [--config=configs/demo.py]
                                [--config.KEY=VALUE ...]

Every step runs the project's real command in a subprocess (argument lists, never shell strings):
  1. data/make_synthetic.py      training + held-out videos with known events
  2. data/convert_data_gesm.py, data/convert_data.py, data/extract_frames.py, and a small sentencepiece tokenizer
  3. momentor_jax.train          stage 1 GESM, then stage 2 instruction tuning warm-started from stage 1, the
                                 vision tower stage 1 trained kept frozen (trainable=all_but_vision)
  4. momentor_jax.evaluate       temporal grounding on the held-out videos; next to it two baselines on the same
                                 queries (a seeded random window, the single fixed window that grounds the
                                 training videos' queries best, by grid search)
  5. momentor_jax.convert export_hf of the trained model
`--ablate_tpm` (or `--config.model.tpm.enabled=False`, an alias of `--config.model.tpm_enabled=False`) trains and
evaluates with times written as plain text.
`--config.KEY=VALUE` flags are passed to both training stages (the config's variant is the stage's: gesm, then
instruct). Re-running on the same workdir reuses finished steps. Exit status: 0; 1 when a step fails; 2 on bad flags.
"""
from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
import time
from typing import Optional, Sequence

from momentor_jax import cli

REPO_ROOT = cli.REPO_ROOT
CONFIG_FILE = os.path.join(REPO_ROOT, "configs", "demo.py")
DONE_MARKER = "DEMO_STEP_DONE"
# The ablation switch is the config key model.tpm_enabled; `--config.model.tpm.enabled=` (the name the demo issue
# gives it) is accepted as an alias.
TPM_SWITCH = "--config.model.tpm_enabled="
TPM_SWITCH_ALIAS = "--config.model.tpm.enabled="
MAX_LENGTH_FLAG = "--config.max_length="
TRAINABLE_FLAG = "--config.trainable="
# Moment-10M data types whose answers are time spans, plus the demo's own grounding dialogues.
LOCALIZATION_TYPES = ("segment_locate_data", "appearance_data", "qa_data", "grounding_data")


def _log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_command(args: Sequence[str], what: str) -> None:
    """Runs one pipeline command with the repository on PYTHONPATH; its output streams through; fails loudly."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("JAX_PLATFORMS", "cpu")
    _log(f"{what}: {' '.join(args[1:])}")
    completed = subprocess.run(list(args), cwd=REPO_ROOT, env=env, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"demo: {what} failed with exit status {completed.returncode}")


def _python(*args: str) -> list:
    return [sys.executable, *args]


def _done(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, DONE_MARKER))


def _mark_done(directory: str) -> None:
    with open(os.path.join(directory, DONE_MARKER), "w") as f:
        f.write("ok\n")


# ------------------------------------------------------------------------------------------------ settings


def demo_settings(quick: bool, ablate_tpm: bool) -> dict:
    """Data and training sizes; --quick is the smoke test's path (no learning expected). Few training videos, so a
    model trained for minutes sees each often; enough held-out queries that the scores do not hang on a few; more
    stage-1 steps than a plain split would give, so time is read off the frames early (docs/measurements.md)."""
    fmt = "text" if ablate_tpm else "temporal"
    # Stage 2 keeps the vision tower that stage 1 trained frozen, as the paper keeps CLIP's: its step then runs the
    # tower forward only, and the tower's backward is about half of a stage-1 step's time.
    trainable = ("all", "all_but_vision")
    if quick:
        return {"train_videos": 6, "heldout_videos": 2, "gesm_steps": 3, "instruct_steps": 3, "batch_size": 2,
                "fmt": fmt, "trainable": trainable}
    return {"train_videos": 400, "heldout_videos": 200, "gesm_steps": 400, "instruct_steps": 800, "batch_size": 16,
            "fmt": fmt, "trainable": trainable}


# The shares of the host's measured fp32 matmul rate the demo's train steps reached on CPU (45.9% of a 184 GFLOP/s
# peak and 44% of ~110 in bench train; 31% of a 254 GFLOP/s peak in a fresh-clone run, docs/measurements.md): the
# estimate is a range between them. Besides training: data, evaluation and export.
DEMO_MFU_RANGE = (0.45, 0.30)
DEMO_OTHER_MINUTES = 1.5


def host_matmul_flops() -> float:
    """The host's fp32 matmul FLOP/s (best of a few 2048^3 products, as the bench suites measure it; ~2 s)."""
    from momentor_jax.tools.bench import peak  # noqa: PLC0415 (imports jax; only the estimate needs it)
    return peak.matmul_flops(2048, "float32", repeats=4)["best_flops_per_s"]


def expected_minutes(model_config, max_lengths: Sequence[int], settings: dict,
                     flops_per_s: float) -> tuple[float, float]:
    """(fewest, most) wall minutes the demo should take on a host with this matmul rate: the training FLOPs of both
    stages (rows of `max_lengths[stage]` tokens) at each share of DEMO_MFU_RANGE, plus the rest."""
    from momentor_jax.training import flops  # noqa: PLC0415
    stages = zip((settings["gesm_steps"], settings["instruct_steps"]), max_lengths, settings["trainable"])
    total = sum(steps * settings["batch_size"] * flops.training_flops_per_example(model_config, length, trainable)
                for steps, length, trainable in stages)
    low, high = (total / (mfu * flops_per_s) / 60 + DEMO_OTHER_MINUTES for mfu in DEMO_MFU_RANGE)
    return low, high


def minutes_range(minutes: tuple[float, float]) -> str:
    return f"{minutes[0]:.0f}-{minutes[1]:.0f} min"


def stage_max_length(examples_path: str, tokenizer_dir: str, model_config, system_prompt: str, cap: int) -> int:
    """The row length a stage needs: its longest encoded dialogue rounded up to a multiple of 8, at most `cap` (the
    config's max_length, which would truncate the same dialogues). Rows of the demo's short dialogues padded to the
    config's length would spend most of each step on padding."""
    from momentor_jax.data import packing  # noqa: PLC0415
    from momentor_jax.data.encode import encode_example  # noqa: PLC0415
    from momentor_jax.data.tokenizer import MomentorTokenizer  # noqa: PLC0415

    tokenizer = MomentorTokenizer.load(tokenizer_dir)
    longest = 0
    for example in read_queries(examples_path):
        # Lengths do not depend on the times: a duration past every time keeps them valid.
        encoded = encode_example(example, tokenizer, 1e9, model_config.num_frames, cap, system_prompt=system_prompt)
        longest = max(longest, packing.real_length(encoded))
    return min(cap, -(-longest // 8) * 8)


# ------------------------------------------------------------------------------------------------ data


def grounding_examples(gesm_raw_path: str, fmt: str, seed: int) -> list:
    """One training dialogue per video whose turns ask for each event's window in a random order, with the event's
    caption as the query, worded as the evaluate command asks its grounding questions (training videos only).
    Several questions per dialogue share one pass over the video's frames."""
    from momentor_jax import constants  # noqa: PLC0415
    from momentor_jax.data import moment10m  # noqa: PLC0415

    from momentor_jax.evaluation.tasks import grounding_question  # noqa: PLC0415

    rng = random.Random(seed)
    with open(gesm_raw_path) as f:
        raw = json.load(f)
    records = []
    for video_id, entry in raw.items():
        events = list(zip(entry["timestamps"], entry["captions"]))
        rng.shuffle(events)
        turns, times = [], []
        for (start, end), caption in events:
            if fmt == "temporal":
                answer = f"{moment10m.placeholder_window(constants.TEMP_OUTPUT_TOKEN)}."
                times.extend([start, end])
            else:
                answer = f"{rng.choice(moment10m.MOMENT_TEMPLATE_POOL).format(start, end)}."
            turns.append({"User": grounding_question(caption), "Assistant": answer})
        records.append({"id": video_id, "data_type": "grounding_data", "conversations": turns,
                        "temporal_input_times": [], "temporal_output_times": times})
    return records


def keep_localization_dialogues(path: str, extra: Sequence[dict]) -> None:
    """Rewrites the stage-2 examples with only the dialogues that answer with time spans, plus `extra`: a model this
    small, trained for minutes, learns grounding much sooner without the captioning and colour questions."""
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    kept = [r for r in records if r["data_type"] in LOCALIZATION_TYPES]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in [*kept, *extra])
    _log(f"stage 2 examples: {len(kept)} of {len(records)} Moment-10M dialogues (localization types) + "
         f"{len(extra)} grounding dialogues -> {path}")


def train_tokenizer(example_paths: Sequence[str], out_dir: str, model_config, seed: int) -> None:
    from momentor_jax import constants  # noqa: PLC0415
    from momentor_jax.data import synthetic  # noqa: PLC0415
    from momentor_jax.data import tokenizer as tokenizer_lib  # noqa: PLC0415

    texts = synthetic.tokenizer_texts(seed=seed)
    for path in example_paths:
        with open(path) as f:
            for line in f:
                for turn in json.loads(line)["conversations"]:
                    texts.extend(v for v in turn.values() if v)
    base_vocab = model_config.llm.vocab_size - constants.NUM_ADDED_TOKENS
    model_path = tokenizer_lib.train_sentencepiece(texts, os.path.join(out_dir, "sentencepiece"),
                                                   vocab_size=base_vocab)
    tokenizer_lib.MomentorTokenizer(model_path, model_config.num_temporal_tokens).save(
        os.path.join(out_dir, "tokenizer"))


def prepare_data(data_dir: str, settings: dict, model_config, seed: int) -> None:
    """Renders, converts and extracts the data set into `data_dir` (the trainer's prepared-data layout)."""
    if _done(data_dir):
        _log(f"data: reusing {data_dir}")
        return
    raw = os.path.join(data_dir, "raw")
    num_videos = settings["train_videos"] + settings["heldout_videos"]
    run_command(_python("data/make_synthetic.py", "--out", raw, "--num_videos", str(num_videos),
                        "--num_heldout", str(settings["heldout_videos"]), "--seed", str(seed),
                        "--size", str(max(64, model_config.vision.image_size))), "render videos")
    fmt = settings["fmt"]
    gesm_path = os.path.join(data_dir, "gesm_train.jsonl")
    instruct_path = os.path.join(data_dir, "instruct_train.jsonl")
    run_command(_python("data/convert_data_gesm.py", "--source_path", os.path.join(raw, "gesm_train.json"),
                        "--target_path", gesm_path, "--format", fmt, "--seed", str(seed)), "convert GESM")
    run_command(_python("data/convert_data.py", "--source_path", os.path.join(raw, "moment10m_train.json"),
                        "--target_path", instruct_path, "--format", fmt, "--seed", str(seed)),
                "convert Moment-10M")
    keep_localization_dialogues(instruct_path, grounding_examples(os.path.join(raw, "gesm_train.json"), fmt, seed))
    run_command(_python("data/extract_frames.py", "--video_dir", os.path.join(raw, "videos"),
                        "--out_dir", os.path.join(data_dir, "frames"), "--num_frames", str(model_config.num_frames),
                        "--size", str(model_config.vision.image_size)), "extract frames")
    _log("training the sentencepiece tokenizer")
    train_tokenizer([gesm_path, instruct_path], data_dir, model_config, seed)
    _mark_done(data_dir)


# ------------------------------------------------------------------------------------------------ training


def train_stage(config_file: str, variant: str, run_dir: str, data_dir: str, steps: int, batch_size: int,
                max_length: int, trainable: str, overrides: Sequence[str], init_from: Optional[str] = None) -> None:
    """Runs one training stage; `max_length` and `trainable` unless the overrides set them."""
    args = _python("-m", "momentor_jax.train", f"--config={config_file}:{variant}", f"--workdir={run_dir}",
                   f"--config.data.dir={data_dir}", f"--config.total_steps={steps}",
                   f"--config.batch_size={batch_size}")
    for flag, value in ((MAX_LENGTH_FLAG, max_length), (TRAINABLE_FLAG, trainable)):
        if not any(a.startswith(flag) for a in overrides):
            args.append(f"{flag}{value}")
    if init_from:
        args.append(f"--config.init_from={init_from}")
    run_command(args + list(overrides), f"train {variant}")


# ------------------------------------------------------------------------------------------------ evaluation


def read_queries(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def random_baseline(queries: Sequence[dict], seed: int) -> list:
    """One uniformly random window per query (seeded), as grounding predictions."""
    rng = random.Random(seed)
    predictions = []
    for q in queries:
        a, b = sorted(rng.uniform(0.0, q["duration"]) for _ in range(2))
        predictions.append({"qid": q["qid"], "pred_relevant_windows": [[a, b, 1.0]]})
    return predictions


def fixed_window_baseline(fit_queries: Sequence[dict], queries: Sequence[dict], grid: int = 40) -> tuple:
    """The best single window [s, e] in normalized time, chosen separately for each metric by grid search over
    `fit_queries` (the training videos' answers), then scored on `queries`: a query-blind predictor fit the way a
    model is, on training data only. Returns ({metric: value on queries}, {metric: (s, e)})."""
    from momentor_jax.evaluation.metrics import evaluate_grounding  # noqa: PLC0415

    def predict(window, on):
        s, e = window
        return [{"qid": q["qid"], "pred_relevant_windows": [[s * q["duration"], e * q["duration"], 1.0]]} for q in on]

    best, windows = {}, {}
    points = [i / grid for i in range(grid + 1)]
    for i, s in enumerate(points):
        for e in points[i + 1:]:
            for metric, value in evaluate_grounding(predict((s, e), fit_queries), fit_queries).items():
                if value > best.get(metric, -1.0):
                    best[metric], windows[metric] = value, (s, e)
    scored = {metric: float(evaluate_grounding(predict(window, queries), queries)[metric])
              for metric, window in windows.items()}
    return scored, windows


def evaluate_model(checkpoint: str, queries_path: str, frames_dir: str, out_dir: str) -> dict:
    """Runs the project's evaluate command; returns its metrics (R1@0.3/0.5/0.7, mIoU in percent)."""
    run_command(_python("-m", "momentor_jax.evaluate", "--checkpoint", checkpoint, "--task", "grounding",
                        "--annotations", queries_path, "--frames_dir", frames_dir, "--out", out_dir),
                "evaluate grounding")
    with open(os.path.join(out_dir, "metrics.json")) as f:
        metrics = json.load(f)
    return {k: float(metrics[k]) for k in ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")} if "mIoU" in metrics \
        else {k: float(v) for k, v in metrics["grounding"].items()}


def plot_heldout(queries: Sequence[dict], eval_dir: str, path: str, max_videos: int = 4) -> str:
    """Timeline PNG for the first few held-out videos: every query's true window above, its prediction below, with
    unparsable answers and missing videos marked (from the evaluate command's predictions and answers)."""
    from momentor_jax.evaluation.plots import plot_timelines  # noqa: PLC0415

    predicted, status = {}, {}
    for record in read_queries(os.path.join(eval_dir, "predictions.jsonl")):
        predicted[str(record["qid"])] = [w[:2] for w in (record.get("pred_relevant_windows") or [])[:1]]
    for record in read_queries(os.path.join(eval_dir, "answers.jsonl")):
        status[str(record["qid"])] = ("missing video" if record.get("error") else
                                      None if record.get("parsed") else "unparsable")
    rows, videos = [], []
    for q in queries:
        if q["vid"] not in videos:
            if len(videos) == max_videos:
                continue
            videos.append(q["vid"])
        rows.append({"label": f"{q['vid'][:6]} {q['query']}", "duration": q["duration"],
                     "ground_truth": q["relevant_windows"], "predicted": predicted.get(str(q["qid"]), []),
                     "status": status.get(str(q["qid"]))})
    return plot_timelines(rows, path, title="held-out grounding: true (green) vs predicted (orange)",
                          total=len(queries))


# ------------------------------------------------------------------------------------------------ main


def _define_flags(flag_values, argv) -> None:
    from absl import flags  # noqa: PLC0415
    cli.define_config(flag_values, argv, default=CONFIG_FILE)
    flags.DEFINE_string("workdir", "demo_workdir", "where the data, runs, evaluation and export go",
                        flag_values=flag_values)
    flags.DEFINE_bool("quick", False, "tiny data and a few steps (smoke test)", flag_values=flag_values)
    flags.DEFINE_bool("ablate_tpm", False, "times as plain text, no temporal tokens", flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "seed of the data, the tokenizer and the random baseline", flag_values=flag_values)


def _parse(argv: Sequence[str]) -> tuple:
    """(flag values, the `--config.KEY=VALUE` arguments for the training stages); argv[0] is the program."""
    argv = [TPM_SWITCH + a.removeprefix(TPM_SWITCH_ALIAS) if a.startswith(TPM_SWITCH_ALIAS) else a for a in argv]
    args, positional = cli.parse_flags(argv, _define_flags, __doc__)
    if positional:
        cli.fail_usage(f"unexpected arguments {positional} (training overrides are written --config.KEY=VALUE)")
    overrides = cli.override_args(args["config"])
    if args.ablate_tpm:
        overrides = [TPM_SWITCH + "false", *overrides]
    if args.quick:
        overrides = ["--config.checkpoint_every_steps=1000", "--config.log_every_steps=1", *overrides]
    return args, overrides


def main(argv: Optional[Sequence[str]] = None) -> int:
    from momentor_jax.models.config import MomentorConfig  # noqa: PLC0415

    args, overrides = _parse(sys.argv if argv is None else argv)
    started = time.time()
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    config_file = os.path.abspath(args["config"].config_filename.partition(":")[0])
    model_config = MomentorConfig.from_dict(args.config.model)
    # --ablate_tpm or the config switch: the data must say times in text
    ablate_tpm = args.ablate_tpm or not model_config.tpm_enabled
    settings = demo_settings(args.quick, ablate_tpm)
    peak = host_matmul_flops()
    cap = args.config.max_length
    _log(f"this host multiplies fp32 matrices at {peak / 1e9:.0f} GFLOP/s: the demo should take about "
         f"{minutes_range(expected_minutes(model_config, (cap, cap), settings, peak))} (install not included)")
    data_dir = os.path.join(workdir, "data")
    os.makedirs(data_dir, exist_ok=True)
    prepare_data(data_dir, settings, model_config, args.seed)

    from momentor_jax.data import conversation  # noqa: PLC0415
    system_prompt = args.config.data.system_prompt or conversation.SYSTEM_PROMPT
    tokenizer_dir = os.path.join(data_dir, "tokenizer")
    max_lengths = tuple(stage_max_length(os.path.join(data_dir, name), tokenizer_dir, model_config, system_prompt, cap)
                        for name in ("gesm_train.jsonl", "instruct_train.jsonl"))
    expected = expected_minutes(model_config, max_lengths, settings, peak)
    _log(f"rows of {max_lengths[0]} (stage 1) and {max_lengths[1]} (stage 2) tokens, the longest dialogues: "
         f"{minutes_range(expected)} in all")
    stage1, stage2 = os.path.join(workdir, "stage1_gesm"), os.path.join(workdir, "stage2_instruct")
    train_stage(config_file, "gesm", stage1, data_dir, settings["gesm_steps"], settings["batch_size"], max_lengths[0],
                settings["trainable"][0], overrides)
    train_stage(config_file, "instruct", stage2, data_dir, settings["instruct_steps"], settings["batch_size"],
                max_lengths[1], settings["trainable"][1], overrides, init_from=stage1)

    eval_dir = os.path.join(workdir, "eval")
    queries_path = os.path.join(data_dir, "raw", "grounding_heldout.jsonl")
    queries = read_queries(queries_path)
    train_queries = read_queries(os.path.join(data_dir, "raw", "grounding_train.jsonl"))
    model_metrics = evaluate_model(stage2, queries_path, os.path.join(data_dir, "frames"),
                                   os.path.join(eval_dir, "model"))
    from momentor_jax.evaluation.metrics import evaluate_grounding  # noqa: PLC0415
    fixed_metrics, fixed_windows = fixed_window_baseline(train_queries, queries)
    # For reference only: the same search on the held-out answers themselves over-fits a few hundred queries.
    oracle_metrics, oracle_windows = fixed_window_baseline(queries, queries)
    results = {"model": model_metrics,
               "baseline_random": evaluate_grounding(random_baseline(queries, args.seed), queries),
               "baseline_fixed": fixed_metrics}
    with open(os.path.join(eval_dir, "metrics.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(eval_dir, "baseline_fixed_windows.json"), "w") as f:
        json.dump({"fit_on": f"{len(train_queries)} training-video queries",
                   "windows": {k: list(w) for k, w in fixed_windows.items()},
                   "heldout_oracle": {"metrics": oracle_metrics,
                                      "windows": {k: list(w) for k, w in oracle_windows.items()}}}, f, indent=1)
    figure = plot_heldout(queries, os.path.join(eval_dir, "model"),
                          os.path.join(eval_dir, "timeline.png"))

    export_dir = os.path.join(workdir, "export")
    run_command(_python("-m", "momentor_jax.convert", "export_hf", "--checkpoint", stage2, "--out", export_dir),
                "export to Hugging Face format")

    print(f"\nheld-out temporal grounding, {len(queries)} queries ({'text times' if ablate_tpm else 'TPM'}):")
    print(f"  {'':20s}" + "".join(f"{k:>9s}" for k in ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")))
    names = {"model": "Momentor (demo)", "baseline_random": "random window",
             "baseline_fixed": "best fixed window"}
    for key, metrics in results.items():
        print(f"  {names[key]:20s}" + "".join(f"{metrics[k]:9.1f}" for k in ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")))
    print(f"  (the fixed window is chosen per metric on the {len(train_queries)} training-video answers: "
          + ", ".join(f"{k} [{s:.2f}, {e:.2f}]" for k, (s, e) in fixed_windows.items()) + " of the video;\n"
          f"   chosen on the held-out answers themselves it would score R1@0.5 {oracle_metrics['R1@0.5']:.1f}, "
          f"mIoU {oracle_metrics['mIoU']:.1f})")
    better = max(results["baseline_random"]["R1@0.5"], results["baseline_fixed"]["R1@0.5"])
    if better > 0:
        print(f"  R1@0.5: {results['model']['R1@0.5'] / better:.1f}x the better baseline")
    serve = shlex.join([sys.executable, "-m", "momentor_jax.serve", "--checkpoint", stage2, "--annotations",
                        queries_path])
    print(f"\nworkdir      {workdir}\n"
          f"metrics      {os.path.join(eval_dir, 'metrics.json')}\n"
          f"figure       {figure}\n"
          f"export       {export_dir} (llm/, vision/, momentor_extras)\n"
          f"checkpoint   {stage2} (predict, evaluate and export_hf take the workdir)\n"
          f"tensorboard  tensorboard --logdir {workdir}\n"
          f"took {(time.time() - started) / 60:.1f} min "
          f"(expected {minutes_range(expected)} at {peak / 1e9:.0f} GFLOP/s)\n\n"
          f"Ask the trained model about the held-out videos in your browser (http://127.0.0.1:7860):\n"
          f"  {serve}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
