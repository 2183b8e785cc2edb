"""Orbax checkpoints of the training run: WORKDIR/checkpoints/<step>/{params, train, data}.

- `params`: the full parameter tree (trainable and frozen merged), restorable on its own (warm starts, inference).
- `train`: step, RNG key and optimizer state.
- `data`: each process's data-iterator state (one JSON file per process), so a resumed run sees the same batches.

Saves are asynchronous and atomic (orbax writes into a temporary directory and renames it when every process is
done), so a crash mid-save leaves the previous step restorable. Restoring takes an abstract target whose leaves carry
the shardings wanted now, so a checkpoint written on one mesh shape loads onto another.

Before a restore, the saved parameter names and shapes are compared with the model's (ValueError naming the first
parameter that differs: a config change, not damage). A step that cannot be read back (files deleted or truncated,
e.g. by a preemption or a full disk) is damaged: `restore_latest_intact` renames it to `<step>.damaged` (kept for
inspection; orbax ignores the name), says so, and restores the newest step that reads back whole.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from momentor_jax import fileio

PARAMS, TRAIN, DATA = "params", "train", "data"


class ParameterMismatch(ValueError):
    """Saved parameter names or shapes that differ from the model's (a config change, not damage)."""


# --------------------------------------------------------------------------------------------- data iterator state
class DataStateHandler(ocp.CheckpointHandler):
    """Per-process data-iterator state: `process_<i>-of-<n>.json` in the item directory, written by every process.

    Holds whatever `iterator.get_state()` returned: bytes (grain DataLoader) or a JSON-able dict (grain Dataset).
    """

    def save(self, directory: epath.Path, args: "DataStateSave") -> None:
        state = args.state
        if isinstance(state, (bytes, bytearray)):
            record = {"encoding": "base64", "state": base64.b64encode(bytes(state)).decode("ascii")}
        else:
            record = {"encoding": "json", "state": state}
        _process_file(directory).write_text(json.dumps(record))

    def restore(self, directory: epath.Path, args: Optional["DataStateRestore"] = None) -> Any:
        path = _process_file(directory)
        if not path.exists():
            found = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
            raise FileNotFoundError(f"{path}: no data-iterator state for this process (found {found}); "
                                    "resuming needs the same number of processes as the run that saved it")
        record = json.loads(path.read_text())
        if record.get("encoding") == "base64":
            return base64.b64decode(record["state"])
        return record["state"]

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass


def _process_file(directory: epath.Path) -> epath.Path:
    return epath.Path(directory) / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


# ----------------------------------------------------------------------------------------------- the manager
@dataclasses.dataclass
class Restored:
    step: int
    params: Any
    train: Any
    data_state: Any


def _plain_transfers_on_cpu() -> None:
    """On CPU, orbax's replica-parallel saving only adds a slice compile per array shape to the first save."""
    if jax.default_backend() == "cpu":
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


def _absolute(path: str) -> str:
    """orbax finds no metadata under a relative directory and refuses to save under one: absolute paths."""
    return path if fileio.is_remote(path) else os.path.abspath(path)


class Checkpointer:
    """Every process calls every method (orbax synchronizes the processes internally)."""

    def __init__(self, directory: str, *, save_every_steps: int, keep: Optional[int] = None,
                 async_save: bool = True):
        _plain_transfers_on_cpu()
        fileio.configure_for(directory)  # local or gs:// (orbax: tensorstore for arrays, etils.epath for the rest)
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
            item_handlers={PARAMS: ocp.StandardCheckpointHandler(), TRAIN: ocp.StandardCheckpointHandler(),
                           DATA: DataStateHandler()})

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        """True every `save_every_steps` steps (orbax's own policy would also save the very first step)."""
        return step % self.save_every_steps == 0

    def reached_preemption(self, step: int) -> bool:
        """JAX's preemption sync point (multi-process runs): every process sees True at the same step."""
        return jax.process_count() > 1 and self.manager.reached_preemption(step)

    def save(self, step: int, params: Any, train: Any, data_state: Any, *, force: bool = False) -> bool:
        """Starts an asynchronous save; returns whether one was started."""
        args = ocp.args.Composite(**{
            PARAMS: ocp.args.StandardSave(params),
            TRAIN: ocp.args.StandardSave(train),
            DATA: DataStateSave(data_state),
        })
        saved = self.manager.save(step, args=args, force=force)
        if saved:
            logging.info("checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def restore(self, step: int, abstract_params: Any, abstract_train: Any) -> Restored:
        """Restores every item onto the shardings carried by the abstract targets (jax.ShapeDtypeStruct leaves)."""
        args = ocp.args.Composite(**{
            PARAMS: ocp.args.StandardRestore(abstract_params),
            TRAIN: ocp.args.StandardRestore(abstract_train),
            DATA: DataStateRestore(),
        })
        out = self.manager.restore(step, args=args)
        return Restored(step=step, params=out[PARAMS], train=out[TRAIN], data_state=out[DATA])

    def check_params(self, step: int, abstract_params: Any) -> None:
        """ValueError naming the first parameter whose name or shape differs between step and model."""
        metadata = self.manager.item_metadata(step)[PARAMS]
        saved = metadata.tree if hasattr(metadata, "tree") else metadata
        if not jax.tree_util.tree_leaves(saved):  # no metadata at all: damage, not another model
            raise FileNotFoundError(f"{self.directory / str(step) / PARAMS}: no parameter metadata")
        check_same_tree(saved, abstract_params, f"checkpoint {self.directory / str(step)}")

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

    def restore_latest_intact(self, abstract_params: Any, abstract_train: Any,
                              log: Callable[[str], None] = logging.warning) -> Optional[Restored]:
        """The newest step that restores whole, setting damaged newer ones aside; None when there is no step.
        A parameter name or shape that differs from the model raises ValueError (not damage: nothing is moved)."""
        damaged = []
        while True:
            step = self.latest_step()
            if step is None:
                if damaged:
                    raise ValueError(f"{self.directory}: no intact checkpoint; damaged steps set aside: "
                                     f"{', '.join(damaged)} (rerun to start from scratch, or restore them)")
                return None
            try:
                self.check_params(step, abstract_params)
            except ParameterMismatch:
                raise
            except Exception as e:  # noqa: BLE001 (unreadable metadata: the step is damaged)
                reason = e
            else:
                try:
                    return self.restore(step, abstract_params, abstract_train)
                except Exception as e:  # noqa: BLE001 (orbax / tensorstore raise many types on missing data)
                    reason = e
            first_line = (str(reason).strip().splitlines() or [""])[0][:300]
            moved = self.set_aside(step)
            damaged.append(moved)
            log(f"checkpoint step {step} is damaged ({type(reason).__name__}: {first_line}); set aside as {moved}; "
                "trying the previous step")

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        args = ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(abstract_params)})
        return self.manager.restore(step, args=args)[PARAMS]

    def wait(self) -> None:
        """Blocks until the asynchronous save in flight (if any) is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_params_from_workdir(workdir: str, abstract_params: Any, step: Optional[int] = None) -> tuple[Any, int]:
    """Parameters of a previous run (its latest step unless `step`), e.g. the GESM stage for instruction tuning."""
    fileio.configure_for(workdir)
    directory = epath.Path(_absolute(workdir)) / "checkpoints"
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
                                    item_handlers={PARAMS: ocp.StandardCheckpointHandler()})
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no finished checkpoint to warm-start from")
        metadata = manager.item_metadata(step)[PARAMS]
        check_same_tree(metadata.tree if hasattr(metadata, "tree") else metadata, abstract_params,
                        f"init_from {directory / str(step)}")
        args = ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(abstract_params)})
        return manager.restore(step, args=args)[PARAMS], step
    finally:
        manager.close()


def restore_imported_params(path: str, abstract_params: Any) -> Any:
    """Parameters of a `convert import_hf` checkpoint (momentor_jax/checkpoint_io.py layout), each process reading
    only its shards; names and shapes are checked against the model first."""
    from momentor_jax import checkpoint_io  # noqa: PLC0415
    checkpoint_io.load_config(path)  # a clear error when `path` is not an imported checkpoint (and gs:// set up)
    params_path = epath.Path(_absolute(path)) / checkpoint_io.PARAMS_DIR
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(params_path)
        saved = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata
        # A model on cached features has no vision tower: the imported tower is for data/extract_features.py.
        skip_vision = "vision" in saved and "vision" not in abstract_params
        if skip_vision:
            saved = {k: v for k, v in saved.items() if k != "vision"}
        check_same_tree(saved, abstract_params, str(path))
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_params)
        return checkpointer.restore(params_path, args=ocp.args.PyTreeRestore(
            item=abstract_params, restore_args=restore_args, partial_restore=skip_vision))


def check_same_tree(saved: Any, expected: Any, source: str) -> None:
    """Raises ParameterMismatch (a ValueError) naming the first differing parameter names / shapes."""
    saved, expected = _flat(saved), _flat(expected)
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ParameterMismatch(f"{source}: parameter names differ from the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]} ({len(missing)} missing, {len(unexpected)} unexpected)")
    for name, target in expected.items():
        if tuple(saved[name].shape) != tuple(target.shape):
            raise ParameterMismatch(f"{source}: parameter {name} has shape {tuple(saved[name].shape)}, "
                             f"the model wants {tuple(target.shape)}")


def _flat(tree: Any) -> dict:
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def is_run_workdir(path: str) -> bool:
    """True if `path` looks like a training workdir (has a checkpoints/ folder)."""
    return fileio.isdir(fileio.join(path, "checkpoints"))


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStruct leaves (shape and dtype of `tree`, the given shardings): a restore target."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
