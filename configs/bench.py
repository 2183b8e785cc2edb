"""The benchmark config: a model that fills a 2-core CPU host (`python -m momentor_jax.tools.bench train`).

d_model 1024, 8 layers, 1024 tokens per example, 32 frames at 224 px through a small ViT (patch 32, width 256,
4 layers), fp32 (the CPU's fast matmul dtype), every parameter trainable, no remat, layers unrolled (faster than
nn.scan on the CPU, which saves and restores each layer's activations through stacked buffers), attention in causal
blocks of 256 queries (`attention_block`: the masked upper triangle of the scores is skipped), the LM head and the
loss at each row's supervised positions only (`loss_positions`); the timings of these choices are in
docs/measurements.md. Variants :gesm (default) and :instruct; both only set the data the trainer would read,
the bench suites build their batches in memory.
"""
import dataclasses

from configs import base_config, parse_variant
from momentor_jax.models import config as model_configs

VARIANTS = ("gesm", "instruct")


def bench_model() -> model_configs.MomentorConfig:
    vision = model_configs.VisionConfig(image_size=224, patch_size=32, hidden_size=256, intermediate_size=1024,
                                        num_layers=4, num_heads=4, dtype="float32", scan_layers=False)
    llm = model_configs.LlamaConfig(vocab_size=32000 + 5, hidden_size=1024, intermediate_size=2816, num_layers=8,
                                    num_heads=8, num_kv_heads=8, max_position_embeddings=2048, dtype="float32",
                                    remat_policy="none", scan_layers=False, attention_block=256)
    return dataclasses.replace(model_configs.MomentorConfig(), vision=vision, llm=llm, num_frames=32,
                               num_temporal_tokens=300)


def get_config(arg=None):
    variant = parse_variant(arg, "gesm", VARIANTS)
    c = base_config(bench_model(), num_frames=32, max_length=1024, remat_policy="none")
    c.variant = variant
    c.batch_size = 2
    c.total_steps = 20
    c.mesh = (-1, 1, 1)
    c.learning_rate = 1e-4
    c.trainable = "all"
    # The LM head and the loss at the supervised positions only (MomentorConfig.loss_positions): about 40% of a
    # packed row's tokens and half of the same-shape suites' rows, all within 512 of 1024 slots.
    c.model.loss_positions = 512
    c.data.packing = True
    # Length model at 32 frames: ~190-token dialogues, 5.45 per 1024-token row on average, never more than 7.
    c.data.max_segments = c.data.max_videos_per_row = 7
    return c
