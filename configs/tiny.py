"""A few-thousand-parameter Momentor for tests: models.config.tiny() dims, fp32, 8 frames, 16 temporal tokens.

With `data.dir` unset the run renders and prepares its own small synthetic dataset inside the workdir, so

    python -m momentor_jax.train --config=configs/tiny.py --workdir=/tmp/tiny

works with nothing else. Variants :gesm (default) and :instruct.
"""
from configs import base_config, parse_variant
from momentor_jax.models import config as model_configs

VARIANTS = ("gesm", "instruct")


def get_config(arg=None):
    variant = parse_variant(arg, "gesm", VARIANTS)
    model = model_configs.tiny()
    c = base_config(model, num_frames=model.num_frames, max_length=256, remat_policy="none")
    c.variant = variant
    c.batch_size = 8
    c.total_steps = 6
    c.mesh = (-1, 1, 1)
    c.learning_rate = 1e-3
    c.warmup_steps = 1
    c.checkpoint_every_steps = 2
    c.keep_checkpoints = 2
    c.log_every_steps = 1
    c.data.synthetic_videos = 16
    c.data.system_prompt = "You are Momentor, a video assistant."  # the paper's prompt alone fills ~200 tokens
    return c


def sweep(arg=None):
    return [{"learning_rate": lr} for lr in (1e-3, 3e-3)]
