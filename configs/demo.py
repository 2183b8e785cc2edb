"""The CPU demo: a small CLIP-style ViT and LLaMA from random init, every parameter trainable (the demo's stage 2
keeps the vision tower stage 1 trained frozen: `trainable=all_but_vision`), the paper's TPM (neighbouring token
propagation, soft temporal labels) with one temporal token per frame (32, not the paper's 300: token k is frame k,
and few output classes for a model trained for minutes). Layers unrolled: on the CPU a scanned stack's step was
14-26% slower (docs/measurements.md).
Variants :gesm (default) and :instruct.
`python -m momentor_jax.demo` (make demo) runs both stages on a synthetic data set and evaluates grounding.

With `data.dir` unset the run renders and prepares a synthetic dataset inside the workdir.
"""
import dataclasses

from configs import base_config, parse_variant
from momentor_jax.models import config as model_configs

VARIANTS = ("gesm", "instruct")


def demo_model() -> model_configs.MomentorConfig:
    vision = model_configs.VisionConfig(image_size=64, patch_size=16, hidden_size=128, intermediate_size=512,
                                        num_layers=2, num_heads=4, dtype="float32", scan_layers=False)
    llm = model_configs.LlamaConfig(vocab_size=1000 + 5, hidden_size=256, intermediate_size=688, num_layers=4,
                                    num_heads=4, num_kv_heads=4, max_position_embeddings=512, dtype="float32",
                                    remat_policy="none", scan_layers=False)
    return dataclasses.replace(model_configs.MomentorConfig(), vision=vision, llm=llm, num_frames=32,
                               num_temporal_tokens=32)


def get_config(arg=None):
    variant = parse_variant(arg, "gesm", VARIANTS)
    c = base_config(demo_model(), num_frames=32, max_length=128, remat_policy="none")
    c.variant = variant
    c.batch_size = 16
    c.total_steps = 300
    c.mesh = (-1, 1, 1)
    c.learning_rate = 5e-4
    c.warmup_fraction = 0.05
    c.trainable = "all"
    c.checkpoint_every_steps = 100
    c.keep_checkpoints = 2
    c.data.read_threads = 2            # decode threads; XLA wants both cores of the demo machine
    c.data.video_cache_mb = 256        # the 400 training videos' decoded frames (150 MiB): decoded once, not per epoch
    c.data.synthetic_videos = 64
    # The paper's system prompt is ~60 tokens; this small model trains (and evaluates) faster with a short one.
    c.data.system_prompt = "A chat between a user and a video assistant."
    return c


def sweep(arg=None):
    return [{"learning_rate": lr} for lr in (3e-4, 1e-3, 3e-3)]
