"""Load a model for inference from any checkpoint layout (momentor_jax/checkpoints.py: a training workdir, one step
of a run, a converted checkpoint); the layouts, model config and parameters are checkpoints.py's.

A run's tokenizer is its config's `tokenizer` key or `data.dir`/tokenizer, its system prompt `data.system_prompt`; a
converted checkpoint's tokenizer is PATH/tokenizer/ (MomentorTokenizer.save) or PATH/tokenizer.model.

    load_tokenizer(path, config) -> MomentorTokenizer    (cheap)
    load_model(path) -> (params, config, tokenizer)      (params as host numpy arrays: reads every weight)
    sentencepiece_model(path) -> path of the tokenizer's sentencepiece model, or None (export)
    load_system_prompt(path), shard_params(params, config)
Commands call the cheap checkpoints.locate / checkpoints.load_config / load_tokenizer first and check their other
inputs before checkpoints.load_params, so bad input fails in seconds.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax

from momentor_jax import checkpoints, fileio
from momentor_jax.data import conversation
from momentor_jax.data.tokenizer import MomentorTokenizer
from momentor_jax.models.config import MomentorConfig


def _tokenizer_path(located: checkpoints.Located) -> str:
    if located.kind == "converted":
        directory = fileio.join(located.params_dir, "tokenizer")
        return directory if fileio.isdir(directory) else fileio.join(located.params_dir, checkpoints.TOKENIZER_FILE)
    run_config = checkpoints.run_config(located.workdir)
    if run_config.get("tokenizer"):
        return run_config["tokenizer"]
    data_dir = (run_config.get("data") or {}).get("dir")
    if not data_dir:
        raise ValueError(f"{fileio.join(located.workdir, checkpoints.RUN_CONFIG_FILE)}: neither 'tokenizer' nor "
                         "'data.dir' is set")
    return fileio.join(data_dir, "tokenizer")


def load_tokenizer(path: str, config: MomentorConfig) -> MomentorTokenizer:
    """The checkpoint's tokenizer, checked against `config`; ValueError naming the checkpoint otherwise."""
    from momentor_jax.training.trainer import load_tokenizer as load  # noqa: PLC0415
    try:
        return load(_tokenizer_path(checkpoints.locate(path)), config)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"checkpoint {path}: {e}") from e


def sentencepiece_model(path: str) -> Optional[str]:
    """The sentencepiece model file of the checkpoint's tokenizer, or None when it has none."""
    from momentor_jax.data.tokenizer import ADDED_TOKENS_FILENAME, MODEL_FILENAME  # noqa: PLC0415
    try:
        tokenizer_path = _tokenizer_path(checkpoints.locate(path))
    except ValueError:
        return None
    if fileio.isfile(tokenizer_path):
        return tokenizer_path
    if fileio.exists(fileio.join(tokenizer_path, ADDED_TOKENS_FILENAME)):
        return fileio.join(tokenizer_path, MODEL_FILENAME)
    return None


def load_model(path: str) -> tuple[Any, MomentorConfig, MomentorTokenizer]:
    """(params as host numpy arrays, MomentorConfig, MomentorTokenizer) from a workdir, step dir or converted dir."""
    config = checkpoints.load_config(path)
    tokenizer = load_tokenizer(path, config)
    return checkpoints.load_params(path), config, tokenizer


def load_system_prompt(path: str) -> str:
    """The system prompt the model was trained with: a run's `data.system_prompt`, else the paper's."""
    located = checkpoints.locate(path)
    if located.kind == "run":
        prompt = (checkpoints.run_config(located.workdir).get("data") or {}).get("system_prompt")
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
