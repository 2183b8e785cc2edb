"""Tiny random Momentor checkpoints for the inference tests (predict, evaluate, the web demo).

    random_params(config, seed) -> params     the model's shapes, norm scales 1, the rest N(0, 0.05^2), without the
                                              slow un-jitted flax init
    save_writing_times(directory, config, tokenizer) -> params
                                              a converted checkpoint (checkpoints.py layout, tokenizer inside) whose
                                              temporal output table is scaled up so that the random model writes
                                              temporal tokens (times) readily
"""
import os

import jax
import numpy as np

from momentor_jax import checkpoints
from momentor_jax.models.momentor import Momentor, example_batch


def random_params(config, seed=0):
    shapes = jax.eval_shape(Momentor(config).init, jax.random.PRNGKey(0), example_batch(config, 1, 16))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        leaf = leaf.unbox() if hasattr(leaf, "unbox") else leaf
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return np.ones(leaf.shape, leaf.dtype)
        return (0.05 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes, is_leaf=lambda x: hasattr(x, "unbox"))


def save_writing_times(directory: str, config, tokenizer):
    params = random_params(config)
    params["tpm"]["output_embedding"] = params["tpm"]["output_embedding"] * 40.0
    checkpoints.save_params(directory, params, config)
    tokenizer.save(os.path.join(directory, "tokenizer"))
    return params
