"""Momentor checkpoints: the three on-disk layouts, one `load_params` for all of them, and the training Checkpointer.

Layouts (PATH local or gs://: arrays through orbax/tensorstore, the JSON files through momentor_jax/fileio.py):

| layout           | on disk                                                              | written by         |
|------------------|----------------------------------------------------------------------|--------------------|
| training workdir | WORKDIR/config.json + WORKDIR/checkpoints/<step>/{params, train, data} | `Checkpointer`     |
| step directory   | WORKDIR/checkpoints/<step> (the run's config.json two levels up)     | `Checkpointer`     |
| converted        | PATH/params + PATH/momentor_config.json (+ PATH/tokenizer{/,.model}) | `save_params`      |

A workdir stands for its latest finished step. `params` is an orbax PyTree of plain arrays (no logical-partitioning
boxes), {'vision', 'projector', 'tpm', 'llm'} as in models/momentor.py ('vision' absent when a converted checkpoint
has no CLIP weights, or the run trained on cached features); a run's model config is the `model` section of its
config.json (written by `momentor_jax.train`), a converted one's is momentor_config.json.

    locate(path) -> Located                          which layout, which step (directory listings)
    load_config(path) -> MomentorConfig             any layout (JSON)
    run_config(workdir) -> dict                      a run's config.json
    identity(path) -> {'params_dir', 'saved_at'}     names the weights (answers kept from them must come from them)
    load_params(path, abstract=None) -> params       any layout; reads every weight
    save_params(path, params, config)                writes the converted layout
    Checkpointer(directory, ...)                     a training run's WORKDIR/checkpoints

`load_params` without `abstract` returns host numpy arrays. With `abstract` (jax.ShapeDtypeStruct leaves carrying
shardings) it first compares the saved parameter names and shapes with it (CheckpointMismatch naming the params
directory and the differing keys), then restores onto those shardings, each process reading only its shards; a saved
'vision' group that `abstract` lacks is not read (a model on cached features: the tower is for
data/extract_features.py).

Training items of a step: `params` (trainable and frozen merged, what `load_params` reads), `train` (step, RNG key,
optimizer state) and `data` (each process's data-iterator state, `process_<i>-of-<n>.json`, written and restored by
Grain's own orbax handler, so the iterator must be a Grain iterator). Saves are asynchronous and atomic (orbax writes
into a temporary directory, or on gs:// marks the step with commit_success.txt, when every process is done), so a
crash mid-save leaves the previous step restorable. Restores take abstract targets whose leaves carry the shardings
wanted now, so a step written on one mesh shape loads onto another. A step whose parameter names or shapes differ
from the model's is a config change (CheckpointMismatch, nothing moved), as is a step saved by another number of
processes; a step that cannot be read back (files deleted or truncated by a preemption or a full disk) is damaged:
`restore_latest_intact` renames it to `<step>.damaged` (kept for inspection; orbax ignores the name), says so, and
restores the newest step that reads back whole.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Optional

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from momentor_jax import fileio
from momentor_jax.models.config import MomentorConfig
from momentor_jax.training import resume

PARAMS_DIR, TRAIN_DIR, DATA_DIR = "params", "train", "data"  # the items of a training step
CONFIG_FILE = "momentor_config.json"
TOKENIZER_FILE = "tokenizer.model"
RUN_CONFIG_FILE = resume.CONFIG_FILE  # written by momentor_jax.train
CHECKPOINTS_DIR = "checkpoints"


class CheckpointMismatch(ValueError):
    """Saved parameter names or shapes (or process count) that differ from the run's: a config change, not damage."""


# ------------------------------------------------------------------------------------------------- the layouts
@dataclasses.dataclass(frozen=True)
class Located:
    kind: str                 # "run" or "converted"
    workdir: Optional[str]    # the run's workdir (kind "run")
    params_dir: str           # the directory holding params/ (a step directory, or the converted checkpoint)
    step: Optional[int]       # the step (kind "run")


def _absolute(path: str) -> str:
    """orbax finds no metadata under a relative directory and refuses to save under one: absolute paths."""
    path = os.fspath(path)
    return path.rstrip("/") if fileio.is_remote(path) else os.path.abspath(path)


def _split(path: str) -> tuple[str, str]:
    return tuple(path.rsplit("/", 1)) if fileio.is_remote(path) else os.path.split(path)


def _finished(step_dir: str) -> bool:
    if not fileio.isdir(fileio.join(step_dir, PARAMS_DIR)):
        return False
    if not fileio.is_remote(step_dir):  # locally an unfinished step still has orbax's temporary name
        return True
    return ocp.path.step.is_path_finalized(step_dir)  # on gs:// orbax writes in place and marks the end


def locate(path: str) -> Located:
    """Which of the three layouts `path` is; FileNotFoundError naming it otherwise."""
    path = _absolute(path)
    fileio.configure_for(path)
    if not fileio.isdir(path):
        fileio.check_bucket(path)
        raise FileNotFoundError(f"checkpoint {path}: no such directory")
    checkpoints = fileio.join(path, CHECKPOINTS_DIR)
    if fileio.isdir(checkpoints):
        steps = sorted(int(name) for name in fileio.listdir(checkpoints) if name.isdigit())
        finished = [step for step in steps if _finished(fileio.join(checkpoints, str(step)))]
        if not finished:
            raise FileNotFoundError(f"checkpoint {path}: training workdir without a finished checkpoint")
        return Located("run", path, fileio.join(checkpoints, str(finished[-1])), finished[-1])
    if fileio.exists(fileio.join(path, CONFIG_FILE)):
        return Located("converted", None, path, None)
    parent, name = _split(path)
    if _split(parent)[1] == CHECKPOINTS_DIR and name.isdigit() and _finished(path):
        return Located("run", _split(parent)[0], path, int(name))
    raise FileNotFoundError(f"checkpoint {path}: neither a training workdir, a step directory "
                            f"(WORKDIR/{CHECKPOINTS_DIR}/<step>) nor a converted checkpoint ({CONFIG_FILE})")


def run_config(workdir: str) -> dict:
    """A run's config.json (with a 'model' section); ValueError naming the file otherwise."""
    config_path = fileio.join(workdir, RUN_CONFIG_FILE)
    try:
        config = json.loads(fileio.read_text(config_path))
        config["model"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{config_path}: cannot read the run's config with a 'model' section ({e})") from e
    return config


def load_config(path: str) -> MomentorConfig:
    """The model config of a checkpoint in any layout."""
    located = locate(path)
    if located.kind == "run":
        return MomentorConfig.from_dict(run_config(located.workdir)["model"])
    return MomentorConfig.from_dict(json.loads(fileio.read_text(fileio.join(located.params_dir, CONFIG_FILE))))


def identity(path: str) -> dict:
    """What names the weights a checkpoint holds: {'params_dir', 'saved_at'} (orbax's commit timestamp, when it wrote
    one), so that answers kept from a checkpoint are not mixed with those of another written to the same path."""
    located = locate(path)
    # orbax records it with the step in a training run, with the params item in a converted checkpoint.
    where = located.params_dir if located.kind == "run" else fileio.join(located.params_dir, PARAMS_DIR)
    saved_at = None
    try:
        metadata = json.loads(fileio.read_text(fileio.join(where, "_CHECKPOINT_METADATA")))
        saved_at = metadata.get("commit_timestamp_nsecs")
    except (OSError, ValueError, AttributeError):
        pass
    return {"params_dir": located.params_dir, "saved_at": saved_at}


# ------------------------------------------------------------------------------------------------- parameters
def save_params(path: str, params: Any, config: MomentorConfig) -> None:
    """Writes the converted layout: `params` (numpy or jax arrays) and the config JSON under `path` (created; must
    not hold params yet)."""
    path = _absolute(path)
    fileio.configure_for(path)
    fileio.makedirs(path)
    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save(fileio.join(path, PARAMS_DIR), jax.tree.map(np.asarray, params))
    fileio.write_text(fileio.join(path, CONFIG_FILE), json.dumps(config.to_dict(), indent=2, sort_keys=True))


def load_params(path: str, abstract: Any = None) -> Any:
    """The parameters of a checkpoint in any layout (see the module docstring for `abstract`)."""
    params_path = fileio.join(locate(path).params_dir, PARAMS_DIR)
    saved = _saved_tree(params_path)
    if abstract is None:
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved)
        args = ocp.args.PyTreeRestore(restore_args=restore_args)
    else:
        skip_vision = "vision" in saved and "vision" not in abstract
        if skip_vision:
            saved = {k: v for k, v in saved.items() if k != "vision"}
        check_same_tree(saved, abstract, params_path)
        args = ocp.args.PyTreeRestore(item=abstract, partial_restore=skip_vision,
                                      restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
    with ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.restore(params_path, args=args)


def _saved_tree(params_path: str) -> Any:
    """The saved parameters' metadata tree (names, shapes); FileNotFoundError when there is none (damage)."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        tree = handler.metadata(epath.Path(params_path)).tree
    finally:
        handler.close()
    if not jax.tree.leaves(tree):
        raise FileNotFoundError(f"{params_path}: no parameter metadata")
    return tree


def check_same_tree(saved: Any, expected: Any, source: str) -> None:
    """Raises CheckpointMismatch naming `source` and the parameter names / shapes that differ (first five of each)."""
    saved, expected = _flat(saved), _flat(expected)
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise CheckpointMismatch(f"{source}: parameter names differ from the model: missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]} ({len(missing)} missing, {len(unexpected)} unexpected)")
    shapes = [f"{name} has shape {tuple(saved[name].shape)}, the model wants {tuple(target.shape)}"
              for name, target in expected.items() if tuple(saved[name].shape) != tuple(target.shape)]
    if shapes:
        more = f" (and {len(shapes) - 5} more)" if len(shapes) > 5 else ""
        raise CheckpointMismatch(f"{source}: parameter {'; '.join(shapes[:5])}{more}")


def _flat(tree: Any) -> dict:
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ------------------------------------------------------------------------------------------- training Checkpointer
@dataclasses.dataclass
class Restored:
    step: int
    params: Any
    train: Any


class Checkpointer:
    """A training run's WORKDIR/checkpoints. Every process calls every method (orbax synchronizes the processes)."""

    def __init__(self, directory: str, *, save_every_steps: int, keep: Optional[int] = None,
                 async_save: bool = True):
        if jax.default_backend() == "cpu":  # replica-parallel saving only adds a slice compile per array shape
            ocp.type_handlers.register_type_handler(
                jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
        fileio.configure_for(directory)
        self.directory = epath.Path(_absolute(directory))
        self.save_every_steps = max(int(save_every_steps), 1)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=self.save_every_steps,
            max_to_keep=keep if keep and keep > 0 else None,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # leftovers of a save that was killed midway
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={PARAMS_DIR: ocp.StandardCheckpointHandler(), TRAIN_DIR: ocp.StandardCheckpointHandler(),
                           DATA_DIR: grain.checkpoint.CheckpointHandler()})

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        """True every `save_every_steps` steps (orbax's own policy would also save the very first step)."""
        return step % self.save_every_steps == 0

    def reached_preemption(self, step: int) -> bool:
        """JAX's preemption sync point (multi-process runs): every process sees True at the same step."""
        return jax.process_count() > 1 and self.manager.reached_preemption(step)

    def save(self, step: int, params: Any, train: Any, data_iterator: Any, *, force: bool = False) -> bool:
        """Starts an asynchronous save (the iterator's state is taken before it returns); returns whether it did."""
        saved = self.manager.save(step, force=force, args=ocp.args.Composite(**{
            PARAMS_DIR: ocp.args.StandardSave(params),
            TRAIN_DIR: ocp.args.StandardSave(train),
            DATA_DIR: grain.checkpoint.CheckpointSave(data_iterator),
        }))
        if saved:
            logging.info("checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def restore(self, step: int, abstract_params: Any, abstract_train: Any, data_iterator: Any) -> Restored:
        """Restores params and train state onto the shardings of the abstract targets (jax.ShapeDtypeStruct leaves)
        and sets `data_iterator` to its saved state, after checking that the step was saved for this model and this
        process count (CheckpointMismatch) and has parameter metadata (FileNotFoundError: damage)."""
        step_dir = self.directory / str(step)
        check_same_tree(_saved_tree(str(step_dir / PARAMS_DIR)), abstract_params, f"checkpoint {step_dir}")
        data_dir = step_dir / DATA_DIR
        data_file = data_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"  # Grain's name
        if not data_file.exists() and data_dir.exists():
            found = sorted(p.name for p in data_dir.iterdir() if p.name.startswith("process_"))
            raise CheckpointMismatch(f"{data_file}: no data-iterator state for this process (found {found}); "
                                     "resuming needs the same number of processes as the run that saved it")
        out = self.manager.restore(step, args=ocp.args.Composite(**{
            PARAMS_DIR: ocp.args.StandardRestore(abstract_params),
            TRAIN_DIR: ocp.args.StandardRestore(abstract_train),
            DATA_DIR: grain.checkpoint.CheckpointRestore(data_iterator),
        }))
        return Restored(step=step, params=out[PARAMS_DIR], train=out[TRAIN_DIR])

    def set_aside(self, step: int) -> str:
        """Renames a damaged step to `<step>.damaged` (`.damaged-2`, ... if taken); returns the new path."""
        source = self.directory / str(step)
        target, n = self.directory / f"{step}.damaged", 1
        while target.exists():
            n += 1
            target = self.directory / f"{step}.damaged-{n}"
        if jax.process_index() == 0:
            source.rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # noqa: PLC0415
            multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
        self.manager.reload()
        return str(target)

    def restore_latest_intact(self, abstract_params: Any, abstract_train: Any, data_iterator: Any,
                              log: Callable[[str], None] = logging.warning) -> Optional[Restored]:
        """`restore` of the newest step that restores whole, setting damaged newer ones aside; None when there is no
        step. A CheckpointMismatch is raised as is (a config change, not damage: nothing is moved)."""
        damaged = []
        while True:
            step = self.manager.latest_step()
            if step is None:
                if damaged:
                    raise ValueError(f"{self.directory}: no intact checkpoint; damaged steps set aside: "
                                     f"{', '.join(damaged)} (rerun to start from scratch, or restore them)")
                return None
            try:
                return self.restore(step, abstract_params, abstract_train, data_iterator)
            except CheckpointMismatch:
                raise
            except Exception as e:  # noqa: BLE001 (orbax / tensorstore raise many types on missing data)
                reason = e
            first_line = (str(reason).strip().splitlines() or [""])[0][:300]
            moved = self.set_aside(step)
            damaged.append(moved)
            log(f"checkpoint step {step} is damaged ({type(reason).__name__}: {first_line}); set aside as {moved}; "
                "trying the previous step")

    def close(self) -> None:
        """Waits for the save in flight (if any) to be on disk, then releases orbax's threads."""
        self.manager.wait_until_finished()
        self.manager.close()
