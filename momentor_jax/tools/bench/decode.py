"""`decode`: tokens/s of our KV-cache generation against transformers `generate` on the same exported weights.

    python -m momentor_jax.tools.bench decode [--config=configs/bench.py] [--batch_sizes 1,8] [--new_tokens 64]
                                              [--repeats 3] [--warmup 1] [--config.KEY=VALUE ...]

Both sides answer the same prompt (a question with one <TEMP-INPUT> around a video of M frames; each row of a
batch has its own video) greedily and produce exactly `--new_tokens` tokens each: no end-of-sequence stop on either
side (ours: `generate_tokens` with an eos id no token has; transformers: eos_token_id None), and the same five input-
only ids banned (ours: `_banned_ids`; transformers: `suppress_tokens`). JAX: inference/generate.py
`generate_tokens` (one jitted program: video encoding, prefill, `lax.while_loop` decode), on params converted
once with `generate.decoding_layout` (LLM layers unrolled) as `Generator` does for predict/evaluate. PyTorch:
tests/torch_momentor.py builds the prompt's inputs_embeds (CLIPVisionModel -> projector + frame temporal
embeddings spliced after <vid_start>, the placeholder interpolated) and `LlamaForCausalLM.generate(inputs_embeds=...)`
decodes, eager, fp32, as the public code generates. Each timed call covers the whole answer (video encoding,
prefill and every new token); tokens/s = batch x new tokens / seconds. `ratio` is JAX / transformers at batch 1
(median times; `ratio_of_fastest` per batch size too). torch threads as in the `torch` suite.

Each repeat also times a one-token answer on both sides (video, prefill and the first token); the difference to the
whole answer over the remaining tokens is the per-token decode step (`decode_ms_per_step`, `decode_ratio`). Beside
them, `weight_floor`: one batch-1 matvec through every weight a decode step must read (LLM kernels, LM head, E_out),
jitted, nothing else: the time a step cannot beat on this machine in this dtype, and `decode_ratio_ceiling` = the
transformers decode step over that floor, the best ratio any batch-1 decoder could reach here.

On XLA:CPU at batch 1 the decode `while_loop` holds no scatter (a one-row cache write simplifies to a
dynamic-update-slice), so XLA's small-while-loop hoisting compiles the whole loop as one "small call" whose matmuls
do not run through the threaded dot runtime; this lifts that (timings in docs/measurements.md):
    XLA_FLAGS=--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=0
`python -m momentor_jax.tools.bench decode`, `predict` and `evaluate` set it before JAX starts on the CPU unless
XLA_FLAGS already sets backend options (cli.cpu_decode_flags); the JSON records XLA_FLAGS under `hardware`.

The greedy tokens are compared: up to and including the first generated temporal token they must be the same
("text part"); after it our decoder feeds the token back at its refined sub-token time (Momentor's decoding), while
transformers feeds the plain row E_in[k], so later tokens may differ.
"""
from __future__ import annotations

import os
import statistics
import time

import jax
import numpy as np
from absl import flags

from momentor_jax.tools.bench import common, shared_weights, synthetic_inputs

NO_EOS = -1  # an id no generated token has: our loop then runs all max_new_tokens steps


def define_flags(flag_values, argv) -> None:
    common.define_config(flag_values, argv)
    flags.DEFINE_string("batch_sizes", "1,8", "comma-separated; the first gives `ratio`", flag_values=flag_values)
    flags.DEFINE_integer("new_tokens", 64, "tokens generated per row on both sides", flag_values=flag_values)
    flags.DEFINE_integer("question_tokens", 32, "text tokens after the video in the prompt", flag_values=flag_values)
    flags.DEFINE_integer("repeats", 3, "timed generations per side and batch size", flag_values=flag_values)
    flags.DEFINE_integer("warmup", 1, "untimed generations per side (JAX's first compiles)", flag_values=flag_values)
    flags.DEFINE_enum("attention", "sdpa", ("sdpa", "eager"), "transformers attention implementation",
                      flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "seed of the weights and the prompts", flag_values=flag_values)


def text_part_length(tokens: np.ndarray, vocab_size: int) -> int:
    """Tokens up to and including the first temporal token (all of them when there is none)."""
    temporal = np.flatnonzero(tokens >= vocab_size)
    return int(temporal[0]) + 1 if temporal.size else len(tokens)


def compare_tokens(ours: np.ndarray, theirs: np.ndarray, vocab_size: int) -> dict:
    """Agreement of two [B, T] greedy outputs: whole rows, and each row's text part (see the module docstring)."""
    text_agree = all(np.array_equal(a[:text_part_length(a, vocab_size)], b[:text_part_length(a, vocab_size)])
                     for a, b in zip(ours, theirs))
    first_difference = [int(np.argmax(a != b)) if np.any(a != b) else None for a, b in zip(ours, theirs)]
    return {"all_tokens_agree": bool(np.array_equal(ours, theirs)), "text_part_agrees": bool(text_agree),
            "first_difference": first_difference,
            "text_part_lengths": [text_part_length(a, vocab_size) for a in ours]}


class JaxSide:
    def __init__(self, params, model_config):
        from momentor_jax.inference import generate  # noqa: PLC0415

        params, self.config = generate.decoding_layout(params, model_config)
        self.params = jax.device_put(params)
        self.generate = generate

    def __call__(self, prompt: dict, new_tokens: int) -> np.ndarray:
        batch_size, length = prompt["input_ids"].shape
        out = self.generate.generate_tokens(
            self.params, prompt["input_ids"], prompt["placeholder_times"], np.full((batch_size,), length, np.int32),
            prompt["frames"], jax.random.PRNGKey(0), config=self.config,
            sampling=self.generate.SamplingConfig(max_new_tokens=new_tokens), eos_id=NO_EOS)
        return np.asarray(out["tokens"])


class TorchSide:
    def __init__(self, reference, model_config):
        import torch  # noqa: PLC0415
        import transformers  # noqa: PLC0415

        from momentor_jax.inference.generate import _banned_ids  # noqa: PLC0415

        self.torch, self.reference = torch, reference
        self.generation_configs = {}  # per new_tokens (transformers deprecates overriding a config in the call)
        self.new_config = lambda new_tokens: transformers.GenerationConfig(
            do_sample=False, max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0,
            suppress_tokens=_banned_ids(model_config), use_cache=True)

    def __call__(self, prompt: dict, new_tokens: int) -> np.ndarray:
        torch = self.torch
        if new_tokens not in self.generation_configs:
            self.generation_configs[new_tokens] = self.new_config(new_tokens)
        with torch.inference_mode():
            inputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in prompt.items()}
            embeds = self.reference.prompt_embeds(inputs["input_ids"], inputs["placeholder_times"], inputs["frames"])
            out = self.reference.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2],
                                                                                              dtype=torch.long),
                                              generation_config=self.generation_configs[new_tokens])
        return out.numpy()


def decode_step_weights(params) -> list:
    """Every weight matrix a decode step reads in full, as 2-D [inputs, outputs] arrays contracted over the axes the
    model contracts (a tall [D x heads, head_dim] matvec is slower than the model's [D, heads x head_dim]):
    the LLM's kernels (not the embedding table, of which a step reads one row per token) and the output tables
    (LM head, or the tied table, and E_out)."""
    llm = dict(params["llm"])
    table = np.asarray(llm.pop("embed_tokens")["embedding"])
    weights = []

    def add(path, leaf):
        if leaf.ndim < 2:
            return
        leaf = np.asarray(leaf)
        inputs = 2 if "o_proj" in jax.tree_util.keystr(path) else 1  # [heads, head_dim, D]; the rest [D, ...]
        weights.append(leaf.reshape(int(np.prod(leaf.shape[:inputs])), -1))

    jax.tree_util.tree_map_with_path(add, llm)
    if "lm_head" not in llm:
        weights.append(table.T)
    if "tpm" in params:
        weights.append(np.asarray(params["tpm"]["output_embedding"]).T)
    return weights


def weight_floor(params, repeats: int) -> dict:
    """One jitted batch-1 matvec through each of `decode_step_weights` (reads every byte once, little else)."""
    weights = [jax.device_put(w) for w in decode_step_weights(params)]
    vectors = [jax.device_put(np.ones((1, w.shape[0]), w.dtype)) for w in weights]
    matvecs = jax.jit(lambda xs, ws: [x @ w for x, w in zip(xs, ws)])
    timing = common.time_repeats(lambda: jax.block_until_ready(matvecs(vectors, weights)), repeats=repeats,
                                 warmup=2)
    num_bytes = sum(w.nbytes for w in weights)
    return {"bytes": num_bytes, "ms": timing["median_s"] * 1e3, "best_ms": timing["min_s"] * 1e3,
            "bytes_per_s": num_bytes / timing["median_s"]}


def _ratio(numerator: float, denominator: float):
    """numerator / denominator, or None when either is not positive (a per-step time from the difference of two
    noisy answers can come out <= 0 for a tiny model)."""
    return numerator / denominator if numerator > 0 and denominator > 0 else None


def _times(ratio) -> str:
    return "n/a (steps too short to measure)" if ratio is None else f"{ratio:.2f}x"


def _seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _summary(values, one_token, batch_size: int, new_tokens: int) -> dict:
    median, one = statistics.median(values), statistics.median(one_token)
    return {"median_s": median, "min_s": min(values), "max_s": max(values), "times_s": values,
            "tokens_per_s": batch_size * new_tokens / median, "ms_per_step": median / new_tokens * 1e3,
            "one_token_median_s": one, "one_token_times_s": one_token,
            "decode_ms_per_step": (median - one) / max(new_tokens - 1, 1) * 1e3}


def run(args) -> dict:
    torch_settings = shared_weights.configure_torch()
    import transformers  # noqa: PLC0415


    transformers.utils.logging.disable_progress_bar()

    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    config = args.config
    model_config = shared_weights.fp32_model_config(config)
    vocab_size = model_config.llm.vocab_size
    print(f"model: d_model {model_config.llm.hidden_size}, {model_config.llm.num_layers} layers, V + N = "
          f"{vocab_size} + {model_config.num_temporal_tokens}, {model_config.num_frames} frames at "
          f"{model_config.vision.image_size} px, fp32; greedy, {args.new_tokens} new tokens per row, no EOS stop")
    print(shared_weights.torch_settings_line(torch_settings, args.attention), flush=True)

    params, reference = shared_weights.params_and_torch_reference(model_config, args.seed, args.attention)
    jax_side = JaxSide(params, model_config)
    print(f"JAX LLM layers: {shared_weights.layers_description(jax_side.config)}")
    torch_side = TorchSide(reference, model_config)
    floor = weight_floor(jax_side.params, max(args.repeats, 5))
    print(f"weight floor: one matvec through the {floor['bytes'] / 2 ** 20:.0f} MiB a decode step reads: "
          f"{floor['ms']:.1f} ms ({floor['bytes_per_s'] / 1e9:.1f} GB/s)", flush=True)

    results, rows = {}, []
    for batch_size in batch_sizes:
        prompt = synthetic_inputs.generation_prompt(model_config, batch_size, args.question_tokens, seed=args.seed)
        start = time.perf_counter()
        ours = jax_side(prompt, args.new_tokens)
        compile_s = time.perf_counter() - start
        theirs = torch_side(prompt, args.new_tokens)
        if ours.shape != theirs.shape:
            raise RuntimeError(f"JAX made {ours.shape} tokens, transformers {theirs.shape}")
        agreement = compare_tokens(ours, theirs, vocab_size)
        print(f"batch {batch_size}: prompt {prompt['input_ids'].shape[1]} tokens; greedy tokens: all agree "
              f"{agreement['all_tokens_agree']}, text part agrees {agreement['text_part_agrees']} "
              f"(first difference per row {agreement['first_difference']})", flush=True)
        sides = {"jax": jax_side, "torch": torch_side}
        for _ in range(args.warmup):
            for side in sides.values():
                side(prompt, args.new_tokens)
                side(prompt, 1)
        times = {name: {"whole": [], "one": []} for name in sides}
        load = []
        for step in range(args.repeats):  # alternating, so both sides see the same load from the shared machine
            for name, side in sides.items():
                times[name]["whole"].append(_seconds(side, prompt, args.new_tokens))
            for name, side in sides.items():
                times[name]["one"].append(_seconds(side, prompt, 1))
            load.append(os.getloadavg()[0])
            print(f"  repeat {step + 1}/{args.repeats}: JAX {times['jax']['whole'][-1]:.2f} s "
                  f"(1 token {times['jax']['one'][-1]:.2f} s), transformers {times['torch']['whole'][-1]:.2f} s "
                  f"(1 token {times['torch']['one'][-1]:.2f} s) (load average {load[-1]:.1f} on "
                  f"{torch_settings['threads']} cores)", flush=True)
        summary = {name: _summary(t["whole"], t["one"], batch_size, args.new_tokens) for name, t in times.items()}
        ours, theirs = summary["jax"], summary["torch"]
        results[str(batch_size)] = {
            "prompt_length": int(prompt["input_ids"].shape[1]), "jax_compile_s": compile_s, "agreement": agreement,
            "jax": ours, "torch": theirs, "ratio": ours["tokens_per_s"] / theirs["tokens_per_s"],
            "ratio_of_fastest": theirs["min_s"] / ours["min_s"],
            "decode_ratio": _ratio(theirs["decode_ms_per_step"], ours["decode_ms_per_step"]), "load_average": load}
        for name, side in (("JAX generate_tokens", "jax"), ("transformers generate", "torch")):
            rows.append({"batch": batch_size, "side": name, "tokens/s": summary[side]["tokens_per_s"],
                         "ms/step": summary[side]["ms_per_step"], "median s": summary[side]["median_s"],
                         "decode ms/step": summary[side]["decode_ms_per_step"]})

    common.print_table(f"greedy generation, {args.new_tokens} new tokens per row (median of {args.repeats}; "
                       "video encoding + prefill + decode; decode ms/step: the answer minus a 1-token answer, "
                       f"per remaining token)", rows, ["batch", "side", "tokens/s", "ms/step", "median s",
                                                       "decode ms/step"])
    for batch_size in batch_sizes:
        entry = results[str(batch_size)]
        print(f"ratio JAX / transformers tokens/s at batch {batch_size}: {entry['ratio']:.2f}x of the medians, "
              f"{entry['ratio_of_fastest']:.2f}x of the fastest; decode steps alone {_times(entry['decode_ratio'])}")
    first = results[str(batch_sizes[0])]
    ceiling = _ratio(first["torch"]["decode_ms_per_step"], floor["ms"])
    print(f"(target >= 3x) weight floor {floor['ms']:.1f} ms per decode step: at batch {batch_sizes[0]} no decoder "
          f"reading these weights in fp32 here beats transformers' decode step by more than {_times(ceiling)}")
    return {**common.config_record(args), "new_tokens": args.new_tokens,
            "batch_sizes": batch_sizes, "torch_threads": torch_settings["threads"],
            "omp_wait_policy": torch_settings["omp_wait_policy"], "torch_attention": args.attention,
            "jax_layers": shared_weights.layers_description(jax_side.config), "batches": results,
            "ratio": first["ratio"], "ratio_batch": batch_sizes[0], "decode_ratio": first["decode_ratio"],
            "weight_floor": floor, "decode_ratio_ceiling": ceiling,
            "tokens_agree": first["agreement"]["text_part_agrees"]}
