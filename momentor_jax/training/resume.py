"""What must not change when a training workdir resumes, and the check that refuses a resume that changed it.

WORKDIR/config.json (written by `momentor_jax.train` on every start) is the run's config as JSON plus
`run_identity`: facts the config alone does not pin, today the sha256 of the tokenizer's sentencepiece model (two
tokenizers with one vocabulary size map text to different ids). When WORKDIR already holds a checkpoint, the new
config and identity are compared with the recorded ones first; a difference in any of RESUME_KEYS raises ValueError
naming every field that differs, its old and its new value. Keys outside the list (learning rate, total_steps,
logging, mesh, paths) may change between restarts.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from momentor_jax import fileio

CONFIG_FILE = "config.json"
IDENTITY_KEY = "run_identity"
# The data order and its iterator state depend on these; the parameters' shapes and meaning on these.
RESUME_KEYS = ("variant", "batch_size", "grad_accum_steps", "seed", "max_length", "num_frames", "trainable", "model")


def has_checkpoint(workdir: str) -> bool:
    """True when WORKDIR/checkpoints holds a step directory (a resume, not a fresh start)."""
    directory = fileio.join(workdir, "checkpoints")
    return fileio.isdir(directory) and any(name.isdigit() for name in fileio.listdir(directory))


def tokenizer_sha256(tokenizer_path: str) -> Optional[str]:
    """sha256 of the sentencepiece model behind a tokenizer directory or .model file (None if there is none)."""
    from momentor_jax.data.tokenizer import MODEL_FILENAME  # noqa: PLC0415
    model = fileio.join(tokenizer_path, MODEL_FILENAME) if fileio.isdir(tokenizer_path) else tokenizer_path
    return hashlib.sha256(fileio.read_bytes(model)).hexdigest() if fileio.isfile(model) else None


def _flat(value: Any, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, inner in value.items():
            out.update(_flat(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def differences(previous: dict, current: dict, identity: dict) -> list:
    """["field: old -> new", ...] over RESUME_KEYS and the identity (fields missing from `previous` are skipped)."""
    old, new = {}, {}
    for key in RESUME_KEYS:
        if key in previous:
            old.update(_flat(previous[key], key))
            new.update(_flat(current.get(key), key))
    recorded = previous.get(IDENTITY_KEY) or {}
    for key, value in identity.items():
        if key in recorded:
            old[key], new[key] = recorded[key], value
    return [f"{key}: {old[key]!r} -> {new.get(key)!r}" for key in sorted(old) if old[key] != new.get(key)]


def check_resume(workdir: str, current: dict, identity: dict) -> None:
    """ValueError when WORKDIR has a checkpoint and its config.json records other values for RESUME_KEYS."""
    if not has_checkpoint(workdir):
        return
    path = fileio.join(workdir, CONFIG_FILE)
    if not fileio.exists(path):
        return
    try:
        previous = json.loads(fileio.read_text(path))
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: unreadable ({e}); it records the run this workdir's checkpoints belong to") from None
    if not isinstance(previous, dict):
        raise ValueError(f"{path}: not a JSON object; it records the run this workdir's checkpoints belong to")
    changed = differences(previous, current, identity)
    if changed:
        raise ValueError(f"{workdir} holds checkpoints of another run configuration; resuming would mix them: "
                         f"{'; '.join(changed[:8])}{' ...' if len(changed) > 8 else ''} (use a new --workdir, or "
                         "--config.init_from to start from this run's weights)")


def config_json(current: dict, identity: dict) -> str:
    """The text of WORKDIR/config.json: the config plus its run identity."""
    return json.dumps({**current, IDENTITY_KEY: identity}, indent=1, sort_keys=True)
