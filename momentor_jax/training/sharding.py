"""The device mesh and the logical-axis rules that place every named array dimension on it.

Mesh axes (outer to inner): `data` (pure data parallel), `fsdp` (data parallel with parameters and optimizer state
sharded, ZeRO-3 style), `tensor` (Megatron-style model parallel within heads / MLP / vocabulary). Modules annotate
parameters and activations with the shared logical names; the rules below turn those names into mesh axes. A mesh
axis is used at most once per array: where two names ask for the same axis (activations [batch, length, embed]),
the first one wins and the other stays replicated.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_MESH_AXES = ("data", "fsdp")

# In the spirit of MaxText's base.yml: weights' model dimension on fsdp, heads / MLP / vocabulary on tensor.
LOGICAL_AXIS_RULES = (
    ("batch", BATCH_MESH_AXES),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("layers", None),
    ("frames", None),
    ("temporal", None),
    ("vision_embed", "fsdp"),
    ("vision_mlp", "tensor"),
    ("vision_heads", "tensor"),
    ("patches", None),
)


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fills the one -1 entry of a (data, fsdp, tensor) shape so the product equals `num_devices`."""
    shape = tuple(int(s) for s in mesh_shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh must have {len(MESH_AXES)} sizes {MESH_AXES}, got {shape}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh {shape}: sizes must be positive, with at most one -1 (= fill)")
    known = math.prod(s for s in shape if s != -1)
    if num_devices % known:
        raise ValueError(f"mesh {shape} does not divide the {num_devices} available devices")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh {shape} uses {math.prod(shape)} devices but {num_devices} are available")
    return shape


def make_mesh(mesh_shape: Sequence[int], devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all), laid out by jax.make_mesh for the topology.

    Axes are `Auto` so that flax's logical constraints steer the compiler instead of fixing every layout.
    """
    devices = list(jax.devices() if devices is None else devices)
    wanted = math.prod(int(s) for s in mesh_shape)
    if -1 not in tuple(mesh_shape) and 0 < wanted < len(devices) and jax.process_count() == 1:
        # A smaller fully specified mesh (e.g. (1, 1, 1) for a single-device reference run) takes the first devices.
        logging.warning("mesh %s uses %d of the %d devices", tuple(mesh_shape), wanted, len(devices))
        devices = devices[:wanted]
    shape = resolve_mesh_shape(mesh_shape, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def axis_rules(overrides: Optional[Sequence[Sequence[Any]]] = None) -> tuple:
    """The default rules, with `overrides` ((logical, mesh axes) pairs) taking precedence by name."""
    if not overrides:
        return LOGICAL_AXIS_RULES
    overrides = tuple((name, _as_mesh_axes(axes)) for name, axes in overrides)
    overridden = {name for name, _ in overrides}
    return overrides + tuple(rule for rule in LOGICAL_AXIS_RULES if rule[0] not in overridden)


def _as_mesh_axes(axes: Any) -> Any:
    if axes is None or isinstance(axes, str):
        return axes
    return tuple(axes)


def logical_to_shardings(abstract_tree: Any, mesh: Mesh, rules: Sequence) -> Any:
    """NamedShardings for a tree whose leaves may be flax `LogicallyPartitioned` boxes (unannotated: replicated).

    A dimension that its mesh axes do not divide evenly (LLaMA's 32005-row vocabulary on tensor=2) keeps only the
    leading axes that do divide it, or stays replicated: jit does not accept uneven output shardings.
    """
    mesh_specs = nn.logical_to_mesh(nn.get_partition_spec(abstract_tree), rules)

    def to_sharding(path, leaf, spec):
        fitted = fit_spec(spec, leaf.shape, mesh)
        if fitted != spec:
            logging.info("sharding %s %s: %s does not divide evenly, using %s",
                         jax.tree_util.keystr(path, simple=True, separator="/"), leaf.shape, spec, fitted)
        return NamedSharding(mesh, fitted)

    return jax.tree_util.tree_map_with_path(to_sharding, nn.unbox(abstract_tree), mesh_specs)


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """`spec` with each dimension's mesh axes cut to the longest prefix whose size product divides the dimension."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec)):
        names = kept = _names(axes)
        while kept and dim % math.prod(mesh.shape[a] for a in kept):
            kept = kept[:-1]
        fitted.append(axes if kept == names else None if not kept else kept[0] if len(kept) == 1 else kept)
    return PartitionSpec(*fitted)


def _names(axes) -> tuple:
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data and fsdp; every other dimension replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_MESH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[axis] for axis in BATCH_MESH_AXES)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
    """Per-process numpy batch -> global jax.Arrays sharded along the batch dimension.

    Each process passes its own rows (global batch / process count); with one process this is the whole batch.
    """
    sharding = batch_sharding(mesh)
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for key, value in local_batch.items()}


def describe(shardings: Any) -> dict:
    """{'path/to/leaf': 'PartitionSpec(...)'} for logs and tests."""
    flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): str(s.spec) for path, s in flat}
