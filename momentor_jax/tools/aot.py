"""Compile the train step for a Cloud TPU slice ahead of time, on any host, and report whether it fits.

    python -m momentor_jax.tools.aot --config=configs/momentor_7b.py:gesm --topology=v5p-64 [--config.key=value]
    python -m momentor_jax.tools.aot --config=configs/momentor_7b.py:gesm --topology=v5e-256 --find_max_batch

Nothing is allocated: the train state and the batch are `jax.eval_shape` abstractions, the devices are libtpu's
compile-only description of the slice (`jax.experimental.topologies.get_topology_desc`), and XLA's TPU compiler
plans every buffer. Prints per-chip memory (arguments, outputs, temporaries, generated code, total vs HBM), the
model FLOPs of one step and the mesh; exits 1 when the step does not fit. `--find_max_batch` binary-searches the
largest global batch (a multiple of the data-parallel size) that compiles and fits. Figures for 7B: docs/aot_7b.md.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Any, Optional

if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host's own devices are not used; read when jax imports

import jax  # noqa: E402

GiB = 1024 ** 3

# generation: (libtpu's name in topology strings, torus dims, HBM per chip, TensorCores per chip as counted in
# the accelerator type: 'v5p-64' is 64 TensorCores = 32 chips; 'v5e-256' is 256 chips)
_GENERATIONS = {
    "v4": ("v4", 3, 32 * GiB, 2),
    "v5p": ("v5", 3, 95 * GiB, 2),
    "v5e": ("v5e", 2, 16 * GiB, 1),
    "v6e": ("v6e", 2, 32 * GiB, 1),
}
_ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class TpuTarget:
    """A TPU slice as libtpu's compile-only topology wants it."""
    name: str                        # accelerator type as given, e.g. 'v5p-64'
    generation: str                  # 'v4', 'v5p', 'v5e', 'v6e'
    topology_name: str               # e.g. 'v5:2x4x4'
    chip_config_name: str            # 'megacore' (v4 / v5p: both TensorCores as one device) or 'default'
    chips: int
    hbm_bytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.topology_name.split(":")[1].split("x"))

    @property
    def wrap(self) -> tuple[bool, bool, bool]:
        """Torus links: v4 / v5p slices of whole 4x4x4 cubes; v5e / v6e along a full 16-chip side."""
        dims = self.shape
        if len(dims) == 3:
            full = all(d % 4 == 0 for d in dims)
            return (full, full, full)
        return (dims[0] == 16, dims[1] == 16, False)


def slice_shape(chips: int, dims: int) -> tuple[int, ...]:
    """Chip grid of a standard slice: from 2x2(x1), double the last of the smallest sides until it holds `chips`.

    Gives v5e 2x4, 4x4, 4x8, 8x8, 8x16, 16x16 and v4 / v5p 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, 4x8x8, 8x8x8.
    """
    if chips == 1:
        return (1,) * dims
    if chips < 4 or chips & (chips - 1):
        raise ValueError(f"{chips} chips: expected 1 or a power of two >= 4")
    shape = [2, 2] + [1] * (dims - 2)
    while math.prod(shape) < chips:
        smallest = min(shape)
        i = max(j for j, s in enumerate(shape) if s == smallest)
        shape[i] *= 2
    return tuple(shape)


def parse_topology(name: str) -> TpuTarget:
    """'v5p-64' (TensorCores for v4 / v5p, chips for v5e / v6e; 'v5litepod-N' = 'v5e-N') -> TpuTarget."""
    generation, _, count = name.strip().partition("-")
    generation = _ALIASES.get(generation, generation)
    if generation not in _GENERATIONS or not count.isdigit() or int(count) == 0:
        raise ValueError(f"--topology={name!r}: expected <generation>-<size> with generation in "
                         f"{sorted(_GENERATIONS)}, e.g. v5p-64, v5e-256, v4-128, v6e-8")
    libtpu_name, dims, hbm, cores_per_device = _GENERATIONS[generation]
    if int(count) % cores_per_device:
        raise ValueError(f"--topology={name!r}: {generation} sizes count TensorCores, {cores_per_device} per chip")
    chips = int(count) // cores_per_device
    try:
        shape = slice_shape(chips, dims)
    except ValueError as e:
        raise ValueError(f"--topology={name!r}: {e}") from None
    return TpuTarget(name=name, generation=generation, topology_name=f"{libtpu_name}:{'x'.join(map(str, shape))}",
                     chip_config_name="megacore" if cores_per_device == 2 else "default", chips=chips,
                     hbm_bytes=hbm)


def prepare_libtpu_environment(target: TpuTarget) -> None:
    """Settings that let libtpu describe a slice on a host without TPUs (call before the first libtpu use).

    Several processes may compile at once (the test suite, parallel searches): skip libtpu's single-user lock.
    The worker variables only silence libtpu's host probing; they do not change what is compiled.
    """
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_WORKER_ID", "0")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", target.name.replace("v5e-", "v5litepod-"))


def topology_devices(target: TpuTarget) -> list:
    """libtpu's compile-only devices for the slice (one per chip)."""
    prepare_libtpu_environment(target)
    from jax.experimental import topologies  # noqa: PLC0415
    hosts = (2, 2, 1) if target.chips >= 4 else (1, 1, 1)
    topology = topologies.get_topology_desc(
        topology_name=target.topology_name, platform="tpu", chip_config_name=target.chip_config_name,
        chips_per_host_bounds=hosts, num_slices=1, wrap=target.wrap)
    devices = list(topology.devices)
    if len(devices) != target.chips:
        raise RuntimeError(f"libtpu described {len(devices)} devices for {target.topology_name}, "
                           f"expected {target.chips}")
    return devices


# ------------------------------------------------------------------------------------------- the train step
@dataclasses.dataclass
class CompiledStep:
    compiled: Any                    # jax.stages.Compiled
    mesh_shape: dict                 # {'data': .., 'fsdp': .., 'tensor': ..}
    batch_size: int
    max_length: int
    num_params: int
    num_trainable: int
    model_flops_per_step: float      # analytic (training/flops.training_flops_per_example x batch)


def abstract_batch(model_config, batch_size: int, max_length: int, sharding, videos_per_row: int = 0) -> dict:
    """ShapeDtypeStructs of one global batch, built from a 1-row example (no full-size allocation); packed rows
    (videos_per_row > 0) carry that many video slots per row."""
    from momentor_jax.models import momentor  # noqa: PLC0415
    one = momentor.example_batch(model_config, 1, max_length, videos_per_row=videos_per_row)
    return {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype, sharding=sharding)
            for k, v in one.items()}


def lower_train_step(config, devices: list, batch_size: Optional[int] = None):
    """(jax.stages.Lowered, CompiledStep fields but `compiled`) for `config` on a mesh over `devices`.

    The step is trainer.build_train_step's, lowered inside its mesh context, so what compiles here is what the
    trainer runs.
    """
    from momentor_jax.models.config import MomentorConfig  # noqa: PLC0415
    from momentor_jax.training import flops, sharding, trainer  # noqa: PLC0415

    batch_size = int(batch_size or config.batch_size)
    max_length = int(config.max_length)
    model_config = MomentorConfig.from_dict(config.model)
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    trainer.check_config(_with_batch_size(config, batch_size), model_config, mesh)
    total_steps = config.total_steps if config.total_steps > 0 else 1000  # only shapes the schedule constants
    videos = trainer.videos_per_row(config)
    init_batch = abstract_batch(model_config, 1, max_length, None, videos)
    step = trainer.build_train_step(config, model_config, mesh, total_steps, init_batch=init_batch)
    factory = step.factory
    batch = abstract_batch(model_config, batch_size, max_length, sharding.batch_sharding(mesh), videos)
    with step.mesh_context():
        lowered = step.jitted.lower(factory.abstract, batch)
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))  # noqa: E731
    info = dict(mesh_shape=dict(mesh.shape), batch_size=batch_size, max_length=max_length,
                num_params=count(factory.abstract.trainable) + count(factory.abstract.frozen),
                num_trainable=count(factory.abstract.trainable),
                model_flops_per_step=batch_size * flops.training_flops_per_example(
                    model_config, max_length, config.trainable, max(videos, 1)))
    return lowered, info


def _with_batch_size(config, batch_size: int):
    config = config.copy_and_resolve_references()
    config.batch_size = batch_size
    return config


def compile_for_devices(config, devices: list, batch_size: Optional[int] = None) -> CompiledStep:
    """The train step of `config` compiled ahead of time for `devices` (e.g. a TPU topology's, on this host)."""
    lowered, info = lower_train_step(config, devices, batch_size)
    return CompiledStep(compiled=lowered.compile(), **info)


# ------------------------------------------------------------------------------------------------ reporting
@dataclasses.dataclass
class MemoryReport:
    arguments: int
    outputs: int
    aliased: int                      # outputs that reuse donated argument buffers
    temporaries: int
    generated_code: int
    hbm: int

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.generated_code

    @property
    def fits(self) -> bool:
        return self.total <= self.hbm


def memory_report(compiled, hbm_bytes: int) -> MemoryReport:
    stats = compiled.memory_analysis()
    return MemoryReport(arguments=stats.argument_size_in_bytes, outputs=stats.output_size_in_bytes,
                        aliased=stats.alias_size_in_bytes, temporaries=stats.temp_size_in_bytes,
                        generated_code=stats.generated_code_size_in_bytes, hbm=hbm_bytes)


def _gib(n: float) -> str:
    """Bytes as GiB, or as MiB below 1 GiB so small programs do not read as zero."""
    return f"{n / GiB:8.2f} GiB" if n >= GiB else f"{n / 2**20:8.2f} MiB"


def format_report(target: TpuTarget, step: CompiledStep, memory: MemoryReport, config) -> str:
    lines = [
        f"topology        {target.name} ({target.topology_name}, {target.chips} chips, "
        f"{target.hbm_bytes // GiB} GiB HBM each)",
        f"mesh            {step.mesh_shape}",
        f"batch           global {step.batch_size} x {step.max_length} tokens, "
        f"grad_accum_steps {config.grad_accum_steps}, remat {config.remat_policy!r}",
        f"parameters      {step.num_params:,} ({step.num_trainable:,} trainable)",
        "per-chip memory",
        f"  arguments     {_gib(memory.arguments)}",
        f"  outputs       {_gib(memory.outputs)}  ({_gib(memory.aliased).strip()} aliased to donated arguments)",
        f"  temporaries   {_gib(memory.temporaries)}",
        f"  generated code{_gib(memory.generated_code)}",
        f"  total         {_gib(memory.total)} of {_gib(memory.hbm).strip()} "
        f"({100 * memory.total / memory.hbm:.0f}%) -> {'fits' if memory.fits else 'DOES NOT FIT'}",
        # XLA's cost analysis counts a scanned layer loop once, so it is no measure of a step: analytic only.
        f"model FLOPs     {step.model_flops_per_step:.4g} per step "
        f"({step.model_flops_per_step / target.chips:.4g} per chip; analytic, remat recomputation not counted)",
    ]
    return "\n".join(lines)


def _is_oom(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "out of memory" in text.lower()


def try_compile(config, devices, target: TpuTarget, batch_size: int) -> tuple[Optional[CompiledStep],
                                                                            Optional[MemoryReport], str]:
    """(step, memory, '') when it compiles; (None, None, reason) when XLA reports it out of memory."""
    try:
        step = compile_for_devices(config, devices, batch_size)
    except Exception as e:  # noqa: BLE001 - only out-of-memory is an answer; anything else is a bug to raise
        if _is_oom(e):
            return None, None, str(e).strip().splitlines()[0][:300]
        raise
    return step, memory_report(step.compiled, target.hbm_bytes), ""


def find_max_batch(config, devices, target: TpuTarget, limit: int, log=print) -> tuple[int, Optional[tuple]]:
    """Largest global batch, a multiple of the data-parallel size (x grad_accum_steps), that compiles and fits.

    Doubles from one row per data-parallel shard until it fails (or passes `limit`), then bisects.
    Returns (batch, (step, memory)) or (0, None) when not even the smallest batch fits.
    """
    from momentor_jax.training import sharding  # noqa: PLC0415
    unit = sharding.data_parallel_size(sharding.make_mesh(config.mesh, devices=devices)) * config.grad_accum_steps

    tried: dict[int, bool] = {}
    best: dict[int, tuple] = {}  # only the largest fitting compile is kept (executables are large)

    def fits(multiple: int) -> bool:
        if multiple not in tried:
            start = time.perf_counter()
            step, memory, reason = try_compile(config, devices, target, multiple * unit)
            tried[multiple] = step is not None and memory.fits
            if tried[multiple] and multiple > max(best, default=0):
                best.clear()
                best[multiple] = (step, memory)
            detail = _gib(memory.total).strip() if memory else f"compile OOM: {reason}"
            log(f"  batch {multiple * unit:6d}: {'fits' if tried[multiple] else 'does not fit'} ({detail}, "
                f"{time.perf_counter() - start:.0f} s)")
        return tried[multiple]

    if not fits(1):
        return 0, None
    low, high = 1, 2
    while high * unit <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit // unit + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low * unit, best[low]


def main(argv) -> int:
    from absl import flags  # noqa: PLC0415
    del argv
    FLAGS = flags.FLAGS
    config = FLAGS.config
    target = parse_topology(FLAGS.topology)
    if FLAGS.hbm_gib:
        target = dataclasses.replace(target, hbm_bytes=int(FLAGS.hbm_gib * GiB))
    devices = topology_devices(target)
    print(f"compiling the train step for {target.name}: {len(devices)} x {devices[0].device_kind}", flush=True)
    if FLAGS.find_max_batch:
        best, found = find_max_batch(config, devices, target, FLAGS.max_batch_limit)
        if not found:
            print(f"no batch fits on {target.name}")
            return 1
        step, memory = found
        print(f"largest global batch that fits on {target.name}: {best}")
        print(format_report(target, step, memory, config))
        return 0
    start = time.perf_counter()
    step, memory, reason = try_compile(config, devices, target, config.batch_size)
    if step is None:
        print(f"does not fit on {target.name}: {reason}")
        return 1
    print(format_report(target, step, memory, config))
    print(f"compile time    {time.perf_counter() - start:.0f} s")
    return 0 if memory.fits else 1


def _define_flags():
    from absl import flags  # noqa: PLC0415
    from momentor_jax import cli  # noqa: PLC0415
    cli.define_config(lock_config=False)
    flags.DEFINE_string("topology", None, "TPU slice, e.g. v5p-64, v5e-256, v4-128, v6e-8")
    flags.DEFINE_bool("find_max_batch", False, "binary-search the largest global batch that fits")
    flags.DEFINE_integer("max_batch_limit", 4096, "upper bound for --find_max_batch")
    flags.DEFINE_float("hbm_gib", 0.0, "check against this much HBM per chip (default: the chip's), e.g. to "
                       "keep headroom")
    flags.mark_flags_as_required(["config", "topology"])


def run() -> None:
    from momentor_jax import cli  # noqa: PLC0415
    _define_flags()
    cli.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
