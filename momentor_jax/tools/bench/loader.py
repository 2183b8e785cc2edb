"""`loader`: Grain examples/s against what the train step consumes; frame extraction against a decode-only pass.

    python -m momentor_jax.tools.bench loader [--config=configs/bench.py] [--workers=0,1,2] [--num_videos 12]
        [--train_json DIR/train.json] [--gcs [--gcs_latency_ms MS]]

1. Renders synthetic mp4s (data/synthetic.py), extracts their frames to TFRecords with the real extraction
   (data/extract.py: PyAV decode, CLIP resize, JPEG, TFRecord + index) and times it against decoding every frame of
   the same files with PyAV alone: `extraction.videos_per_s` vs `extraction.decode_only_videos_per_s`.
2. Times `make_train_loader` over those records (JSONL examples joined to frame records, JPEGs decoded, tokenized,
   batched) with each worker count, the counts taking turns `--rounds` times: `loader[*].examples_per_s` is the
   median over rounds, each timed after warm-up batches (worker start-up excluded).
3. Takes the train step's examples/s: `--train_json` (a `bench train` result) when given, else the train suite's
   `measure_train`, else one jitted step of the real trainer timed here on a loader batch.
4. `ratio` = the best worker count's examples/s / the train step's (each worker count in `ratios`); the target
   is >= 4. `per_example_ms` splits one example's loading into its stages (in this process, one thread).
5. With `--gcs`: the same examples and shards uploaded to a GCS server on loopback (fake-gcs-server,
   momentor_jax/tools/gcs_emulator.py; optionally behind a proxy adding `--gcs_latency_ms` to every request), and
   the loader timed reading them through gcsfs with each worker count, local and gs:// taking turns in every round:
   `gcs.vs_local[workers]` = gs:// examples/s / local examples/s; the target is >= 0.5 with workers.

Frame count, frame size, max_length and batch size come from the config. On a CPU-only host the loader's
processes and the train step share the cores; the two are timed one after the other. The synthetic frames are flat
shapes: their JPEGs are small (~3 KB at 224 px) and decode about 1.5x faster than textured, camera-like frames
(~25 KB), so real data loads somewhat slower per example than these figures.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time

import av
import numpy as np
from absl import flags

from momentor_jax import fileio
from momentor_jax.data import extract, synthetic
from momentor_jax.tools.bench import common, loader_data

TARGET_RATIO = 4.0
GCS_TARGET = 0.5  # gs:// examples/s over local examples/s, with workers


# ------------------------------------------------------------------------------------------------ extraction


def render_videos(video_dir: str, num_videos: int, size: int, seed: int = 0) -> list:
    """num_videos synthetic mp4s (<video_id>.mp4, size x size, 12-30 s at 8 fps) -> their specs."""
    os.makedirs(video_dir, exist_ok=True)
    specs = synthetic.sample_videos(seed, num_videos, size=size)
    for spec in specs:
        synthetic.write_video(spec, os.path.join(video_dir, f"{spec.video_id}.mp4"))
    return specs


def decode_all_frames(paths: list) -> int:
    """Decodes every frame of every file with PyAV (threading as extraction sets it), converting nothing."""
    count = 0
    for path in paths:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for _ in container.decode(stream):
                count += 1
    return count


def time_extraction(video_dir: str, out_root: str, *, num_frames: int, size: int, repeats: int,
                    workers: int) -> tuple:
    """(figures, frames directory of the last pass): extraction videos/s and decode-only videos/s (medians)."""
    paths = sorted(os.path.join(video_dir, name) for name in os.listdir(video_dir))
    frames_decoded = []
    decode = common.time_repeats(lambda: frames_decoded.append(decode_all_frames(paths)), repeats=repeats,
                                 warmup=1, label="decode only")
    passes = iter(range(repeats + 1))
    out_dir = None

    def extract_once():
        nonlocal out_dir
        if out_dir is not None:
            shutil.rmtree(out_dir)
        out_dir = os.path.join(out_root, f"frames-{next(passes)}")
        summary = extract.extract_frames(video_dir, out_dir, num_frames=num_frames, size=size, num_shards=2,
                                         workers=workers, progress=False)
        if summary.extracted != len(paths):
            raise RuntimeError(f"extraction: {summary.line()}")

    full = common.time_repeats(extract_once, repeats=repeats, warmup=1, label="extraction")
    videos_per_s = len(paths) / full["median_s"]
    decode_per_s = len(paths) / decode["median_s"]
    figures = {"num_videos": len(paths), "workers": workers, "frames_per_video": num_frames,
               "source_frames_decoded": frames_decoded[-1],
               "videos_per_s": videos_per_s, "decode_only_videos_per_s": decode_per_s,
               "extraction_vs_decode_only": videos_per_s / decode_per_s,
               "extraction_timing": full, "decode_only_timing": decode}
    return figures, out_dir


# ------------------------------------------------------------------------------------------------ loader


def data_config(examples: list, frames_dir: str, read_threads: int, system_prompt) -> dict:
    return {"examples": examples, "frames": frames_dir, "read_threads": read_threads, "system_prompt": system_prompt}


def time_loader(config: dict, tokenizer, *, workers: int, num_frames: int, max_length: int, batch_size: int,
                num_batches: int, warmup_batches: int) -> tuple:
    """(figures, last batch): examples/s over `num_batches` batches after `warmup_batches` (which absorb worker
    start-up), and the records skipped."""
    from momentor_jax.data import loader  # noqa: PLC0415

    iterator = loader.make_train_loader(config, tokenizer=tokenizer, num_frames=num_frames, max_length=max_length,
                                        global_batch_size=batch_size, seed=0, worker_count=workers)
    try:
        start = time.perf_counter()
        for _ in range(warmup_batches):
            next(iterator)
        startup = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(num_batches):
            batch = next(iterator)
        elapsed = time.perf_counter() - start
        skipped = iterator.num_skipped_records
    finally:
        iterator.close()
    if batch["frames"].shape[:2] != (batch_size, num_frames):
        raise RuntimeError(f"unexpected frames batch {batch['frames'].shape}")
    examples_per_s = num_batches * batch_size / elapsed
    return {"workers": workers, "examples_per_s": examples_per_s, "frames_per_s": examples_per_s * num_frames,
            "batches": num_batches, "warmup_batches": warmup_batches, "warmup_s": startup, "seconds": elapsed,
            "skipped_records": skipped}, batch


def compare_worker_counts(config: dict, tokenizer, worker_counts: list, rounds: int, **kwargs) -> tuple:
    """([figures per worker count], a batch): the worker counts take turns, `rounds` times, so load from other
    programs falls on all of them alike; examples/s is the median over rounds (each round's in `rounds`)."""
    summaries, batch = compare_sources({"local": config}, tokenizer, worker_counts, rounds, **kwargs)
    return summaries["local"], batch


def compare_sources(sources: dict, tokenizer, worker_counts: list, rounds: int, **kwargs) -> tuple:
    """({source: [figures per worker count]}, a batch): every (worker count, source) pair takes its turn in each
    round, so the sources are compared under the same load."""
    runs = {(name, w): [] for name in sources for w in worker_counts}
    batch = None
    for round_index in range(rounds):
        for workers in worker_counts:
            for name, config in sources.items():
                figures, batch = time_loader(config, tokenizer, workers=workers, **kwargs)
                runs[name, workers].append(figures)
                print(f"  loader round {round_index + 1}/{rounds}, {name}, {workers} workers: "
                      f"{figures['examples_per_s']:.1f} examples/s", flush=True)
    summaries = {name: [] for name in sources}
    for (name, workers), per_round in runs.items():
        rates = [r["examples_per_s"] for r in per_round]
        median = float(np.median(rates))
        summaries[name].append({"workers": workers, "examples_per_s": median,
                                "frames_per_s": median * kwargs["num_frames"], "rounds": rates,
                                "warmup_s": [r["warmup_s"] for r in per_round],
                                "skipped_records": sum(r["skipped_records"] for r in per_round)})
    return summaries, batch


def upload_data(data: dict, root: str) -> dict:
    """The loader inputs copied under `root` (gs://...): examples, and the frame shards with their indexes."""
    examples = [fileio.join(root, os.path.basename(p)) for p in data["examples"]]
    for local, remote in zip(data["examples"], examples):
        fileio.copy(local, remote)
    frames = fileio.join(root, "frames")
    fileio.put_tree(data["frames"], frames)
    return {**data, "examples": examples, "frames": frames}


def per_example_stages(config: dict, tokenizer, *, num_frames: int, max_length: int, batch_size: int,
                       count: int) -> dict:
    """Milliseconds per example of each step `LoadExample` takes, `whole` (LoadExample itself) and the batch
    stack, in this process on one thread: medians over `count` examples (at least one batch), so a preempted
    example does not count."""
    from momentor_jax.data import encode, loader  # noqa: PLC0415
    from momentor_jax.data import frames as frames_lib  # noqa: PLC0415

    examples, videos, _ = loader.open_examples(config["examples"], config["frames"])
    load = loader.LoadExample(examples, videos, tokenizer, num_frames, max_length,
                              system_prompt=config["system_prompt"])
    extra = {} if config["system_prompt"] is None else {"system_prompt": config["system_prompt"]}
    times = {key: [] for key in ("jsonl_read", "record_read", "parse_and_jpeg_decode", "tokenize_encode", "whole",
                                 "batch_stack")}
    group = []
    count = max(count, batch_size)
    for i in range(count):
        index = i % len(examples)
        t0 = time.perf_counter()
        example = examples[index]
        t1 = time.perf_counter()
        data = videos.get_bytes(example["id"])
        t2 = time.perf_counter()
        duration = float(frames_lib.parse_video_record(data)["duration"])
        t3 = time.perf_counter()
        encode.encode_example(example, tokenizer, duration, num_frames, max_length, **extra)
        t4 = time.perf_counter()
        group.append(load(index))
        t5 = time.perf_counter()
        for key, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            times[key].append(seconds)
        if len(group) == batch_size:
            start = time.perf_counter()
            _ = {key: np.stack([e[key] for e in group]) for key in group[0]}  # what grain's batch does
            times["batch_stack"].append((time.perf_counter() - start) / batch_size)
            group = []
    out = {key: float(np.median(values)) * 1e3 for key, values in times.items() if values}
    out["examples"] = count
    return out


# ------------------------------------------------------------------------------------------------ train step


def train_from_json(path: str) -> dict:
    """The train step's examples/s from a `bench train` result file (DIR/train.json)."""
    with open(path) as f:
        result = json.load(f)
    if result.get("suite") != "train" or not isinstance(result.get("examples_per_s"), (int, float)):
        raise ValueError(f"{path}: not a `bench train` result with examples_per_s")
    return {"examples_per_s": float(result["examples_per_s"]), "source": f"train_json {path}",
            "batch_size": result.get("batch_size"), "config": result.get("config")}


def _train_suite_measure():
    """The train suite's `measure_train(config, steps, warmup)`, or None while it does not exist."""
    try:
        from momentor_jax.tools.bench import train as train_suite  # noqa: PLC0415
    except ModuleNotFoundError as e:
        if e.name != "momentor_jax.tools.bench.train":
            raise
        return None
    return getattr(train_suite, "measure_train", None)


def time_train_step(config, batch: dict, steps: int, warmup: int) -> dict:
    """The real trainer's jitted step (state donated) on `batch`: examples/s from the median step time."""
    import jax  # noqa: PLC0415

    from momentor_jax.models.config import MomentorConfig  # noqa: PLC0415
    from momentor_jax.training import sharding, trainer  # noqa: PLC0415

    model_config = MomentorConfig.from_dict(config.model)
    mesh = sharding.make_mesh(config.mesh)
    train_step = trainer.build_train_step(config, model_config, mesh, steps + warmup)
    state = [train_step.factory.random_init(config.seed)]
    global_batch = sharding.global_batch(batch, mesh)

    def one_step():
        state[0], metrics = train_step(state[0], global_batch)
        jax.block_until_ready(metrics)

    timing = common.time_repeats(one_step, repeats=steps, warmup=warmup, label="train step")
    return {"examples_per_s": config.batch_size / timing["median_s"], "step_s": timing["median_s"],
            "source": "train step timed by the loader suite", **timing}


def train_consumption(args, config, batch: dict) -> dict:
    if args.train_json:
        return train_from_json(args.train_json)
    measure_train = _train_suite_measure()
    if measure_train is not None:
        result = dict(measure_train(config, args.train_steps, args.train_warmup))
        result["source"] = "tools/bench/train.py measure_train"
        return result
    return time_train_step(config, batch, args.train_steps, args.train_warmup)


# ------------------------------------------------------------------------------------------------ the suite


def define_flags(flag_values, argv) -> None:
    common.define_config(flag_values, argv, "frames, frame size, max_length, batch size, read threads")
    fv = {"flag_values": flag_values}
    flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker counts to time, comma-separated", **fv)
    flags.DEFINE_integer("num_videos", 12, "synthetic videos to render and extract", **fv)
    flags.DEFINE_integer("video_size", 360, "rendered video side (even), resized on extraction to the config's "
                         "image size", **fv)
    flags.DEFINE_integer("num_batches", 32, "timed loader batches per worker count", **fv)
    flags.DEFINE_integer("warmup_batches", 3, "untimed loader batches (worker start-up)", **fv)
    flags.DEFINE_integer("rounds", 3, "times each worker count is timed, taking turns", **fv)
    flags.DEFINE_integer("extract_repeats", 3, "timed extraction passes", **fv)
    flags.DEFINE_integer("extract_workers", 1, "extraction processes", **fv)
    flags.DEFINE_integer("stage_examples", 24, "examples for the per-stage split", **fv)
    flags.DEFINE_string("train_json", None, "use this `bench train` result instead of timing a step", **fv)
    flags.DEFINE_integer("train_steps", 2, "timed train steps (about a minute each for configs/bench.py on a busy "
                         "2-core CPU)", **fv)
    flags.DEFINE_integer("train_warmup", 1, "untimed train steps", **fv)
    flags.DEFINE_string("work_dir", None, "keep the videos and records here (default: a temp dir)", **fv)
    flags.DEFINE_bool("gcs", False, "also time the loader on the same data in a GCS server on loopback "
                      "(fake-gcs-server; needs the test extra), local and gs:// taking turns", **fv)
    flags.DEFINE_float("gcs_latency_ms", 0.0, "with --gcs: milliseconds added to every request by a proxy in front "
                       "of the server (a real bucket's first byte takes ~10-50 ms)", **fv)


@contextlib.contextmanager
def _work_dir(path):
    if path:
        os.makedirs(path, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
            yield tmp


def run(args) -> dict:
    config = args.config
    workers = [int(w) for w in args.workers]
    num_frames, max_length, batch_size = int(config.num_frames), int(config.max_length), int(config.batch_size)
    image_size = int(config.model.vision.image_size)
    system_prompt = config.data.system_prompt
    read_threads = int(config.data.read_threads)
    setup = {"config": common.config_record(args)["config"], "num_frames": num_frames, "image_size": image_size,
             "max_length": max_length, "batch_size": batch_size, "read_threads": read_threads,
             "num_videos": args.num_videos, "video_size": args.video_size}
    print(f"{args.num_videos} videos of {args.video_size}px -> {num_frames} frames of {image_size}px, "
          f"max_length {max_length}, batch {batch_size}", flush=True)

    with _work_dir(args.work_dir) as work:
        video_dir = os.path.join(work, "videos")
        specs = render_videos(video_dir, args.num_videos, args.video_size)
        extraction, frames_dir = time_extraction(video_dir, work, num_frames=num_frames, size=image_size,
                                                 repeats=args.extract_repeats, workers=args.extract_workers)
        examples = loader_data.write_examples(work, specs)
        tokenizer = loader_data.make_tokenizer(work, int(config.model.num_temporal_tokens))
        data = data_config(examples, frames_dir, read_threads, system_prompt)

        timing = dict(num_frames=num_frames, max_length=max_length, batch_size=batch_size,
                      num_batches=args.num_batches, warmup_batches=args.warmup_batches)
        gcs = None
        if args.gcs:
            loader_runs, gcs_runs, gcs, batch = _with_gcs(args, workers, data, tokenizer, timing)
        else:
            loader_runs, batch = compare_worker_counts(data, tokenizer, workers, args.rounds, **timing)
        stages = per_example_stages(data, tokenizer, num_frames=num_frames, max_length=max_length,
                                    batch_size=batch_size, count=args.stage_examples)

    train = train_consumption(args, config, batch)
    best = max(loader_runs, key=lambda r: r["examples_per_s"])
    ratios = {str(r["workers"]): r["examples_per_s"] / train["examples_per_s"] for r in loader_runs}
    ratio = best["examples_per_s"] / train["examples_per_s"]

    common.print_table("loader: examples/s (after warm-up) vs the train step", [
        *({"what": f"grain, {r['workers']} workers", "examples/s": r["examples_per_s"],
           "frames/s": r["frames_per_s"], "x train step": ratios[str(r["workers"])]} for r in loader_runs),
        {"what": "train step", "examples/s": train["examples_per_s"], "frames/s": train["examples_per_s"] * num_frames,
         "x train step": 1.0},
    ], ["what", "examples/s", "frames/s", "x train step"])
    common.print_table("one example's loading, ms (one thread)", [
        {"stage": key, "ms": value} for key, value in stages.items() if key != "examples"], ["stage", "ms"])
    common.print_table("frame extraction", [
        {"what": "extract (decode + resize + JPEG + TFRecord)", "videos/s": extraction["videos_per_s"]},
        {"what": "PyAV decode only, every frame", "videos/s": extraction["decode_only_videos_per_s"]},
    ], ["what", "videos/s"])
    if gcs is not None:
        common.print_table(f"loader from gs:// (GCS server on loopback, +{args.gcs_latency_ms:g} ms per request) "
                           "vs local files", [
                               {"workers": r["workers"], "gs:// examples/s": r["examples_per_s"],
                                "local examples/s": local["examples_per_s"],
                                "gs:// / local": gcs["vs_local"][str(r["workers"])]}
                               for r, local in zip(gcs_runs, loader_runs)],
                           ["workers", "gs:// examples/s", "local examples/s", "gs:// / local"])
        print(f"gs:// / local with workers: best {gcs['best_vs_local_with_workers']:.2f} "
              f"({'meets' if gcs['meets_target'] else 'misses'} the {GCS_TARGET:g} target); "
              f"{gcs['retries']} transient errors retried")
    print(f"\nratio (best: {best['workers']} workers) = {ratio:.1f}x the train step "
          f"({'meets' if ratio >= TARGET_RATIO else 'misses'} the {TARGET_RATIO:g}x target); "
          f"train step from {train['source']}")
    return {"setup": setup, "loader": loader_runs, "best_workers": best["workers"],
            "loader_examples_per_s": best["examples_per_s"], "train": train, "ratio": ratio, "ratios": ratios,
            "target_ratio": TARGET_RATIO, "meets_target": ratio >= TARGET_RATIO, "per_example_ms": stages,
            "extraction": extraction, **({"gcs": gcs} if gcs is not None else {})}


def _with_gcs(args, workers: list, data: dict, tokenizer, timing: dict) -> tuple:
    """(local runs, gs:// runs, gs:// figures, a batch): the data uploaded to an emulator, both timed in turns."""
    from momentor_jax import gcs as gcs_lib  # noqa: PLC0415
    from momentor_jax.tools import gcs_emulator  # noqa: PLC0415

    with gcs_emulator.Emulator(proxy=args.gcs_latency_ms > 0) as emulator:
        if emulator.proxy is not None:
            emulator.proxy.latency = args.gcs_latency_ms / 1e3
        remote = upload_data(data, f"{emulator.make_bucket('bench-loader')}/data")
        retries_before = gcs_lib.retry_count()
        summaries, batch = compare_sources({"local": data, "gs://": remote}, tokenizer, workers, args.rounds,
                                           **timing)
        retries = gcs_lib.retry_count() - retries_before
    local_runs, gcs_runs = summaries["local"], summaries["gs://"]
    vs_local = {str(remote["workers"]): remote["examples_per_s"] / local["examples_per_s"]
                for remote, local in zip(gcs_runs, local_runs)}
    with_workers = [v for w, v in vs_local.items() if int(w) > 0] or list(vs_local.values())
    best = max(with_workers)
    figures = {"loader": gcs_runs, "vs_local": vs_local, "best_vs_local_with_workers": best,
               "latency_ms": args.gcs_latency_ms, "target": GCS_TARGET, "meets_target": best >= GCS_TARGET,
               "retries": retries}
    return local_runs, gcs_runs, figures, batch
