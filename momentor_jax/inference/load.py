"""Load a model for inference from any of the three checkpoint layouts.

- a training workdir (WORKDIR/config.json + WORKDIR/checkpoints/<step>/params): its latest finished step;
- one step of a run (WORKDIR/checkpoints/<step>): that step, with the run's config.json two levels up;
- a converted checkpoint (PATH/params + PATH/momentor_config.json, `convert import_hf`), tokenizer at
  PATH/tokenizer/ (MomentorTokenizer.save) or PATH/tokenizer.model.

A training run's model config is the `model` section of WORKDIR/config.json (written by `momentor_jax.train`), its
tokenizer the config's `tokenizer` key or `data.dir`/tokenizer, and its system prompt `data.system_prompt`.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np

from momentor_jax import checkpoint_io
from momentor_jax.data import conversation
from momentor_jax.data.tokenizer import MomentorTokenizer
from momentor_jax.models.config import MomentorConfig

RUN_CONFIG_FILE = "config.json"


def _finished_steps(checkpoints_dir: str) -> list[int]:
    steps = []
    for name in os.listdir(checkpoints_dir):
        path = os.path.join(checkpoints_dir, name)
        if name.isdigit() and os.path.isdir(os.path.join(path, "params")):
            steps.append(int(name))
    return sorted(steps)


def _locate(path: str) -> tuple[str, Optional[str], str]:
    """(kind, run workdir or None, directory holding `params/`)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path}: no such directory")
    if os.path.isdir(os.path.join(path, "checkpoints")):
        steps = _finished_steps(os.path.join(path, "checkpoints"))
        if not steps:
            raise FileNotFoundError(f"checkpoint {path}: training workdir without a finished checkpoint")
        return "run", path, os.path.join(path, "checkpoints", str(steps[-1]))
    if os.path.exists(os.path.join(path, checkpoint_io.CONFIG_FILE)):
        return "converted", None, path
    parent = os.path.dirname(path)
    if os.path.basename(parent) == "checkpoints" and os.path.isdir(os.path.join(path, "params")):
        return "run", os.path.dirname(parent), path
    raise FileNotFoundError(f"checkpoint {path}: neither a training workdir, a step directory "
                            f"(WORKDIR/checkpoints/<step>) nor a converted checkpoint ({checkpoint_io.CONFIG_FILE})")


def _run_config(workdir: str) -> dict:
    config_path = os.path.join(workdir, RUN_CONFIG_FILE)
    try:
        with open(config_path) as f:
            run_config = json.load(f)
        run_config["model"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{config_path}: cannot read the run's config with a 'model' section ({e})") from e
    return run_config


def _run_tokenizer_path(workdir: str, run_config: dict) -> str:
    if run_config.get("tokenizer"):
        return run_config["tokenizer"]
    data_dir = (run_config.get("data") or {}).get("dir")
    if not data_dir:
        raise ValueError(f"{os.path.join(workdir, RUN_CONFIG_FILE)}: neither 'tokenizer' nor 'data.dir' is set")
    return os.path.join(data_dir, "tokenizer")


def _load_tokenizer(path: str, config: MomentorConfig, source: str) -> MomentorTokenizer:
    from momentor_jax.training.trainer import load_tokenizer  # noqa: PLC0415
    try:
        return load_tokenizer(path, config)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"checkpoint {source}: {e}") from e


def _restore_params(step_dir: str) -> Any:
    import orbax.checkpoint as ocp  # noqa: PLC0415
    params_path = os.path.join(step_dir, "params")
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(params_path)
        tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return checkpointer.restore(params_path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def load_model(path: str) -> tuple[Any, MomentorConfig, MomentorTokenizer]:
    """(params as host numpy arrays, MomentorConfig, MomentorTokenizer) from a workdir, step dir or converted dir."""
    kind, workdir, params_dir = _locate(path)
    if kind == "converted":
        params, config = checkpoint_io.load_params(params_dir)
        directory = os.path.join(params_dir, "tokenizer")
        tokenizer_path = directory if os.path.isdir(directory) else os.path.join(params_dir,
                                                                                checkpoint_io.TOKENIZER_FILE)
        return params, config, _load_tokenizer(tokenizer_path, config, path)
    run_config = _run_config(workdir)
    config = MomentorConfig.from_dict(run_config["model"])
    tokenizer = _load_tokenizer(_run_tokenizer_path(workdir, run_config), config, path)
    return _restore_params(params_dir), config, tokenizer


def load_system_prompt(path: str) -> str:
    """The system prompt the model was trained with: a run's `data.system_prompt`, else the paper's."""
    kind, workdir, _ = _locate(path)
    if kind == "run":
        prompt = (_run_config(workdir).get("data") or {}).get("system_prompt")
        if prompt:
            return prompt
    return conversation.SYSTEM_PROMPT


def shard_params(params: Any, config: MomentorConfig, devices: Optional[Sequence[Any]] = None) -> Any:
    """Places `params` on all devices (default jax.devices()), split along the training rules' 'fsdp' mesh axis.

    A 7B model (28 GB of fp32 params) does not fit one accelerator; the decoding program then follows the params'
    shardings (the batch stays replicated, which is what small inference batches want).
    """
    from momentor_jax.models.momentor import Momentor, example_batch  # noqa: PLC0415
    from momentor_jax.training import sharding  # noqa: PLC0415

    devices = list(jax.devices() if devices is None else devices)
    if len(devices) == 1:
        return jax.device_put(params, devices[0])
    mesh = sharding.make_mesh((1, len(devices), 1), devices)
    abstract = jax.eval_shape(Momentor(config).init, jax.random.PRNGKey(0), example_batch(config, 1, 8))["params"]
    shardings = sharding.logical_to_shardings(abstract, mesh, sharding.axis_rules())
    missing = sorted(set(params) - set(shardings))
    if missing:
        raise ValueError(f"parameter groups {missing} are not part of the model for this config")
    return jax.device_put(params, {name: shardings[name] for name in params})