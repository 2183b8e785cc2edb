"""`train`: the trainer's own train step on a fixed in-memory batch: step time, tokens/s, model FLOPs, MFU.

    python -m momentor_jax.tools.bench train [--config=configs/bench.py] [--batch_size N] [--steps 5]
        [--warmup 2] [--config.KEY=VALUE ...]

The state and the step come from trainer.build_train_step (the trainer's mesh, axis rules and shardings, the
state donated); the step is compiled ahead of time inside its mesh context. The batch is built once in
memory with the loader's layout (uint8 frames, <vid_start> M x <vid_patch> <vid_end>, dialogue turns with temporal
placeholders, loss only on the replies) and stays on the device, so only the step is timed.

Model FLOPs follow MaxText (training/flops.training_flops_per_example). MFU = model FLOPs / median step time / peak,
where the peak is the best matmul rate this process measured: the `peak` suite before the steps, a short probe
before each step and the matmul again after them (on a shared host some of them run while other processes hold
cores; the best keeps MFU conservative). `cpu_cores_busy` says how many cores the steps actually had, and
`mfu_cpu_time` (CPU backend) is the same ratio with the steps' CPU seconds spread over all usable cores, which
other processes do not inflate (see `with_mfu`). Beside ours, XLA's count: the cost analysis of the same step
lowered with its layer stacks unrolled (a compiled scan is counted as one layer).
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from momentor_jax import constants
from momentor_jax.tools.bench import common, peak


def synthetic_batch(model_config, batch_size: int, max_length: int, seed: int = 0) -> dict:
    """A fixed numpy batch laid out the way data/encode.py writes one (constants.BATCH_KEYS).

    Each row: <s>, a system prompt, the video span, then dialogue turns (question, sometimes with two
    <TEMP-INPUT>; "ASSISTANT:"; a reply holding two <TEMP-OUTPUT>; </s>) until 75-100% of max_length is filled,
    the rest padding. Text ids are random ordinary vocabulary ids; loss_mask covers the replies and their </s>.
    """
    vocab_size, num_frames = model_config.llm.vocab_size, model_config.num_frames
    special = constants.special_token_ids(vocab_size)
    bos, eos, first_text_id = 1, 2, 3
    text_limit = vocab_size - constants.NUM_ADDED_TOKENS
    rng = np.random.default_rng(seed)

    def text(n):
        return rng.integers(first_text_id, text_limit, n).tolist()

    def with_placeholders(ids, placeholder, count):
        for position in sorted(rng.choice(len(ids), size=min(count, len(ids)), replace=False), reverse=True):
            ids.insert(int(position), placeholder)
        return ids

    system = min(40, max(4, max_length // 16))
    video = [special["vid_start"]] + [special["vid_patch"]] * num_frames + [special["vid_end"]]
    head_ids = [bos] + text(system) + text(2) + video
    if len(head_ids) + 8 > max_length:
        raise ValueError(f"max_length {max_length} cannot hold the prompt and {num_frames} frame slots")

    columns = {key: np.zeros((batch_size, max_length), dtype) for key, dtype in (
        ("input_ids", np.int32), ("targets", np.int32), ("loss_mask", np.float32), ("segment_ids", np.int32),
        ("positions", np.int32), ("placeholder_times", np.float32), ("target_times", np.float32))}
    for row in range(batch_size):
        ids, supervised = list(head_ids), [False] * len(head_ids)
        fill = int(max_length * rng.uniform(0.75, 1.0))
        while True:
            question = with_placeholders(text(int(rng.integers(8, 24))), special["temp_input"],
                                         2 * int(rng.random() < 0.3)) + text(2)  # ... "ASSISTANT:"
            reply = with_placeholders(text(int(rng.integers(12, 48))), special["temp_output"], 2) + [eos]
            if len(ids) + len(question) + len(reply) > fill and len(ids) > len(head_ids):
                break
            ids += question + reply
            supervised += [False] * len(question) + [True] * len(reply)
        ids, supervised = np.asarray(ids[:max_length], np.int32), np.asarray(supervised[:max_length], bool)
        n = len(ids)
        is_placeholder = (ids == special["temp_input"]) | (ids == special["temp_output"])
        times = np.where(is_placeholder, rng.uniform(0.0, 1.0, n), 0.0).astype(np.float32)
        c = {key: value[row] for key, value in columns.items()}
        c["input_ids"][:n] = ids
        c["loss_mask"][:n - 1] = supervised[1:]
        c["targets"][:n - 1] = np.where(supervised[1:], ids[1:], 0)
        c["target_times"][:n - 1] = np.where(c["targets"][:n - 1] == special["temp_output"], times[1:], 0.0)
        c["placeholder_times"][:n] = times
        c["segment_ids"][:n] = 1
        c["positions"][:n] = np.arange(n)
    batch = dict(columns, durations=rng.uniform(30.0, 300.0, batch_size).astype(np.float32))
    if model_config.use_cached_features:
        batch["features"] = rng.standard_normal((batch_size, num_frames, model_config.vision_feature_dim),
                                                dtype=np.float32)
    else:
        size = model_config.vision.image_size
        batch["frames"] = rng.integers(0, 256, (batch_size, num_frames, size, size, 3), dtype=np.uint8)
    from momentor_jax.models.momentor import check_batch  # noqa: PLC0415
    check_batch(batch, model_config, "synthetic batch")
    return batch


def _dialogue(rng, length: int, model_config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A dialogue of exactly `length` tokens laid out as encode.py writes one: <s>, system text, the video span, a
    question with a <TEMP-INPUT> (when there is room), "ASSISTANT:", a supervised reply with <TEMP-OUTPUT>s and </s>.
    Returns (ids, supervised, times)."""
    vocab_size, num_frames = model_config.llm.vocab_size, model_config.num_frames
    special = constants.special_token_ids(vocab_size)
    text_limit = vocab_size - constants.NUM_ADDED_TOKENS
    head = [1] + rng.integers(3, text_limit, 8).tolist()
    head += [special["vid_start"]] + [special["vid_patch"]] * num_frames + [special["vid_end"]]
    rest = length - len(head)
    if rest < 4:
        raise ValueError(f"a dialogue of {length} tokens cannot hold {num_frames} frame slots and a reply")
    question = rng.integers(3, text_limit, rest // 2).tolist()
    reply = rng.integers(3, text_limit, rest - rest // 2 - 1).tolist() + [2]
    if len(question) >= 3:
        question[1] = special["temp_input"]
    for at in (0, 2):
        if at < len(reply) - 1:
            reply[at] = special["temp_output"]
    ids = np.asarray(head + question + reply, np.int32)
    supervised = np.asarray([False] * (len(head) + len(question)) + [True] * len(reply))
    placeholder = (ids == special["temp_input"]) | (ids == special["temp_output"])
    times = np.where(placeholder, rng.uniform(0.0, 1.0, length), 0.0).astype(np.float32)
    return ids, supervised, times


def _encoded(ids, supervised, times, max_length: int, temp_output: int) -> dict:
    n = len(ids)
    out = {key: np.zeros(max_length, dtype) for key, dtype in (
        ("input_ids", np.int32), ("targets", np.int32), ("loss_mask", np.float32), ("segment_ids", np.int32),
        ("positions", np.int32), ("placeholder_times", np.float32), ("target_times", np.float32))}
    out["input_ids"][:n] = ids
    out["loss_mask"][:n - 1] = supervised[1:]
    out["targets"][:n - 1] = np.where(supervised[1:], ids[1:], 0)
    out["target_times"][:n - 1] = np.where(out["targets"][:n - 1] == temp_output, times[1:], 0.0)
    out["placeholder_times"][:n] = times
    out["segment_ids"][:n] = 1
    out["positions"][:n] = np.arange(n)
    return out


def length_model_stream(model_config, batch_size: int, max_length: int, options, lengths: Sequence[int],
                        seed: int = 0) -> tuple[list, list, list]:
    """(dialogues, packed rows, members): the dialogues of the given `lengths` (the Moment-10M length model's), each
    encoded alone to `max_length`, as far as the stream needs to fill `batch_size` packed rows; the rows data/packing.py
    makes of them (window after window); members[r] = the indices of row r's dialogues."""
    from momentor_jax.data import packing  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    temp_output = constants.special_token_ids(model_config.llm.vocab_size)["temp_output"]
    # One random video for every dialogue: the step's cost does not depend on the pixels, and hundreds of distinct
    # 32-frame videos would take gigabytes.
    if model_config.use_cached_features:
        video_key = "features"
        video = rng.standard_normal((model_config.num_frames, model_config.vision_feature_dim), dtype=np.float32)
    else:
        video_key, size = "frames", model_config.vision.image_size
        video = rng.integers(0, 256, (model_config.num_frames, size, size, 3), dtype=np.uint8)
    elements, rows, members = [], [], []
    for n in lengths:
        element = _encoded(*_dialogue(rng, int(n), model_config), max_length, temp_output)
        element[video_key] = video
        element["durations"] = np.float32(rng.uniform(30.0, 900.0))
        elements.append(element)
        if len(elements) % options.buffer_size == 0 or len(elements) == len(lengths):
            first = len(elements) - 1 - (len(elements) - 1) % options.buffer_size
            window = elements[first:]
            groups = packing.pack_lengths([packing.real_length(e) for e in window], max_length, options.max_items)
            rows += [packing.pack_row([window[i] for i in g], options) for g in groups]
            members += [[first + i for i in g] for g in groups]
            if len(rows) >= batch_size and len(elements) >= batch_size:
                break
    if len(rows) < batch_size:
        raise ValueError(f"{len(lengths)} dialogues pack into {len(rows)} rows, fewer than the batch {batch_size}")
    return elements, rows, members


def stack(items: Sequence[dict]) -> dict:
    return {k: np.stack([e[k] for e in items]) for k in items[0]}


def length_model_batches(model_config, batch_size: int, max_length: int, options, lengths: Sequence[int],
                         seed: int = 0) -> tuple[dict, dict]:
    """(unpacked, packed) batches of `batch_size` rows over dialogues of the given `lengths` (the Moment-10M length
    model's): one dialogue per row, or rows packed by data/packing.py from the same stream (window after window)."""
    from momentor_jax.models.momentor import check_batch  # noqa: PLC0415

    elements, rows, _ = length_model_stream(model_config, batch_size, max_length, options, lengths, seed)
    unpacked, packed = stack(elements[:batch_size]), stack(rows[:batch_size])
    check_batch(unpacked, model_config, "unpacked batch")
    check_batch(packed, model_config, "packed batch")
    return unpacked, packed


# ------------------------------------------------------------------------------------------- the train step
@dataclasses.dataclass
class BenchStep:
    """A compiled train step with its state and batch on the devices; `step()` runs one and waits for it."""
    compiled: Any
    state: Any
    batch: dict
    model_config: Any
    factory: Any
    batch_size: int
    max_length: int
    compile_s: float
    init_s: float
    metrics: Optional[dict] = None

    def step(self) -> None:
        self.state, self.metrics = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, self.metrics))


@dataclasses.dataclass
class _StepParts:
    config: Any
    model_config: Any
    train_step: Any                  # trainer.TrainStep


def _step_parts(config, batch_size: Optional[int] = None) -> _StepParts:
    """`config` with `batch_size`, checked as the trainer checks it, and trainer.build_train_step's step for it."""
    from momentor_jax.models.config import MomentorConfig  # noqa: PLC0415
    from momentor_jax.training import sharding, trainer  # noqa: PLC0415

    config = config.copy_and_resolve_references()
    if batch_size:
        config.batch_size = int(batch_size)
    model_config = MomentorConfig.from_dict(config.model)
    mesh = sharding.make_mesh(config.mesh)
    common.checked(trainer.check_config, config, model_config, mesh)
    total_steps = config.total_steps if config.total_steps > 0 else 1000  # only shapes the learning-rate schedule
    return _StepParts(config, model_config, trainer.build_train_step(config, model_config, mesh, total_steps))


def compile_bench_step(config, batch_size: Optional[int] = None, local_batch: Optional[dict] = None) -> BenchStep:
    """The trainer's state (random init) and step for `config` on the fixed batch (default: `synthetic_batch`),
    compiled ahead of time."""
    from momentor_jax.training import sharding  # noqa: PLC0415

    parts = _step_parts(config, batch_size)
    config, train_step = parts.config, parts.train_step
    start = time.perf_counter()
    state = train_step.factory.random_init(config.seed)
    if local_batch is None:
        local_batch = synthetic_batch(parts.model_config, config.batch_size, config.max_length, config.seed)
    batch = sharding.global_batch(local_batch, train_step.mesh)
    jax.block_until_ready((state, batch))
    init_s = time.perf_counter() - start

    start = time.perf_counter()
    with train_step.mesh_context():
        compiled = train_step.jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    return BenchStep(compiled=compiled, state=state, batch=batch, model_config=parts.model_config,
                     factory=train_step.factory, batch_size=config.batch_size, max_length=config.max_length,
                     compile_s=compile_s, init_s=init_s)


def _flops_of(analysis) -> Optional[float]:
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops is not None and flops >= 0 else None


def compiled_program_flops(compiled) -> Optional[float]:
    """XLA's cost_analysis of the compiled step. It counts a while loop's body once, so a scanned layer stack
    (scan_layers) appears as one layer."""
    try:
        return _flops_of(compiled.cost_analysis())
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None


def unrolled_compiler_flops(config, batch_size: Optional[int] = None) -> Optional[float]:
    """XLA's HLO cost analysis of the same step with every layer stack unrolled (scan_layers off), lowered from
    shapes alone (nothing compiled or allocated): the compiler's count to set beside ours. It includes the
    elementwise work and any remat recomputation, which the MaxText accounting leaves out."""
    from momentor_jax.tools.aot import abstract_batch  # noqa: PLC0415
    from momentor_jax.training import sharding  # noqa: PLC0415

    config = config.copy_and_resolve_references()
    config.model.llm.scan_layers = False
    config.model.vision.scan_layers = False
    parts = _step_parts(config, batch_size)
    train_step = parts.train_step
    batch = abstract_batch(parts.model_config, parts.config.batch_size, parts.config.max_length,
                           sharding.batch_sharding(train_step.mesh))
    try:
        with train_step.mesh_context():
            return _flops_of(train_step.jitted.lower(train_step.factory.abstract, batch).cost_analysis())
    except Exception:  # noqa: BLE001
        return None


def matmul_probe(dtype: str, size: int = 2048, repeats: int = 3) -> Callable[[], float]:
    """The `peak` matmul as a short probe (FLOP/s of the median of `repeats`) to run between train steps, so that
    on a shared host the peak is also sampled under the load the steps see."""
    key = jax.random.PRNGKey(0)
    a = jax.random.normal(key, (size, size), jnp.float32).astype(dtype)
    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=x.dtype))
    dot(a, a).block_until_ready()

    def probe() -> float:
        return 2.0 * size ** 3 / common.time_repeats(lambda: dot(a, a).block_until_ready(), repeats, 0)["median_s"]
    return probe


def time_steps(step: Callable[[], None], steps: int, warmup: int, probe: Optional[Callable[[], float]] = None,
               label: Optional[str] = None) -> dict:
    """common.time_repeats' figures for `step`, the step times, this process's CPU seconds per step (a busy
    2-core host gives us fewer than 2 x wall seconds) and, with `probe`, its FLOP/s measured before each step."""
    for _ in range(warmup):
        step()
    times, cpu, probes = [], [], []
    for i in range(steps):
        if probe:
            probes.append(probe())
        cpu_start, start = _cpu_seconds(), time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        cpu.append(_cpu_seconds() - cpu_start)
        if label:
            print(f"  {label}: {i + 1}/{steps} {times[-1] * 1e3:.1f} ms, {cpu[-1] / times[-1]:.2f} cores busy"
                  + (f", probe {probes[-1] / 1e9:.1f} GFLOP/s" if probes else ""), file=sys.stderr, flush=True)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": steps,
            "warmup": warmup, "times_s": times, "cpu_s": cpu, "cpu_cores_busy": statistics.median(
                [c / t for c, t in zip(cpu, times)]), "probe_flops_per_s": probes}


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def with_mfu(result: dict, peaks: Sequence[float]) -> dict:
    """Adds `peak_flops_per_s` (the best of the peak measurements of this run), `mfu` (model FLOP/s at the median
    step time over that peak, a fraction) and `mfu_best_step` (the fastest step). Taking the best peak keeps MFU
    conservative when other processes slow some measurements down.

    On a CPU backend also `mfu_cpu_time`: the steps' median CPU seconds spread over all usable cores stand in for
    the step time. It does not drop when other processes take cores (the step's CPU seconds stay put), equals
    `mfu` on an idle host if the step keeps every core busy, and reads high when the best peak was itself measured
    on a busy host (above 1: it certainly was).
    """
    peaks = [p for p in peaks if p]
    if not peaks:
        return result
    best = max(peaks)
    step, flops = result["step_time_s"], result["model_flops_per_step"]
    result = {**result, "peak_flops_per_s": best, "mfu": flops / step["median_s"] / best,
              "mfu_best_step": flops / step["min_s"] / best}
    if jax.default_backend() == "cpu" and step.get("cpu_s"):
        all_cores_s = statistics.median(step["cpu_s"]) / len(os.sched_getaffinity(0))
        result["mfu_cpu_time"] = flops / all_cores_s / best
    return result


def measure_train(config, steps: int = 5, warmup: int = 2, batch_size: Optional[int] = None,
                  peak_flops_per_s: Optional[float] = None, probe_size: Optional[int] = None,
                  label: Optional[str] = "train step", local_batch: Optional[dict] = None) -> dict:
    """Times `steps` train steps after `warmup` (compilation is not counted).

    Returns step time (median, min, max), examples_per_s, tokens_per_s (all positions, padding included: the work
    done), model and compiler FLOPs per step, achieved FLOP/s and, given `peak_flops_per_s` and/or `probe_size`
    (a square matmul of that side timed before each step), `peak_flops_per_s` and `mfu` (see `with_mfu`).
    """
    from momentor_jax.training import flops, trainer  # noqa: PLC0415

    bench = compile_bench_step(config, batch_size, local_batch)
    probe = matmul_probe(bench.model_config.llm.dtype, probe_size) if probe_size else None
    timing = time_steps(bench.step, steps, warmup, probe, label)
    metrics = {k: float(v) for k, v in jax.device_get(bench.metrics).items()}
    if not metrics.pop("finite"):
        raise trainer.NonFiniteError(f"the benchmark step produced a non-finite loss or gradient: {metrics}")
    video_key = "features" if bench.model_config.use_cached_features else "frames"
    videos = bench.batch[video_key].shape[1] if "num_videos" in bench.batch else 1  # packed: V slots per row
    model_flops = bench.batch_size * flops.training_flops_per_example(bench.model_config, bench.max_length,
                                                                      config.trainable, videos)
    segment_ids = np.asarray(jax.device_get(bench.batch["segment_ids"]))
    useful_tokens = int(np.count_nonzero(segment_ids))
    examples = int(np.sum(np.max(segment_ids, axis=-1)))
    step_s = timing["median_s"]
    result = {
        "batch_size": bench.batch_size,
        "max_length": bench.max_length,
        "tokens_per_step": bench.batch_size * bench.max_length,
        "mesh": dict(bench.factory.mesh.shape),
        "num_params": trainer.count_params(bench.state.trainable) + trainer.count_params(bench.state.frozen),
        "num_trainable": trainer.count_params(bench.state.trainable),
        "trainable": config.trainable,
        "remat_policy": config.remat_policy,
        "scan_layers": bench.model_config.llm.scan_layers,
        "dtype": bench.model_config.llm.dtype,
        "step_time_s": timing,
        "examples_per_s": bench.batch_size / step_s,
        "tokens_per_s": bench.batch_size * bench.max_length / step_s,
        "dialogues_per_step": examples,
        "dialogues_per_s": examples / step_s,
        "useful_tokens_per_step": useful_tokens,
        "useful_tokens_per_s": useful_tokens / step_s,
        "model_flops_per_step": model_flops,
        "compiler_flops_per_step": unrolled_compiler_flops(config, batch_size),
        "compiled_program_flops": compiled_program_flops(bench.compiled),
        "achieved_flops_per_s": model_flops / step_s,
        "compile_s": bench.compile_s,
        "init_s": bench.init_s,
        "loss": metrics["loss"],
    }
    return with_mfu(result, [peak_flops_per_s, *timing["probe_flops_per_s"]])


# ---------------------------------------------------------------------------------------------- the suite
def define_flags(flag_values, argv) -> None:
    common.define_config(flag_values, argv)
    flags.DEFINE_integer("batch_size", None, "global batch (default: the config's)", flag_values=flag_values)
    flags.DEFINE_integer("steps", 5, "timed steps after warm-up", flag_values=flag_values)
    flags.DEFINE_integer("warmup", 2, "untimed steps after compilation", flag_values=flag_values)
    flags.DEFINE_integer("peak_size", 2048, "side of the peak matmul", flag_values=flag_values)
    flags.DEFINE_bool("length_model", False, "packed vs unpacked rows of Moment-10M length-model dialogues (useful "
                      "tokens/s)", flag_values=flag_values)


def run(args) -> dict:
    if args.length_model:
        result = {**common.config_record(args), **measure_packing(args.config, args.steps, args.warmup,
                                                                  args.batch_size)}
        print_packing_table(result)
        return result
    result = measure_with_peak(args.config, args.steps, args.warmup, args.batch_size, args.peak_size)
    result = {**common.config_record(args), **result}
    print_train_table("train step", result)
    return result


def measure_with_peak(config, steps: int, warmup: int, batch_size: Optional[int], peak_size: int) -> dict:
    """measure_train with the `peak` suite run in the same process before and after the steps, and the probe
    between them; MFU against the best of all those peaks."""
    dtype = str(config.model.llm.dtype)
    print(f"peak: {dtype} matmul {peak_size}^3 ...", flush=True)
    before = peak.measure(dtype, peak_size)
    result = measure_train(config, steps, warmup, batch_size, before["peak_flops_per_s"], peak_size)
    after = peak.matmul_flops(peak_size, dtype, repeats=7)
    peaks = [before["peak_flops_per_s"], *result["step_time_s"]["probe_flops_per_s"], after["flops_per_s"]]
    return with_mfu({**result, "peak": {"before": before, "after": after}}, peaks)


def measure_packing(config, steps: int, warmup: int, batch_size: Optional[int] = None,
                    tokenizer_dir: Optional[str] = None) -> dict:
    """The train step on `batch_size` rows of length-model dialogues, one per row and packed (config.data's
    packing settings, or 8 per row when packing is off), timed in alternation; useful tokens/s of each and the
    ratio."""
    import tempfile  # noqa: PLC0415

    from momentor_jax.data import length_model  # noqa: PLC0415
    from momentor_jax.data.packing import PackingOptions  # noqa: PLC0415
    from momentor_jax.models.config import MomentorConfig  # noqa: PLC0415
    from momentor_jax.training import trainer  # noqa: PLC0415

    config = config.copy_and_resolve_references()
    if batch_size:
        config.batch_size = int(batch_size)
    model_config = MomentorConfig.from_dict(config.model)
    options = common.checked(trainer.packing_options, config) or PackingOptions(int(config.max_length), 8, 8)
    tokenizer = length_model.stand_in_tokenizer(tokenizer_dir or os.path.join(tempfile.gettempdir(),
                                                                              "momentor_length_model"))
    count = config.batch_size * options.max_items + options.buffer_size
    lengths = length_model.lengths(count, tokenizer, model_config.num_frames, int(config.max_length), config.seed)
    unpacked_batch, packed_batch = length_model_batches(model_config, config.batch_size, int(config.max_length),
                                                        options, lengths, config.seed)
    sides = {}
    for name, batch, packing in (("unpacked", unpacked_batch, False), ("packed", packed_batch, True)):
        side = config.copy_and_resolve_references()
        side.data.packing = packing
        side.data.max_segments, side.data.max_videos_per_row = options.max_segments, options.max_videos
        print(f"{name}: compiling the train step ...", file=sys.stderr, flush=True)
        sides[name] = (side, compile_bench_step(side, None, batch))
    for bench in (b for _, b in sides.values()):
        for _ in range(warmup):
            bench.step()
    times = {name: [] for name in sides}
    for i in range(steps):
        for name, (_, bench) in sides.items():
            start = time.perf_counter()
            bench.step()
            times[name].append(time.perf_counter() - start)
            print(f"  {name}: {i + 1}/{steps} {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    result = {"length_model": {"dialogues": len(lengths), "mean_tokens": float(np.mean(lengths)),
                               "num_frames": model_config.num_frames, "tokenizer": "stand-in BPE"},
              "batch_size": config.batch_size, "max_length": int(config.max_length),
              "max_segments": options.max_segments, "max_videos_per_row": options.max_videos}
    for name, (_, bench) in sides.items():
        segment_ids = np.asarray(jax.device_get(bench.batch["segment_ids"]))
        useful, dialogues = int(np.count_nonzero(segment_ids)), int(np.sum(np.max(segment_ids, axis=-1)))
        step_s = statistics.median(times[name])
        result[name] = {"step_time_s": {"median_s": step_s, "min_s": min(times[name]), "times_s": times[name]},
                        "useful_tokens_per_step": useful, "dialogues_per_step": dialogues,
                        "slot_efficiency": useful / segment_ids.size, "useful_tokens_per_s": useful / step_s,
                        "dialogues_per_s": dialogues / step_s}
    result["packed_over_unpacked"] = (result["packed"]["useful_tokens_per_s"]
                                      / result["unpacked"]["useful_tokens_per_s"])
    return result


def print_packing_table(r: dict) -> None:
    rows = []
    for name in ("unpacked", "packed"):
        side = r[name]
        rows.append({"rows": name, "step": f"{side['step_time_s']['median_s']:.2f} s",
                     "dialogues/step": side["dialogues_per_step"],
                     "real tokens / slots": f"{100 * side['slot_efficiency']:.1f}%",
                     "useful tokens/s": f"{side['useful_tokens_per_s']:,.0f}",
                     "dialogues/s": f"{side['dialogues_per_s']:.3g}"})
    common.print_table(f"train step on length-model dialogues ({r['batch_size']} rows x {r['max_length']} tokens, "
                       f"up to {r['max_segments']} dialogues per packed row)", rows,
                       ["rows", "step", "dialogues/step", "real tokens / slots", "useful tokens/s", "dialogues/s"])
    print(f"packed / unpacked useful tokens/s: {r['packed_over_unpacked']:.2f}x")


def _cores_row(busy: float) -> list:
    """On a CPU backend: how many of the usable cores the steps had (CPU seconds per second)."""
    if jax.default_backend() != "cpu":
        return []
    usable = len(os.sched_getaffinity(0))
    note = " (fewer: other processes held cores, or the step left some idle)" if busy < 0.9 * usable else ""
    return [{"what": "cores busy", "figure": f"{busy:.2f} of {usable} usable during the steps{note}"}]


def print_train_table(title: str, r: dict) -> None:
    t = r["step_time_s"]
    compiler = r["compiler_flops_per_step"]
    rows = [
        {"what": "batch", "figure": f"{r['batch_size']} x {r['max_length']} tokens, mesh {r['mesh']}, "
                                    f"{r['num_params']:,} params ({r['num_trainable']:,} trainable), {r['dtype']}"},
        {"what": "step time", "figure": f"median {t['median_s'] * 1e3:.1f} ms, min {t['min_s'] * 1e3:.1f}, "
                                        f"max {t['max_s'] * 1e3:.1f} ({t['repeats']} after {t['warmup']} warm-up)"},
        *_cores_row(t["cpu_cores_busy"]),
        {"what": "throughput", "figure": f"{r['tokens_per_s']:,.0f} tokens/s, {r['examples_per_s']:.3g} rows/s"},
        {"what": "useful", "figure": f"{r['useful_tokens_per_s']:,.0f} real tokens/s, {r['dialogues_per_s']:.3g} "
                                     f"dialogues/s ({r['dialogues_per_step']} dialogues per step)"},
        {"what": "model FLOPs/step", "figure": f"{r['model_flops_per_step']:.4g} (MaxText accounting)"},
        {"what": "compiler FLOPs/step", "figure": "n/a" if compiler is None else
         f"{compiler:.4g} (XLA cost analysis, layers unrolled: {compiler / r['model_flops_per_step']:.2f} x ours)"},
        {"what": "achieved", "figure": f"{r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s"},
    ]
    if "mfu" in r:
        probes = ", ".join(f"{p / 1e9:.0f}" for p in t["probe_flops_per_s"])
        rows += [{"what": "peak", "figure": f"{r['peak_flops_per_s'] / 1e9:.1f} GFLOP/s matmul, the best of this "
                                            f"run's peak measurements (probes between steps: {probes or '-'})"},
                 {"what": "MFU", "figure": f"{100 * r['mfu']:.1f}% (fastest step {100 * r['mfu_best_step']:.1f}%)"}]
    if "mfu_cpu_time" in r:
        rows.append({"what": "MFU in CPU time", "figure": f"{100 * r['mfu_cpu_time']:.1f}% (the steps' CPU seconds "
                                                          "over all usable cores; not slowed by other processes)"})
    rows.append({"what": "compile", "figure": f"{r['compile_s']:.1f} s (state init {r['init_s']:.1f} s)"})
    common.print_table(title, rows, ["what", "figure"])
