"""A Momentor parameter checkpoint on disk: PATH/params (orbax PyTree) + PATH/momentor_config.json.

This is what `python -m momentor_jax.convert import_hf` writes and what training (`init_from`) and inference load.
The tree holds plain arrays (no logical-partitioning boxes): {'vision', 'projector', 'tpm', 'llm'} as in
models/momentor.py ('vision' absent when no CLIP weights were imported). PATH may be local or gs:// (the params
through orbax/tensorstore, the JSON through momentor_jax/fileio.py).
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from momentor_jax import fileio
from momentor_jax.models.config import MomentorConfig

PARAMS_DIR = "params"
CONFIG_FILE = "momentor_config.json"
TOKENIZER_FILE = "tokenizer.model"


def save_params(path: str, params: Any, config: MomentorConfig) -> None:
    """Writes `params` (numpy or jax arrays) and the config JSON under `path` (created; must not hold params yet)."""
    import orbax.checkpoint as ocp  # noqa: PLC0415 (keeps `import momentor_jax` light)

    path = _absolute(path)
    fileio.makedirs(path)
    fileio.configure_for(path)
    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save(fileio.join(path, PARAMS_DIR), jax.tree.map(np.asarray, params))
    fileio.write_text(fileio.join(path, CONFIG_FILE), json.dumps(config.to_dict(), indent=2, sort_keys=True))


def _absolute(path: str) -> str:
    path = os.fspath(path)
    return path.rstrip("/") if fileio.is_remote(path) else os.path.abspath(path)


def load_config(path: str) -> MomentorConfig:
    config_path = fileio.join(path, CONFIG_FILE)
    fileio.configure_for(path)
    if not fileio.exists(config_path):
        fileio.check_bucket(path)
        raise FileNotFoundError(f"{config_path}: not a Momentor parameter checkpoint (written by convert import_hf)")
    return MomentorConfig.from_dict(json.loads(fileio.read_text(config_path)))


def load_params(path: str) -> tuple[Any, MomentorConfig]:
    """Returns (params as host numpy arrays, MomentorConfig)."""
    import orbax.checkpoint as ocp  # noqa: PLC0415

    config = load_config(path)
    params_path = fileio.join(_absolute(path), PARAMS_DIR)
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(params_path)
        tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        params = checkpointer.restore(params_path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    return params, config
