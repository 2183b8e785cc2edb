"""`torch`: one Momentor forward+backward in JAX against the same work in PyTorch as the public code runs it.

    python -m momentor_jax.tools.bench torch [--config=configs/bench.py] [--batch_size B] [--length L]
                                             [--steps 3] [--warmup 1] [--attention sdpa] [--unroll_layers]
                                             [--compare_attention_block N] [--config.KEY=VALUE ...]
    python -m momentor_jax.tools.bench torch --length_model [--window 64] [--torch_batch_size 4]
                                             [--config.KEY=VALUE ...]

Both sides get the same random weights through `convert export_hf` (tools/bench/shared_weights.py) and the same
in-memory batch (frames, temporal placeholders, soft temporal targets). JAX: the trainer's `momentor_fns` (model
apply + loss) under `jax.jit(jax.value_and_grad)` over every parameter, fp32 (`--unroll_layers`: the same weights
with the layer stacks unrolled instead of nn.scan). PyTorch: tests/torch_momentor.py (transformers
CLIPVisionModel + LlamaForCausalLM + projector/TPM, eager, fp32) with `loss.backward()` into every parameter.
Before timing, the two losses and all gradients are compared (the run stops when the losses differ by more than
1e-3 relative). The sides are timed in alternation in one process (each timed step after an untimed one of its
own side, as training runs them back to back); torch runs one thread per usable core (the cores XLA's CPU pool
uses) with OMP_WAIT_POLICY=PASSIVE unless set (see shared_weights.configure_torch). Figures:
tokens/s (B x L per forward+backward) and `ratio` = JAX tokens/s / PyTorch tokens/s of the median step times
(`ratio_of_fastest`: of the fastest steps); the load average after each step says how busy the machine was.
`--compare_attention_block N` adds a third side, JAX with `model.llm.attention_block=N` on the same weights (its
loss and gradients checked the same way), timed in the same alternation: the JSON's `jax_attention_block`, with its
own ratios to PyTorch.

`--length_model`: each side as it trains, on the same window of `--window` Moment-10M length-model dialogues with
pooled features (the public code's input): JAX on every row the packer makes of the window (the config's packing
settings, in steps of `batch_size` rows), PyTorch on every batch of `--torch_batch_size` of the same dialogues in
stream order, padded to the batch's longest with an attention mask (the public collator). A pass is the whole
window of one side, then of the other. Figures: each side's slots, real / slots and useful (real) tokens/s, and
`ratio` = JAX / PyTorch useful tokens/s of the median passes. A window rather than a few packed rows: a packed row
holds dialogues of similar lengths (best-fit decreasing and full rows place them by length), so a few rows'
dialogues pad less in batches of 4 than the window's do, and PyTorch's time per slot depends on its batches'
lengths.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time

import jax
import numpy as np
from absl import flags

from momentor_jax import cli
from momentor_jax.tools.bench import common, shared_weights, synthetic_inputs

LOSS_TOLERANCE = 1e-3


def define_flags(flag_values, argv) -> None:
    common.define_config(flag_values, argv)
    flags.DEFINE_integer("batch_size", None, "default: the config's batch_size", flag_values=flag_values)
    flags.DEFINE_integer("length", None, "tokens per row; default: the config's max_length", flag_values=flag_values)
    flags.DEFINE_integer("steps", 3, "timed forward+backward passes per side", flag_values=flag_values)
    flags.DEFINE_integer("warmup", 1, "untimed passes per side (JAX's first compiles)", flag_values=flag_values)
    flags.DEFINE_enum("attention", "sdpa", ("sdpa", "eager"), "transformers attention implementation of the "
                      "PyTorch side", flag_values=flag_values)
    flags.DEFINE_bool("unroll_layers", False, "JAX side with every layer stack unrolled (scan_layers off; same "
                      "weights)", flag_values=flag_values)
    flags.DEFINE_integer("compare_attention_block", None, "also time JAX with LlamaConfig.attention_block=N (same "
                         "weights, same alternation)", flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "seed of the weights and the batch", flag_values=flag_values)
    flags.DEFINE_bool("length_model", False, "useful tokens/s on Moment-10M length-model dialogues, each side as "
                      "it trains: JAX on packed rows (the config's packing settings), PyTorch on batches of "
                      "--torch_batch_size dialogues padded to each batch's longest (the public collator); pooled "
                      "features on both sides, as the public code trains", flag_values=flag_values)
    flags.DEFINE_integer("torch_batch_size", 4, "dialogues per PyTorch batch with --length_model (the public "
                         "training command's per_device_train_batch_size)", flag_values=flag_values)
    flags.DEFINE_integer("window", 64, "with --length_model: length-model dialogues in the packing window both "
                         "sides are timed over (the config's packing_buffer is set to it)", flag_values=flag_values)


def jax_loss_and_grad(model_config):
    """jit(value_and_grad) of the trainer's model apply + loss, over every parameter."""
    from momentor_jax.training import trainer  # noqa: PLC0415

    fns = trainer.momentor_fns(model_config)
    rng = jax.random.PRNGKey(0)

    def loss(params, batch):
        return fns.loss_terms(params, batch, rng)[0]

    return jax.jit(jax.value_and_grad(loss))


def compare_gradients(grads: dict, reference, model_config) -> dict:
    """Per parameter group: max |ours - theirs| over its tensors / max |theirs| over its tensors (a group scale,
    since some gradients are exactly zero in exact arithmetic, e.g. the CLIP key biases). Tensors are matched by
    their exported names."""
    from momentor_jax.convert import hf  # noqa: PLC0415

    grads = jax.tree.map(np.asarray, grads)
    theirs = {name: p.grad.numpy() for name, p in reference.named_parameters() if p.grad is not None}
    pairs = {"llm": [(f"llm.{k}", v) for k, v in hf.llama_to_hf(grads["llm"], model_config.llm).items()],
             "projector": [("mm_projector.weight", grads["projector"]["kernel"].T),
                           ("mm_projector.bias", grads["projector"]["bias"])],
             "tpm": [("temporal_input_embeddings", grads["tpm"]["input_embedding"]),
                     ("temporal_output_embeddings", grads["tpm"]["output_embedding"])]}
    if "vision" in grads:  # absent when the model reads cached features
        pairs["vision"] = [(f"vision.{k[len(hf.VISION_PREFIX):]}", v)
                           for k, v in hf.vision_to_hf(grads["vision"], model_config.vision).items()]
    result = {}
    for group, tensors in pairs.items():
        diff = scale = 0.0
        for name, ours in tensors:
            if name not in theirs:
                raise KeyError(f"no PyTorch gradient for {name}")
            reference_grad = theirs[name][:ours.shape[0]]  # the export's LLaMA tables also hold the N temporal rows
            diff = max(diff, float(np.max(np.abs(ours - reference_grad))))
            scale = max(scale, float(np.max(np.abs(reference_grad))))
        result[group] = diff / (scale or 1.0)
    return result


def _check_against_torch(side, grad_fn, params, batch, reference, torch_loss: float, model_config) -> dict:
    """Compiles and runs one JAX side, compares its loss and gradients with PyTorch's (already in `reference`);
    raises when the losses differ by more than LOSS_TOLERANCE."""
    start = time.perf_counter()
    jax_loss, grads = jax.block_until_ready(grad_fn(params, batch))
    compile_s = time.perf_counter() - start
    jax_loss = float(jax_loss)
    loss_diff = abs(jax_loss - torch_loss) / abs(torch_loss)
    grad_diffs = compare_gradients(grads, reference, model_config)
    del grads
    print(f"{side} loss: JAX {jax_loss:.6f}  PyTorch {torch_loss:.6f}  relative difference {loss_diff:.2e}")
    print("gradients, max |JAX - PyTorch| / max |PyTorch| per group: "
          + ", ".join(f"{k} {v:.2e}" for k, v in grad_diffs.items()), flush=True)
    if not loss_diff <= LOSS_TOLERANCE:
        raise RuntimeError(f"the two sides compute different losses (relative difference {loss_diff:.3g} > "
                           f"{LOSS_TOLERANCE}); timing them would not compare the same work")
    return {"compile_s": compile_s, "loss": {"jax": jax_loss, "torch": torch_loss, "relative_difference": loss_diff},
            "grad_relative_max_diff": grad_diffs}


def _both_sides(args, model_config):
    """(JAX params, the PyTorch reference on the same weights, the JAX side's config: layers unrolled on request)."""
    params, reference = shared_weights.params_and_torch_reference(model_config, args.seed, args.attention)
    jax_config = model_config
    if args.unroll_layers:
        params, jax_config = shared_weights.unroll_layers(params, model_config)
    print(f"JAX layers: {shared_weights.layers_description(jax_config)}")
    return params, reference, jax_config


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(args) -> dict:
    torch_settings = shared_weights.configure_torch()
    if args.length_model:
        return run_length_model(args, torch_settings)
    import transformers  # noqa: PLC0415

    transformers.utils.logging.disable_progress_bar()

    config = args.config
    model_config = shared_weights.fp32_model_config(config)
    batch_size = args.batch_size or config.batch_size
    length = args.length or config.max_length
    print(f"model: d_model {model_config.llm.hidden_size}, {model_config.llm.num_layers} layers, "
          f"V + N = {model_config.llm.vocab_size} + {model_config.num_temporal_tokens}, "
          f"{model_config.num_frames} frames at {model_config.vision.image_size} px, fp32; batch {batch_size} x "
          f"{length} tokens; every parameter differentiated on both sides")
    print(shared_weights.torch_settings_line(torch_settings, args.attention), flush=True)

    params, reference, jax_config = _both_sides(args, model_config)
    batch = synthetic_inputs.training_batch(model_config, batch_size, length, seed=args.seed)
    torch_batch = shared_weights.torch_reference().torch_batch(batch)
    device_params, device_batch = jax.device_put(params), jax.device_put(batch)
    reference.zero_grad(set_to_none=True)
    torch_loss = reference.loss(torch_batch)
    torch_loss.backward()
    torch_loss = torch_loss.item()
    jax_configs = {"jax": jax_config}
    if args.compare_attention_block is not None:
        jax_configs["jax_attention_block"] = dataclasses.replace(jax_config, llm=dataclasses.replace(
            jax_config.llm, attention_block=args.compare_attention_block))
    grad_fns, checks = {}, {}
    for side, side_config in jax_configs.items():
        grad_fns[side] = jax_loss_and_grad(side_config)
        checks[side] = _check_against_torch(side, grad_fns[side], device_params, device_batch, reference,
                                            torch_loss, side_config)

    def jax_step(side):
        return lambda: jax.block_until_ready(grad_fns[side](device_params, device_batch))

    def torch_step():
        reference.zero_grad(set_to_none=True)
        reference.loss(torch_batch).backward()

    steps = {**{side: jax_step(side) for side in jax_configs}, "torch": torch_step}
    for _ in range(args.warmup):
        for fn in steps.values():
            fn()
    times, load = {side: [] for side in steps}, []
    for step in range(args.steps):  # alternating, so every side sees the same load from the shared machine
        for side, fn in steps.items():
            # A JAX step right after a PyTorch step ran up to 1.6x slower than after another JAX step
            # (docs/measurements.md), and training runs steps back to back: each side takes one untimed step after
            # the switch, then its timed one.
            fn()
            times[side].append(_seconds(fn))
        load.append(os.getloadavg()[0])
        print(f"  step {step + 1}/{args.steps}: " + ", ".join(f"{side} {t[-1]:.2f} s" for side, t in times.items())
              + f" (load average {load[-1]:.1f} on {torch_settings['threads']} cores)", flush=True)

    tokens = batch_size * length
    sides = {}
    for side, values in times.items():
        median = statistics.median(values)
        sides[side] = {"median_s": median, "min_s": min(values), "max_s": max(values), "times_s": values,
                       "tokens_per_s": tokens / median}
    for side in jax_configs:
        sides[side]["ratio"] = sides[side]["tokens_per_s"] / sides["torch"]["tokens_per_s"]
        sides[side]["ratio_of_fastest"] = sides["torch"]["min_s"] / sides[side]["min_s"]
    names = {"jax": "JAX (jit, value_and_grad)", "torch": f"PyTorch (eager, {args.attention})",
             "jax_attention_block": f"JAX, attention_block={args.compare_attention_block}"}
    common.print_table(f"forward+backward, {batch_size} x {length} tokens (median of {args.steps})", [
        {"side": names[side], "tokens/s": sides[side]["tokens_per_s"], "median s": sides[side]["median_s"],
         "min s": sides[side]["min_s"]} for side in steps], ["side", "tokens/s", "median s", "min s"])
    for side in jax_configs:
        print(f"\nratio {names[side]} / PyTorch tokens/s: {sides[side]['ratio']:.2f}x of the medians, "
              f"{sides[side]['ratio_of_fastest']:.2f}x of the fastest steps (target >= 1.0x at equal shapes)")
    jax_side = {key: sides["jax"][key] for key in ("median_s", "min_s", "max_s", "times_s", "tokens_per_s")}
    result = {**common.config_record(args), "batch_size": batch_size, "length": length,
              "tokens_per_step": tokens,
              "torch_threads": torch_settings["threads"], "omp_wait_policy": torch_settings["omp_wait_policy"],
              "torch_attention": args.attention, "jax_layers": shared_weights.layers_description(jax_config),
              "jax_compile_s": checks["jax"]["compile_s"], "loss": checks["jax"]["loss"],
              "grad_relative_max_diff": checks["jax"]["grad_relative_max_diff"], "jax": jax_side,
              "torch": sides["torch"], "ratio": sides["jax"]["ratio"],
              "ratio_of_fastest": sides["jax"]["ratio_of_fastest"], "load_average": load}
    if "jax_attention_block" in jax_configs:
        result["jax_attention_block"] = {"attention_block": args.compare_attention_block,
                                         **sides["jax_attention_block"], **checks["jax_attention_block"]}
    return result


# ------------------------------------------------------------------------ --length_model: packed rows vs padding
PADDED_KEYS = ("input_ids", "targets", "loss_mask", "placeholder_times", "target_times")


def padded_batches(elements: list, indices: list, per_batch: int) -> list:
    """The public collator (DataCollatorForSupervisedDataset in momentor/train/train_momentor.py): consecutive groups
    of `per_batch` dialogues, each group right-padded to its longest, `attention_mask` marking the real tokens."""
    from momentor_jax.data import packing  # noqa: PLC0415

    batches = []
    for start in range(0, len(indices), per_batch):
        group = [elements[i] for i in indices[start:start + per_batch]]
        longest = max(packing.real_length(e) for e in group)
        batch = {key: np.stack([np.asarray(e[key])[:longest] for e in group]) for key in PADDED_KEYS}
        batch["attention_mask"] = np.stack([np.asarray(e["segment_ids"])[:longest] > 0 for e in group])
        batch["features"] = np.stack([e["features"] for e in group])
        batches.append(batch)
    return batches


def run_length_model(args, torch_settings) -> dict:
    """Both sides over the same window of `--window` length-model dialogues: JAX's forward+backward of every row
    the packer makes of them (in steps of `batch_size` rows, the last one shorter) against PyTorch's forward+backward
    of every padded batch of them in stream order, accumulating gradients, each batch's loss weighted by its share of
    the supervised tokens. Before timing, the first JAX step's loss and gradients are compared with PyTorch's over
    the same dialogues."""
    import tempfile  # noqa: PLC0415

    from momentor_jax.data import length_model, packing  # noqa: PLC0415
    from momentor_jax.models.momentor import check_batch  # noqa: PLC0415
    from momentor_jax.tools.bench import train as train_suite  # noqa: PLC0415
    from momentor_jax.training import trainer  # noqa: PLC0415

    import transformers  # noqa: PLC0415

    transformers.utils.logging.disable_progress_bar()
    if args.length:
        cli.fail_usage("--length_model takes the row length from the config (--config.max_length=N), not --length")
    config = args.config.copy_and_resolve_references()
    config.data.use_features = True
    config.model.use_cached_features = True
    if args.batch_size:
        config.batch_size = args.batch_size
    if args.window < 1:
        cli.fail_usage(f"--window must be >= 1, got {args.window}")
    config.data.packing_buffer = args.window
    options = common.checked(trainer.packing_options, config)
    if options is None:
        cli.fail_usage("--length_model times packed rows: the config needs --config.data.packing=True")
    if args.torch_batch_size < 1:
        cli.fail_usage(f"--torch_batch_size must be >= 1, got {args.torch_batch_size}")
    model_config = shared_weights.fp32_model_config(config)
    rows, max_length = int(config.batch_size), int(config.max_length)
    tokenizer = length_model.stand_in_tokenizer(os.path.join(tempfile.gettempdir(), "momentor_length_model"))
    lengths = length_model.lengths(args.window, tokenizer, model_config.num_frames, max_length, config.seed)
    try:
        elements, packed_rows, members = train_suite.length_model_stream(model_config, rows, max_length, options,
                                                                         lengths, config.seed)
    except ValueError as e:
        cli.fail_usage(f"--window {args.window}: {e}")
    steps_rows = [list(range(start, min(start + rows, len(packed_rows))))
                  for start in range(0, len(packed_rows), rows)]
    jax_batches = [train_suite.stack([packed_rows[r] for r in step]) for step in steps_rows]
    for batch in jax_batches:
        check_batch(batch, model_config, "packed batch")
    padded = padded_batches(elements, list(range(len(elements))), args.torch_batch_size)
    first_padded = padded_batches(elements, sorted(i for r in steps_rows[0] for i in members[r]),
                                  args.torch_batch_size)
    useful = sum(packing.real_length(e) for e in elements)
    print(f"model: d_model {model_config.llm.hidden_size}, {model_config.llm.num_layers} layers, "
          f"V + N = {model_config.llm.vocab_size} + {model_config.num_temporal_tokens}, {model_config.num_frames} "
          f"pooled features per video, fp32; a window of {len(elements)} length-model dialogues, {useful} tokens: "
          f"JAX {len(packed_rows)} packed rows x {max_length} in {len(jax_batches)} steps of <= {rows}, PyTorch "
          f"{len(padded)} batches of <= {args.torch_batch_size} padded to their longest (median "
          f"{statistics.median(b['input_ids'].shape[1] for b in padded):.0f} tokens); every parameter "
          "differentiated on both sides", flush=True)
    print(shared_weights.torch_settings_line(torch_settings, args.attention), flush=True)

    params, reference, jax_config = _both_sides(args, model_config)
    torch_module = shared_weights.torch_reference()

    def torch_work(batches: list):
        """PyTorch's forward+backward over padded batches, gradients accumulated, each batch's loss weighted by its
        share of the supervised tokens (the sum is the token mean over all of them, as the packed rows' loss)."""
        tensors = [torch_module.torch_batch(b) for b in batches]
        total = float(sum(np.sum(b["loss_mask"]) for b in batches))
        weights = [float(np.sum(b["loss_mask"])) / total for b in batches]

        def step() -> float:
            reference.zero_grad(set_to_none=True)
            loss = 0.0
            for batch, weight in zip(tensors, weights):
                part = reference.loss(batch) * weight
                part.backward()
                loss += part.item()
            return loss
        return step

    grad_fn = jax_loss_and_grad(jax_config)
    device_params = jax.device_put(params)
    device_batches = [jax.device_put(batch) for batch in jax_batches]
    check = _check_against_torch("jax (first step)", grad_fn, device_params, device_batches[0], reference,
                                 torch_work(first_padded)(), jax_config)

    def jax_window():
        for batch in device_batches:
            jax.block_until_ready(grad_fn(device_params, batch))

    steps = {"jax": jax_window, "torch": torch_work(padded)}
    for _ in range(args.warmup):
        for fn in steps.values():
            fn()
    times, load = {side: [] for side in steps}, []
    for step in range(args.steps):
        for side, fn in steps.items():
            # A pass is the whole window: many steps of one side back to back, as training runs them, so no
            # untimed pass in between (the same-shape suite's protocol, which a single step needs).
            times[side].append(_seconds(fn))
        load.append(os.getloadavg()[0])
        print(f"  pass {step + 1}/{args.steps}: " + ", ".join(f"{side} {t[-1]:.2f} s" for side, t in times.items())
              + f" (load average {load[-1]:.1f} on {torch_settings['threads']} cores)", flush=True)

    slots = {"jax": len(packed_rows) * max_length, "torch": sum(int(b["input_ids"].size) for b in padded)}
    sides = {}
    for side, values in times.items():
        median = statistics.median(values)
        sides[side] = {"median_s": median, "min_s": min(values), "max_s": max(values), "times_s": values,
                       "slots": slots[side], "slot_efficiency": useful / slots[side],
                       "useful_tokens_per_s": useful / median, "dialogues_per_s": len(elements) / median}
    names = {"jax": f"JAX packed ({len(packed_rows)} rows x {max_length})",
             "torch": f"PyTorch padded ({len(padded)} batches of <= {args.torch_batch_size}, {args.attention})"}
    common.print_table(f"forward+backward over the same {len(elements)} dialogues ({useful} tokens), median of "
                       f"{args.steps} passes", [
                           {"side": names[side], "slots": sides[side]["slots"],
                            "real / slots": f"{100 * sides[side]['slot_efficiency']:.1f}%",
                            "useful tokens/s": sides[side]["useful_tokens_per_s"],
                            "median s": sides[side]["median_s"], "min s": sides[side]["min_s"]} for side in steps],
                       ["side", "slots", "real / slots", "useful tokens/s", "median s", "min s"])
    ratio = sides["jax"]["useful_tokens_per_s"] / sides["torch"]["useful_tokens_per_s"]
    ratio_of_fastest = sides["torch"]["min_s"] / sides["jax"]["min_s"]
    print(f"\nratio JAX packed / PyTorch padded useful tokens/s: {ratio:.2f}x of the medians, "
          f"{ratio_of_fastest:.2f}x of the fastest passes (target >= 1.5x)")
    return {**common.config_record(args), "length_model": True, "window": len(elements), "rows": len(packed_rows),
            "batch_size": rows, "max_length": max_length, "max_segments": options.max_segments,
            "max_videos_per_row": options.max_videos, "torch_batch_size": args.torch_batch_size,
            "useful_tokens": useful, "padded_lengths": [int(b["input_ids"].shape[1]) for b in padded],
            "torch_threads": torch_settings["threads"], "omp_wait_policy": torch_settings["omp_wait_policy"],
            "torch_attention": args.attention, "jax_layers": shared_weights.layers_description(jax_config),
            "jax_compile_s": check["compile_s"], "loss": check["loss"],
            "grad_relative_max_diff": check["grad_relative_max_diff"], "jax": sides["jax"], "torch": sides["torch"],
            "ratio": ratio, "ratio_of_fastest": ratio_of_fastest, "load_average": load}
