"""Which Momentor parameters train, and splitting a parameter tree into (trainable, frozen) parts.

The train step differentiates only the trainable part: `grads = jax.grad(loss)(trainable, frozen, ...)`, then
`merge_params(trainable, frozen)` rebuilds the full tree for `Momentor.apply`.

Modes:
  'momentor'  the paper: projector, TPM tables and the LLM input token embeddings train; the vision tower, the LLM
              layers, the final norm and the LM head stay frozen.
  'all'       everything trains (from-scratch demo, stage 1).
  'all_but_vision'  everything but the vision tower trains (the demo's stage 2 keeps the tower stage 1 trained,
              as the paper keeps CLIP's; the tower then runs forward only).
  'none'      nothing trains (evaluation, sanity runs).
"""
from __future__ import annotations

from typing import Any, Mapping

from flax import traverse_util

MODES = ("momentor", "all", "all_but_vision", "none")

# Top-level submodules of `Momentor` that train in 'momentor' mode, and the name of the LLM input embedding table.
MOMENTOR_TRAINABLE_MODULES = ("projector", "tpm")
LLM_MODULE = "llm"
VISION_MODULE = "vision"
LLM_INPUT_EMBEDDING = "embed_tokens"


def _strip_collection(path: tuple) -> tuple:
    return path[1:] if path and path[0] == "params" else path


def is_trainable(path: tuple, mode: str) -> bool:
    """Whether the parameter at `path` (module names first, e.g. ('llm', 'layers_0', ...)) trains in `mode`."""
    if mode not in MODES:
        raise ValueError(f"unknown trainable mode {mode!r}; choose one of {MODES}")
    if mode == "all":
        return True
    if mode == "none":
        return False
    path = _strip_collection(path)
    if mode == "all_but_vision":
        return path[0] != VISION_MODULE
    if path[0] in MOMENTOR_TRAINABLE_MODULES:
        return True
    return path[0] == LLM_MODULE and LLM_INPUT_EMBEDDING in path[1:]


def trainable_mask(params: Mapping, mode: str) -> dict:
    """Nested dict shaped like `params` with a bool per leaf (a leaf may be a flax `LogicallyPartitioned` box)."""
    flat = traverse_util.flatten_dict(params)
    mask = {path: is_trainable(path, mode) for path in flat}
    if mode == "momentor":
        has_llm = any(_strip_collection(path)[0] == LLM_MODULE for path in flat)
        has_embedding = any(mask[path] for path in flat if _strip_collection(path)[0] == LLM_MODULE)
        if has_llm and not has_embedding:
            raise ValueError(f"mode 'momentor': no '{LLM_INPUT_EMBEDDING}' parameter found under '{LLM_MODULE}'")
    return traverse_util.unflatten_dict(mask)


def split_params(params: Mapping, mask: Mapping) -> tuple[dict, dict]:
    """(trainable, frozen): two nested dicts holding only the leaves where `mask` is True / False."""
    flat_params = traverse_util.flatten_dict(params)
    flat_mask = traverse_util.flatten_dict(mask)
    if set(flat_params) != set(flat_mask):
        missing = sorted(set(flat_params) ^ set(flat_mask))[:3]
        raise ValueError(f"trainable mask does not match the parameter tree (e.g. {missing})")
    trainable = {path: leaf for path, leaf in flat_params.items() if flat_mask[path]}
    frozen = {path: leaf for path, leaf in flat_params.items() if not flat_mask[path]}
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge_params(trainable: Mapping, frozen: Mapping) -> dict:
    """Inverse of `split_params`."""
    flat: dict[tuple, Any] = dict(traverse_util.flatten_dict(frozen))
    for path, leaf in traverse_util.flatten_dict(trainable).items():
        if path in flat:
            raise ValueError(f"parameter {'/'.join(map(str, path))} is both trainable and frozen")
        flat[path] = leaf
    return traverse_util.unflatten_dict(flat)
