"""Train Momentor. Re-running the same command on the same workdir resumes from its latest checkpoint.

    python -m momentor_jax.train --config=configs/momentor_7b.py:gesm --workdir=DIR [--config.key=value ...]
    python -m momentor_jax.train --config=configs/tiny.py --workdir=/tmp/tiny       # self-contained

Exit status: 0; 2 when the run cannot start (a config value, a data file, the tokenizer, a checkpoint of another
configuration in the workdir: one line names it); 3 when a step gives a non-finite loss (nothing bad is saved).
Resuming checks WORKDIR/config.json (training/resume.py) and sets a damaged latest checkpoint aside.

Multi-process: every process runs the same command. On Cloud TPU VMs (or with MOMENTOR_DISTRIBUTED=1) JAX finds
its peers itself; for local multi-process runs pass --coordinator_address/--num_processes/--process_id (or the
MOMENTOR_COORDINATOR_ADDRESS / MOMENTOR_NUM_PROCESSES / MOMENTOR_PROCESS_ID environment variables).

With `data.dir` unset and `data.synthetic_videos` > 0 (tiny, demo), the run renders a small synthetic dataset into
WORKDIR/data first: make_synthetic -> convert (GESM and Moment-10M formats) -> extract frames -> sentencepiece.
"""
from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags

from momentor_jax import cli, fileio

_CONFIG = cli.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: checkpoints/, tensorboard/, config.json")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes (multi-process runs)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (multi-process runs)")

READY_MARKER = "READY"
SYNTHETIC_HELDOUT = 2


def prepare_synthetic_data(config, root: str, mark_ready: bool = True) -> str:
    """Renders, converts and extracts a synthetic dataset into the local directory `root` (once; later calls reuse
    it)."""
    from momentor_jax.data import extract, gesm, moment10m, synthetic  # noqa: PLC0415
    from momentor_jax.data import tokenizer as tokenizer_lib  # noqa: PLC0415
    from momentor_jax.models.config import MomentorConfig  # noqa: PLC0415
    from momentor_jax import constants  # noqa: PLC0415

    if os.path.exists(os.path.join(root, READY_MARKER)):
        return root
    model_config = MomentorConfig.from_dict(config.model)
    raw = os.path.join(root, "raw")
    logging.info("preparing %d synthetic videos in %s", config.data.synthetic_videos, root)
    synthetic.make_dataset(raw, config.data.synthetic_videos + SYNTHETIC_HELDOUT, seed=config.seed,
                           num_heldout=SYNTHETIC_HELDOUT)
    examples = {"gesm": os.path.join(root, "gesm_train.jsonl"), "instruct": os.path.join(root, "instruct_train.jsonl")}
    gesm.convert_file(os.path.join(raw, "gesm_train.json"), examples["gesm"], seed=config.seed)
    moment10m.convert_file(os.path.join(raw, "moment10m_train.json"), examples["instruct"], seed=config.seed)
    summary = extract.extract_frames(os.path.join(raw, "videos"), os.path.join(root, "frames"),
                                     num_frames=model_config.num_frames, size=model_config.vision.image_size)
    if summary.failed:
        raise RuntimeError(f"synthetic data: frame extraction failed for {summary.failed[:3]}")

    texts = synthetic.tokenizer_texts(seed=config.seed)
    for path in examples.values():
        with open(path) as f:
            for line in f:
                for turn in json.loads(line)["conversations"]:
                    texts.extend(v for v in turn.values() if v)
    base_vocab = model_config.llm.vocab_size - constants.NUM_ADDED_TOKENS
    model_path = tokenizer_lib.train_sentencepiece(texts, os.path.join(root, "sentencepiece"), vocab_size=base_vocab)
    tokenizer_lib.MomentorTokenizer(model_path, model_config.num_temporal_tokens).save(os.path.join(root, "tokenizer"))
    if mark_ready:
        fileio.write_text(os.path.join(root, READY_MARKER), "ok\n")
    return root


def _resolve_data(config, workdir: str) -> None:
    if config.data.dir or config.data.examples:
        return
    if config.data.synthetic_videos <= 0:
        raise app.UsageError("set --config.data.dir=PREPARED_DATA (or data.examples, data.frames and tokenizer)")
    import jax  # noqa: PLC0415
    from jax.experimental import multihost_utils  # noqa: PLC0415
    root = fileio.join(workdir, "data")
    if jax.process_index() == 0 and not fileio.is_remote(root):
        prepare_synthetic_data(config, root)
    elif jax.process_index() == 0 and not fileio.exists(fileio.join(root, READY_MARKER)):
        import tempfile  # noqa: PLC0415
        with tempfile.TemporaryDirectory(prefix="momentor-synthetic-") as local:  # rendered here, then uploaded
            prepare_synthetic_data(config, local, mark_ready=False)
            fileio.put_tree(local, root)
        fileio.write_text(fileio.join(root, READY_MARKER), "ok\n")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("synthetic data ready")
    config.data.dir = root


EXIT_START = 2


def _fail_start(error: Exception) -> None:
    """A run that cannot start: one line naming the field, file or parameter, exit status 2."""
    logging.error("%s", error)
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(EXIT_START)


def main(argv) -> None:
    if len(argv) > 1:
        raise cli.usage_error(f"unexpected arguments: {argv[1:]}")
    from momentor_jax.training import distributed  # noqa: PLC0415
    distributed.maybe_initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)

    import jax  # noqa: PLC0415
    jax.config.update("jax_threefry_partitionable", True)
    from momentor_jax.training import trainer  # noqa: PLC0415

    from momentor_jax.training import resume  # noqa: PLC0415

    config, workdir = _CONFIG.value, _WORKDIR.value
    fileio.makedirs(workdir)  # local or gs:// (there: the bucket must exist)
    try:
        _resolve_data(config, workdir)
        current = json.loads(config.to_json_best_effort())
        tokenizer_path = trainer.data_paths(config)["tokenizer"]
        identity = {"tokenizer_sha256": resume.tokenizer_sha256(tokenizer_path)}
        resume.check_resume(workdir, current, identity)
    except (ValueError, OSError) as e:
        _fail_start(e)
    if jax.process_index() == 0:
        fileio.write_text(fileio.join(workdir, resume.CONFIG_FILE), resume.config_json(current, identity))
    logging.info("process %d of %d, %d devices (%s)", jax.process_index(), jax.process_count(), jax.device_count(),
                 jax.devices()[0].device_kind)
    try:
        result = trainer.train(config, workdir)
    except trainer.StartupError as e:
        _fail_start(e)
    except trainer.NonFiniteError as e:
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(3)
    status = "stopped early" if result.stopped_early else "done"
    logging.info("%s at step %d; checkpoints in %s", status, result.step, fileio.join(workdir, "checkpoints"))
    print(f"{status} at step {result.step}", flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)
