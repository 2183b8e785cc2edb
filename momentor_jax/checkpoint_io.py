"""A Momentor parameter checkpoint on disk: PATH/params (orbax PyTree) + PATH/momentor_config.json.

This is what `python -m momentor_jax.convert import_hf` writes and what training (`init_from`) and inference load.
The tree holds plain arrays (no logical-partitioning boxes): {'vision', 'projector', 'tpm', 'llm'} as in
models/momentor.py ('vision' absent when no CLIP weights were imported).
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from momentor_jax.models.config import MomentorConfig

PARAMS_DIR = "params"
CONFIG_FILE = "momentor_config.json"
TOKENIZER_FILE = "tokenizer.model"


def save_params(path: str, params: Any, config: MomentorConfig) -> None:
    """Writes `params` (numpy or jax arrays) and the config JSON under `path` (created; must not hold params yet)."""
    import orbax.checkpoint as ocp  # noqa: PLC0415 (keeps `import momentor_jax` light)

    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(path, PARAMS_DIR), jax.tree.map(np.asarray, params))
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(config.to_dict(), f, indent=2, sort_keys=True)


def load_config(path: str) -> MomentorConfig:
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path}: not a Momentor parameter checkpoint (written by convert import_hf)")
    with open(config_path) as f:
        return MomentorConfig.from_dict(json.load(f))


def load_params(path: str) -> tuple[Any, MomentorConfig]:
    """Returns (params as host numpy arrays, MomentorConfig)."""
    import orbax.checkpoint as ocp  # noqa: PLC0415

    config = load_config(path)
    params_path = os.path.join(os.path.abspath(path), PARAMS_DIR)
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(params_path)
        tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        params = checkpointer.restore(params_path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    return params, config
