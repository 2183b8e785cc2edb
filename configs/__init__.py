"""Training configs: `get_config(arg)` in each file returns an ml_collections.ConfigDict; `sweep()` lists overrides.

    python -m momentor_jax.train --config=configs/momentor_7b.py:gesm --workdir=DIR [--config.key=value ...]

`base_config` holds the keys every config shares (the trainer, tools and tests rely on these names) with the paper's
optimisation settings; a config file states only what differs. Values that must agree are tied with
FieldReferences: `num_frames` (top level and model), `remat_policy` (top level and model.llm), `data.use_features`
(and model.use_cached_features).
"""
from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections import config_dict

# `stage1` / `stage2` are accepted as aliases of the paper's two stages.
VARIANT_ALIASES = {"stage1": "gesm", "stage2": "instruct"}


def parse_variant(arg, default: str, allowed: tuple) -> str:
    variant = (arg or default).strip()
    variant = VARIANT_ALIASES.get(variant, variant)
    if variant not in allowed:
        raise ValueError(f"unknown config variant {variant!r}; choose one of {allowed} (or {sorted(VARIANT_ALIASES)})")
    return variant


def model_section(model_config) -> ml_collections.ConfigDict:
    """A MomentorConfig dataclass as a ConfigDict (None fields become typed placeholders, so flags can set them)."""
    section = ml_collections.ConfigDict(dataclasses.asdict(model_config))
    if section.llm.head_dim is None:
        section.llm.head_dim = config_dict.placeholder(int)
    return section


def base_config(model_config, *, num_frames: int, max_length: int, remat_policy: str) -> ml_collections.ConfigDict:
    """Keys shared by all configs, with the paper's optimisation settings as defaults."""
    c = ml_collections.ConfigDict()
    num_frames_ref = ml_collections.FieldReference(num_frames)
    remat_ref = ml_collections.FieldReference(remat_policy)

    c.variant = "gesm"                 # 'gesm' (stage 1) | 'instruct' (stage 2)
    c.seed = 0
    c.batch_size = 32                  # global, across all processes and micro-batches
    c.num_epochs = 2
    c.total_steps = -1                 # -1: num_epochs passes over the training set
    c.grad_accum_steps = 1             # micro-batches per step (scan): each holds batch_size / grad_accum_steps
    c.mesh = (1, -1, 1)                # (data, fsdp, tensor); -1 fills the remaining devices
    c.logical_axis_rules = ()          # ((logical name, mesh axes), ...) overriding training/sharding.py's rules

    c.learning_rate = 2e-5
    c.warmup_steps = -1                # -1: ceil(warmup_fraction x total_steps)
    c.warmup_fraction = 0.01
    c.weight_decay = 0.0
    c.grad_clip_norm = 1.0             # Hugging Face Trainer default; <= 0 disables clipping
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-8
    c.trainable = "momentor"           # 'momentor' (projector, TPM, input embeddings) | 'all' | 'all_but_vision'
    c.remat_policy = remat_ref

    c.init_from = config_dict.placeholder(str)   # any checkpoint layout: `convert import_hf` output, a workdir, a step
    c.requires_init_from = False       # True: a fresh run (no checkpoint yet) refuses to start from random weights
    c.tokenizer = config_dict.placeholder(str)   # MomentorTokenizer dir or .model file; unset: <data.dir>/tokenizer

    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.async_checkpointing = True
    c.log_every_steps = 10
    c.peak_flops_per_device = 0.0      # for MFU; 0: look up jax.devices()[0].device_kind (unknown: no MFU)

    c.num_frames = num_frames_ref
    c.max_length = max_length          # tokens per example (the model's position table must hold it)

    c.data = ml_collections.ConfigDict()
    # Prepared data: <dir>/<variant>_train.jsonl (data/convert_data*.py), <dir>/frames/ (data/extract_frames.py),
    # <dir>/tokenizer/ (MomentorTokenizer.save). `examples` / `frames` override those paths (globs allowed).
    c.data.dir = config_dict.placeholder(str)
    c.data.examples = config_dict.placeholder(str)
    c.data.frames = config_dict.placeholder(str)
    c.data.system_prompt = config_dict.placeholder(str)  # unset: Momentor's; tiny models need a shorter one
    c.data.read_threads = 4
    # Decoded videos kept in memory per loading process, up to this many MiB (data/loader.VideoCache): later epochs
    # skip JPEG decoding for the videos that fit. 0: none (Moment-10M's videos do not fit a host).
    c.data.video_cache_mb = 0
    c.data.use_features = False        # batches carry cached pooled ViT features instead of frames
    c.data.worker_count = 0            # grain worker processes (0: in the main process)
    c.data.synthetic_videos = 0        # >0: with data.dir unset, render and prepare this many videos in the workdir
    # Packing (data/packing.py): several dialogues per row of max_length, each with its own video; batch_size then
    # counts rows. max_videos_per_row <= max_segments; a row holds at most the smaller of the two dialogues.
    c.data.packing = False
    c.data.max_segments = 8
    c.data.max_videos_per_row = 8
    c.data.packing_buffer = 256        # dialogues per packing window (decoded and held in memory together)

    # Evaluation during training (training/evals.py): held-out loss and temporal accuracy every `every_steps`
    # steps (0: off) on the first `max_examples` of `examples` (JSONL path(s) or globs, comma-separated, relative to
    # data.dir unless absolute or gs://; their videos come from the training frame shards), in batches of
    # `batch_size` (0: batch_size / grad_accum_steps). Written as eval/loss and eval/temporal_acc.
    c.evals = ml_collections.ConfigDict()
    c.evals.every_steps = 0
    c.evals.examples = config_dict.placeholder(str)
    c.evals.max_examples = 256
    c.evals.batch_size = 0
    # Grounding R1@0.5 and mIoU every `grounding_every_steps` steps (0: off) on the first `grounding_max_queries`
    # queries of `grounding_annotations` (a file `python -m momentor_jax.evaluate --task grounding` reads, relative
    # to data.dir unless absolute or gs://), greedy answers of at most `max_new_tokens` tokens.
    c.evals.grounding_every_steps = 0
    c.evals.grounding_annotations = config_dict.placeholder(str)
    c.evals.grounding_max_queries = 64
    c.evals.max_new_tokens = 32

    c.model = model_section(model_config)
    c.model.num_frames = num_frames_ref
    c.model.use_cached_features = c.data.get_ref("use_features")
    c.model.llm.remat_policy = remat_ref
    return c
