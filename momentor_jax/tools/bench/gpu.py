"""`gpu`: the `train` figures and KV-cache decoding on an NVIDIA GPU with a ~1B bf16 model; skipped elsewhere.

    python -m momentor_jax.tools.bench gpu [--batch_size 8] [--steps 10] [--config.KEY=VALUE ...]

Needs JAX with CUDA (`pip install -U "jax[cuda12]"`). On a host with an NVIDIA GPU this suite asks JAX for CUDA
even though the dispatcher defaults JAX_PLATFORMS to cpu. Without a GPU it prints why, and gpu.json holds
`skipped: true` and the `reason`.

Model (`--model 1b`): configs/bench.py scaled by ONE_B: LLaMA d_model 2048, 16 layers, 16 heads, MLP 5632 (about
1.0 B parameters with the 32005-row embedding and LM head), 1024 tokens, 32 frames at 224 px through the small ViT,
bf16 compute with fp32 weights and AdamW state, everything trainable, global batch 8. `--model as_config` takes
`--config` as it is.

train: the train suite's measurement (tools/bench/train.py: the trainer's step on a fixed batch, state donated),
with MFU against the bf16 matmul peak (`peak` at --peak_size, before and after the steps and between them).
decode: inference/generate.py `generate_tokens`, greedy, as predict/evaluate call it (parameters as trained:
fp32 weights, bf16 compute; LLM layers unrolled once with `generate.decoding_layout`, as Generator does), on a
prompt of a short system text, the video span and a question with one <TEMP-INPUT>, with an eos id no token has
so every row writes `--new_tokens` tokens. Each batch size is timed for the whole answer and for the prompt alone
(max_new_tokens=1); their difference gives the per-token decode time, and the LLM parameter bytes read per decode
step over the measured copy bandwidth gives the bandwidth use.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import time

from absl import flags


def _nvidia_gpu_visible() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*")) or shutil.which("nvidia-smi") is not None


def _cuda_plugin_installed() -> bool:
    return any(importlib.util.find_spec(name) is not None for name in ("jax_cuda12_plugin", "jax_cuda13_plugin"))


# The dispatcher defaults JAX_PLATFORMS to cpu before importing a suite; this one wants the GPU where there is one.
if os.environ.get("JAX_PLATFORMS") == "cpu" and _nvidia_gpu_visible() and _cuda_plugin_installed():
    os.environ["JAX_PLATFORMS"] = "cuda,cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from momentor_jax import constants  # noqa: E402
from momentor_jax.tools.bench import common  # noqa: E402
from momentor_jax.tools.bench import train as train_suite  # noqa: E402

ONE_B = {"model.llm.hidden_size": 2048, "model.llm.intermediate_size": 5632, "model.llm.num_layers": 16,
         "model.llm.num_heads": 16, "model.llm.num_kv_heads": 16, "model.llm.dtype": "bfloat16",
         "model.vision.dtype": "bfloat16", "max_length": 1024, "batch_size": 8, "trainable": "all",
         "remat_policy": "none"}
NO_EOS = -1  # an id no generated token has: generation runs all max_new_tokens steps


def unavailable_reason(allow_cpu: bool = False):
    """None when the suite can run here, else why not."""
    devices = jax.devices()
    if any(d.platform == "gpu" and "nvidia" in d.device_kind.lower() for d in devices):
        return None
    if allow_cpu:
        return None
    seen = f"JAX devices: {devices[0].platform} x{len(devices)}"
    if not _nvidia_gpu_visible():
        return f"no NVIDIA GPU on this host ({seen})"
    if not _cuda_plugin_installed():
        return f'an NVIDIA GPU is present but JAX has no CUDA plugin: pip install -U "jax[cuda12]" ({seen})'
    return f"an NVIDIA GPU is present but JAX did not use it; run with JAX_PLATFORMS=cuda ({seen})"


def gpu_config(config, model: str, overrides: dict):
    """`config` scaled by ONE_B (model "1b"), then the command line's `--config.KEY=VALUE` overrides again, so they
    win over the scaling."""
    if model == "1b":
        config.update_from_flattened_dict(ONE_B)
        config.update_from_flattened_dict(overrides)
    return config


# ------------------------------------------------------------------------------------------------- decode
def decode_prompt(model_config, batch_size: int, question_tokens: int = 24, seed: int = 0) -> dict:
    """<s>, a system text, the video span, a question with one <TEMP-INPUT> (at time 0.25) and "ASSISTANT:";
    the same prompt in every row, each row with its own frames."""
    special = constants.special_token_ids(model_config.llm.vocab_size)
    rng = np.random.default_rng(seed)
    text_limit = model_config.llm.vocab_size - constants.NUM_ADDED_TOKENS
    video = [special["vid_start"]] + [special["vid_patch"]] * model_config.num_frames + [special["vid_end"]]
    question = rng.integers(3, text_limit, question_tokens).tolist()
    question[question_tokens // 2] = special["temp_input"]
    ids = np.asarray([1] + rng.integers(3, text_limit, 40).tolist() + video + question
                     + rng.integers(3, text_limit, 2).tolist(), np.int32)
    times = np.where(ids == special["temp_input"], 0.25, 0.0).astype(np.float32)
    size = model_config.vision.image_size
    return {"input_ids": np.repeat(ids[None], batch_size, 0),
            "placeholder_times": np.repeat(times[None], batch_size, 0),
            "frames": rng.integers(0, 256, (batch_size, model_config.num_frames, size, size, 3), dtype=np.uint8)}


def random_params(model_config, seed: int = 0):
    """Freshly initialised parameters (fp32), created on the default device."""
    import flax.linen as nn  # noqa: PLC0415

    from momentor_jax.models.momentor import example_batch  # noqa: PLC0415
    from momentor_jax.training import trainer  # noqa: PLC0415

    init = trainer.momentor_fns(model_config).init
    batch = example_batch(model_config, 1, 8)
    return jax.jit(lambda key: nn.unbox(init(key, batch)))(jax.random.PRNGKey(seed))


def measure_decode(model_config, batch_sizes, new_tokens: int, repeats: int = 3,
                   bytes_per_s: float = 0.0) -> list:
    """Per batch size: whole-answer and prompt-only times of generate_tokens, tokens/s and per-token decode time."""
    from momentor_jax.inference import generate  # noqa: PLC0415

    params, model_config = generate.decoding_layout(random_params(model_config), model_config)  # as Generator
    llm_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params["llm"]))
    rows = []
    for batch_size in batch_sizes:
        prompt = jax.device_put(decode_prompt(model_config, batch_size))  # on the device once, not per call
        length = prompt["input_ids"].shape[1]
        if length + new_tokens > model_config.llm.max_position_embeddings:
            raise ValueError(f"prompt {length} + {new_tokens} new tokens exceed max_position_embeddings "
                             f"{model_config.llm.max_position_embeddings}")
        lengths = jax.device_put(np.full((batch_size,), length, np.int32))

        def answer(tokens: int):
            sampling = generate.SamplingConfig(max_new_tokens=tokens)
            out = generate.generate_tokens(params, prompt["input_ids"], prompt["placeholder_times"], lengths,
                                           prompt["frames"], jax.random.PRNGKey(0), config=model_config,
                                           sampling=sampling, eos_id=NO_EOS)
            return jax.block_until_ready(out)

        whole = common.time_repeats(lambda: answer(new_tokens), repeats, warmup=1,
                                    label=f"decode batch {batch_size}")
        prefill = common.time_repeats(lambda: answer(1), repeats, warmup=1)
        produced = int(np.asarray(answer(new_tokens)["num_tokens"]).min())
        decode_s = max(whole["median_s"] - prefill["median_s"], 1e-9)
        per_token_s = decode_s / max(new_tokens - 1, 1)
        row = {"batch_size": batch_size, "prompt_tokens": length, "new_tokens": new_tokens,
               "tokens_generated": produced, "whole_s": whole, "prompt_only_s": prefill,
               "tokens_per_s": batch_size * new_tokens / whole["median_s"],
               "decode_tokens_per_s": batch_size / per_token_s, "ms_per_decode_step": per_token_s * 1e3,
               "llm_param_bytes": llm_bytes}
        if bytes_per_s:
            row["bandwidth_fraction"] = llm_bytes / per_token_s / bytes_per_s
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- the suite
def define_flags(flag_values, argv) -> None:
    common.define_config(flag_values, argv, "the overrides apply after the --model scaling")
    fv = {"flag_values": flag_values}
    flags.DEFINE_enum("model", "1b", ("1b", "as_config"), "1b: the config scaled by ONE_B; as_config: the config "
                      "unchanged", **fv)
    flags.DEFINE_integer("batch_size", None, "global train batch (default: the config's)", **fv)
    flags.DEFINE_integer("steps", 10, "timed train steps", **fv)
    flags.DEFINE_integer("warmup", 3, "untimed train steps after compilation", **fv)
    flags.DEFINE_integer("peak_size", 8192, "side of the peak matmul", **fv)
    flags.DEFINE_string("decode_batch_sizes", "1,8", "comma-separated", **fv)
    flags.DEFINE_integer("new_tokens", 128, "tokens generated per row", **fv)
    flags.DEFINE_integer("decode_repeats", 3, "timed generations per batch size", **fv)
    flags.DEFINE_bool("allow_cpu", False, "run the GPU path on any backend (for tests)", **fv)


def run(args) -> dict:
    reason = unavailable_reason(args.allow_cpu)
    if reason:
        print(f"gpu: skipped: {reason}")
        return {"skipped": True, "reason": reason}
    from ml_collections import config_flags  # noqa: PLC0415
    config = gpu_config(args.config, args.model, config_flags.get_override_values(args["config"]))
    train = train_suite.measure_with_peak(config, args.steps, args.warmup, args.batch_size, args.peak_size)
    train_suite.print_train_table(f"train step on {jax.devices()[0].device_kind}", train)

    from momentor_jax.models.config import MomentorConfig  # noqa: PLC0415
    batch_sizes = [int(b) for b in args.decode_batch_sizes.split(",") if b]
    start = time.perf_counter()
    decode = measure_decode(MomentorConfig.from_dict(config.model), batch_sizes, args.new_tokens,
                            args.decode_repeats, train["peak"]["before"]["memory"]["bytes_per_s"])
    common.print_table(f"decode (generate_tokens, greedy, {time.perf_counter() - start:.0f} s)", [
        {"batch": r["batch_size"], "prompt": r["prompt_tokens"], "new": r["new_tokens"],
         "answer ms": r["whole_s"]["median_s"] * 1e3, "prompt-only ms": r["prompt_only_s"]["median_s"] * 1e3,
         "ms/step": r["ms_per_decode_step"], "tokens/s": r["tokens_per_s"],
         "decode tokens/s": r["decode_tokens_per_s"],
         "bandwidth": f"{100 * r['bandwidth_fraction']:.0f}%" if "bandwidth_fraction" in r else "-"}
        for r in decode], ["batch", "prompt", "new", "answer ms", "prompt-only ms", "ms/step", "tokens/s",
                           "decode tokens/s", "bandwidth"])
    return {"skipped": False, **common.config_record(args), "model": args.model,
            "mfu": train.get("mfu"), "tokens_per_s": train["tokens_per_s"], "train": train, "decode": decode}
