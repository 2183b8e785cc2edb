"""`decode`: tokens/s of our KV-cache generation against transformers `generate` on the same exported weights.

    python -m momentor_jax.tools.bench decode [--config=configs/bench.py] [--batch_sizes 1,8] [--new_tokens 64]
                                              [--repeats 3] [--warmup 1] [--unroll_layers]

Both sides answer the same prompt (a question with one <TEMP-INPUT> around a video of M frames; each row of a
batch has its own video) greedily and produce exactly `--new_tokens` tokens each: no end-of-sequence stop on either
side (ours: `generate_tokens` with an eos id no token has; transformers: eos_token_id None), and the same five input-
only ids banned (ours: `_banned_ids`; transformers: `suppress_tokens`). JAX: inference/generate.py
`generate_tokens` (one jitted program: video encoding, prefill, `lax.while_loop` decode). PyTorch:
tools/bench/torch_momentor.py builds the prompt's inputs_embeds (CLIPVisionModel -> projector + frame temporal
embeddings spliced after <vid_start>, the placeholder interpolated) and `LlamaForCausalLM.generate(inputs_embeds=...)`
decodes, eager, fp32, as the public code generates. Each timed call covers the whole answer (video encoding,
prefill and every new token); tokens/s = batch x new tokens / seconds. `ratio` is JAX / transformers at batch 1
(median times; `ratio_of_fastest` per batch size too). torch threads as in the `torch` suite. `--unroll_layers`
runs our side with the layer stacks unrolled (same weights): inside the decode loop, nn.scan copies every layer's
weight slices before its matmuls.

The greedy tokens are compared: up to and including the first generated temporal token they must be the same
("text part"); after it our decoder feeds the token back at its refined sub-token time (Momentor's decoding), while
transformers feeds the plain row E_in[k], so later tokens may differ.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np

from momentor_jax.tools.bench import common, shared_weights, synthetic_inputs

NO_EOS = -1  # an id no generated token has: our loop then runs all max_new_tokens steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=shared_weights.DEFAULT_CONFIG, help="configs/FILE.py[:variant]")
    parser.add_argument("--batch_sizes", default="1,8", help="comma-separated; the first gives `ratio`")
    parser.add_argument("--new_tokens", type=int, default=64, help="tokens generated per row on both sides")
    parser.add_argument("--question_tokens", type=int, default=32, help="text tokens after the video in the prompt")
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per side and batch size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed generations per side (JAX's first compiles)")
    parser.add_argument("--attention", default="sdpa", choices=("sdpa", "eager"),
                        help="transformers attention implementation")
    parser.add_argument("--unroll_layers", action="store_true",
                        help="JAX side with every layer stack unrolled (scan_layers off; same weights)")
    parser.add_argument("--seed", type=int, default=0)


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
    def __init__(self, params, model_config, new_tokens: int):
        from momentor_jax.inference import generate  # noqa: PLC0415

        self.params, self.config = jax.device_put(params), model_config
        self.generate = generate
        self.sampling = generate.SamplingConfig(max_new_tokens=new_tokens)

    def __call__(self, prompt: dict) -> np.ndarray:
        batch_size, length = prompt["input_ids"].shape
        out = self.generate.generate_tokens(
            self.params, prompt["input_ids"], prompt["token_times"], np.full((batch_size,), length, np.int32),
            prompt["frames"], jax.random.PRNGKey(0), config=self.config, sampling=self.sampling, eos_id=NO_EOS)
        return np.asarray(out["tokens"])


class TorchSide:
    def __init__(self, reference, model_config, new_tokens: int):
        import torch  # noqa: PLC0415
        import transformers  # noqa: PLC0415

        from momentor_jax.inference.generate import _banned_ids  # noqa: PLC0415

        self.torch, self.reference = torch, reference
        self.generation_config = transformers.GenerationConfig(
            do_sample=False, max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0,
            suppress_tokens=_banned_ids(model_config), use_cache=True)

    def __call__(self, prompt: dict) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            inputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in prompt.items()}
            embeds = self.reference.prompt_embeds(inputs["input_ids"], inputs["token_times"], inputs["frames"])
            out = self.reference.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2],
                                                                                              dtype=torch.long),
                                              generation_config=self.generation_config)
        return out.numpy()


def _seconds(fn, prompt) -> float:
    start = time.perf_counter()
    fn(prompt)
    return time.perf_counter() - start


def _summary(values, batch_size: int, new_tokens: int) -> dict:
    median = statistics.median(values)
    return {"median_s": median, "min_s": min(values), "max_s": max(values), "times_s": values,
            "tokens_per_s": batch_size * new_tokens / median, "ms_per_step": median / new_tokens * 1e3}


def run(args: argparse.Namespace) -> dict:
    torch_settings = shared_weights.configure_torch()
    import transformers  # noqa: PLC0415

    from momentor_jax.tools.bench import torch_momentor  # noqa: PLC0415

    transformers.utils.logging.disable_progress_bar()

    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    config = shared_weights.load_config(args.config)
    model_config = shared_weights.fp32_model_config(config)
    vocab_size = model_config.llm.vocab_size
    print(f"model: d_model {model_config.llm.hidden_size}, {model_config.llm.num_layers} layers, V + N = "
          f"{vocab_size} + {model_config.num_temporal_tokens}, {model_config.num_frames} frames at "
          f"{model_config.vision.image_size} px, fp32; greedy, {args.new_tokens} new tokens per row, no EOS stop")
    print(shared_weights.torch_settings_line(torch_settings, args.attention), flush=True)

    params = shared_weights.random_params(model_config, args.seed)
    with tempfile.TemporaryDirectory() as directory:
        export = shared_weights.export_weights(params, model_config, directory)
        reference = torch_momentor.TorchMomentor(export, model_config, attn_implementation=args.attention).eval()
    jax_config = model_config
    if args.unroll_layers:
        params, jax_config = shared_weights.unroll_layers(params, model_config)
    print(f"JAX layers: {shared_weights.layers_description(jax_config)}")
    jax_side = JaxSide(params, jax_config, args.new_tokens)
    torch_side = TorchSide(reference, model_config, args.new_tokens)

    results, rows = {}, []
    for batch_size in batch_sizes:
        prompt = synthetic_inputs.generation_prompt(model_config, batch_size, args.question_tokens, seed=args.seed)
        start = time.perf_counter()
        ours = jax_side(prompt)
        compile_s = time.perf_counter() - start
        theirs = torch_side(prompt)
        if ours.shape != theirs.shape:
            raise RuntimeError(f"JAX made {ours.shape} tokens, transformers {theirs.shape}")
        agreement = compare_tokens(ours, theirs, vocab_size)
        print(f"batch {batch_size}: prompt {prompt['input_ids'].shape[1]} tokens; greedy tokens: all agree "
              f"{agreement['all_tokens_agree']}, text part agrees {agreement['text_part_agrees']} "
              f"(first difference per row {agreement['first_difference']})", flush=True)
        for _ in range(args.warmup):
            jax_side(prompt)
            torch_side(prompt)
        times, load = {"jax": [], "torch": []}, []
        for step in range(args.repeats):  # alternating, so both sides see the same load from the shared machine
            times["jax"].append(_seconds(jax_side, prompt))
            times["torch"].append(_seconds(torch_side, prompt))
            load.append(os.getloadavg()[0])
            print(f"  repeat {step + 1}/{args.repeats}: JAX {times['jax'][-1]:.2f} s, transformers "
                  f"{times['torch'][-1]:.2f} s (load average {load[-1]:.1f} on {torch_settings['threads']} cores)",
                  flush=True)
        sides = {side: _summary(values, batch_size, args.new_tokens) for side, values in times.items()}
        ratio = sides["jax"]["tokens_per_s"] / sides["torch"]["tokens_per_s"]
        results[str(batch_size)] = {"prompt_length": int(prompt["input_ids"].shape[1]), "jax_compile_s": compile_s,
                                    "agreement": agreement, "jax": sides["jax"], "torch": sides["torch"],
                                    "ratio": ratio, "ratio_of_fastest": sides["torch"]["min_s"] / sides["jax"]["min_s"],
                                    "load_average": load}
        for name, side in (("JAX generate_tokens", "jax"), ("transformers generate", "torch")):
            rows.append({"batch": batch_size, "side": name, "tokens/s": sides[side]["tokens_per_s"],
                         "ms/step": sides[side]["ms_per_step"], "median s": sides[side]["median_s"]})

    common.print_table(f"greedy generation, {args.new_tokens} new tokens per row (median of {args.repeats}; "
                       "video encoding + prefill + decode)", rows, ["batch", "side", "tokens/s", "ms/step",
                                                                    "median s"])
    for batch_size in batch_sizes:
        entry = results[str(batch_size)]
        print(f"ratio JAX / transformers tokens/s at batch {batch_size}: {entry['ratio']:.2f}x of the medians, "
              f"{entry['ratio_of_fastest']:.2f}x of the fastest")
    print("(target >= 3x)")
    first = results[str(batch_sizes[0])]
    return {"config": args.config, "new_tokens": args.new_tokens, "batch_sizes": batch_sizes,
            "torch_threads": torch_settings["threads"],
            "omp_wait_policy": torch_settings["omp_wait_policy"], "torch_attention": args.attention,
            "jax_layers": shared_weights.layers_description(jax_config), "batches": results,
            "ratio": first["ratio"], "ratio_batch": batch_sizes[0],
            "tokens_agree": first["agreement"]["text_part_agrees"]}
