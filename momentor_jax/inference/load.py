"""Load a model for inference from any of the three checkpoint layouts.

- a training workdir (WORKDIR/config.json + WORKDIR/checkpoints/<step>/params): its latest finished step;
- one step of a run (WORKDIR/checkpoints/<step>): that step, with the run's config.json two levels up;
- a converted checkpoint (PATH/params + PATH/momentor_config.json, `convert import_hf`), tokenizer at
  PATH/tokenizer/ (MomentorTokenizer.save) or PATH/tokenizer.model.

A training run's model config is the `model` section of WORKDIR/config.json (written by `momentor_jax.train`), its
tokenizer the config's `tokenizer` key or `data.dir`/tokenizer, and its system prompt `data.system_prompt`.

    locate(path) -> Located                              which layout, which step (cheap)
    identity(path) -> {'params_dir', 'saved_at'}         names the weights (resumed answers must come from them)
    load_config(path) -> MomentorConfig                  (cheap: JSON)
    load_tokenizer(path, config) -> MomentorTokenizer    (cheap)
    load_params(path) -> params as host numpy arrays     (reads every weight)
    load_model(path) -> (params, config, tokenizer)
    sentencepiece_model(path) -> path of the tokenizer's sentencepiece model, or None (export)
    load_system_prompt(path), shard_params(params, config)
Commands check their other inputs between the cheap calls and `load_params`, so bad input fails in seconds.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np

from momentor_jax import checkpoint_io, fileio
from momentor_jax.data import conversation
from momentor_jax.data.tokenizer import MomentorTokenizer
from momentor_jax.models.config import MomentorConfig

RUN_CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class Located:
    kind: str                 # "run" or "converted"
    workdir: Optional[str]    # the run's workdir (kind "run")
    params_dir: str           # the directory holding params/ (a step directory, or the converted checkpoint)
    step: Optional[int]       # the step (kind "run")


def _absolute(path: str) -> str:
    path = os.fspath(path)
    return path.rstrip("/") if fileio.is_remote(path) else os.path.abspath(path)


def _split(path: str) -> tuple[str, str]:
    return tuple(path.rsplit("/", 1)) if fileio.is_remote(path) else os.path.split(path)


def _finished_steps(checkpoints_dir: str) -> list[int]:
    return sorted(int(name) for name in fileio.listdir(checkpoints_dir)
                  if name.isdigit() and fileio.isdir(fileio.join(checkpoints_dir, name, "params")))


def locate(path: str) -> Located:
    """Which of the three layouts `path` is; FileNotFoundError naming it otherwise."""
    path = _absolute(path)
    if not fileio.isdir(path):
        raise FileNotFoundError(f"checkpoint {path}: no such directory")
    checkpoints = fileio.join(path, "checkpoints")
    if fileio.isdir(checkpoints):
        steps = _finished_steps(checkpoints)
        if not steps:
            raise FileNotFoundError(f"checkpoint {path}: training workdir without a finished checkpoint")
        return Located("run", path, fileio.join(checkpoints, str(steps[-1])), steps[-1])
    if fileio.exists(fileio.join(path, checkpoint_io.CONFIG_FILE)):
        return Located("converted", None, path, None)
    parent, name = _split(path)
    if _split(parent)[1] == "checkpoints" and name.isdigit() and fileio.isdir(fileio.join(path, "params")):
        return Located("run", _split(parent)[0], path, int(name))
    raise FileNotFoundError(f"checkpoint {path}: neither a training workdir, a step directory "
                            f"(WORKDIR/checkpoints/<step>) nor a converted checkpoint ({checkpoint_io.CONFIG_FILE})")


def _run_config(workdir: str) -> dict:
    config_path = fileio.join(workdir, RUN_CONFIG_FILE)
    try:
        run_config = json.loads(fileio.read_text(config_path))
        run_config["model"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{config_path}: cannot read the run's config with a 'model' section ({e})") from e
    return run_config


def _run_tokenizer_path(workdir: str, run_config: dict) -> str:
    if run_config.get("tokenizer"):
        return run_config["tokenizer"]
    data_dir = (run_config.get("data") or {}).get("dir")
    if not data_dir:
        raise ValueError(f"{fileio.join(workdir, RUN_CONFIG_FILE)}: neither 'tokenizer' nor 'data.dir' is set")
    return fileio.join(data_dir, "tokenizer")


def _tokenizer_path(located: Located) -> str:
    if located.kind == "run":
        return _run_tokenizer_path(located.workdir, _run_config(located.workdir))
    directory = fileio.join(located.params_dir, "tokenizer")
    return directory if fileio.isdir(directory) else fileio.join(located.params_dir, checkpoint_io.TOKENIZER_FILE)


def identity(path: str) -> dict:
    """What names the weights a checkpoint holds: {'params_dir', 'saved_at'} (orbax's commit timestamp, when it wrote
    one), so that answers kept from a checkpoint are not mixed with those of another written to the same path."""
    located = locate(path)
    saved_at = None
    try:
        metadata = json.loads(fileio.read_text(fileio.join(located.params_dir, checkpoint_io.PARAMS_DIR,
                                                           "_CHECKPOINT_METADATA")))
        saved_at = metadata.get("commit_timestamp_nsecs")
    except (OSError, ValueError, AttributeError):
        pass
    return {"params_dir": located.params_dir, "saved_at": saved_at}


def load_config(path: str) -> MomentorConfig:
    located = locate(path)
    if located.kind == "converted":
        return checkpoint_io.load_config(located.params_dir)
    return MomentorConfig.from_dict(_run_config(located.workdir)["model"])


def load_tokenizer(path: str, config: MomentorConfig) -> MomentorTokenizer:
    """The checkpoint's tokenizer, checked against `config`; ValueError naming the checkpoint otherwise."""
    from momentor_jax.training.trainer import load_tokenizer as load  # noqa: PLC0415
    try:
        return load(_tokenizer_path(locate(path)), config)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"checkpoint {path}: {e}") from e


def sentencepiece_model(path: str) -> Optional[str]:
    """The sentencepiece model file of the checkpoint's tokenizer, or None when it has none."""
    from momentor_jax.data.tokenizer import ADDED_TOKENS_FILENAME, MODEL_FILENAME  # noqa: PLC0415
    try:
        tokenizer_path = _tokenizer_path(locate(path))
    except ValueError:
        return None
    if fileio.isfile(tokenizer_path):
        return tokenizer_path
    if fileio.exists(fileio.join(tokenizer_path, ADDED_TOKENS_FILENAME)):
        return fileio.join(tokenizer_path, MODEL_FILENAME)
    return None


def _restore(params_path: str) -> Any:
    import orbax.checkpoint as ocp  # noqa: PLC0415
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(params_path)
        tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return checkpointer.restore(params_path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def load_params(path: str) -> Any:
    """Every weight of the checkpoint as host numpy arrays (the slow part of loading)."""
    return _restore(fileio.join(locate(path).params_dir, checkpoint_io.PARAMS_DIR))


def load_model(path: str) -> tuple[Any, MomentorConfig, MomentorTokenizer]:
    """(params as host numpy arrays, MomentorConfig, MomentorTokenizer) from a workdir, step dir or converted dir."""
    config = load_config(path)
    tokenizer = load_tokenizer(path, config)
    return load_params(path), config, tokenizer


def load_system_prompt(path: str) -> str:
    """The system prompt the model was trained with: a run's `data.system_prompt`, else the paper's."""
    located = locate(path)
    if located.kind == "run":
        prompt = (_run_config(located.workdir).get("data") or {}).get("system_prompt")
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
