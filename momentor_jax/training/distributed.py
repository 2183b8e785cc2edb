"""Start JAX's multi-controller runtime when there is more than one process; a no-op otherwise.

Call `maybe_initialize()` first thing in a program, before anything touches a JAX device.
  - explicit arguments (local CPU multi-process tests) win;
  - else MOMENTOR_COORDINATOR_ADDRESS / MOMENTOR_NUM_PROCESSES / MOMENTOR_PROCESS_ID (same meaning);
  - else on a Cloud TPU VM, or when MOMENTOR_DISTRIBUTED=1 (set by launch/tpu.py), `jax.distributed.initialize()`
    with no arguments: JAX reads the slice's workers from the TPU metadata;
  - else nothing (one process).
"""
from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

import jax

ENV_COORDINATOR = "MOMENTOR_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "MOMENTOR_NUM_PROCESSES"
ENV_PROCESS_ID = "MOMENTOR_PROCESS_ID"
ENV_DISTRIBUTED = "MOMENTOR_DISTRIBUTED"

_GOOGLE_PCI_VENDOR = "0x1ae0"
_NON_TPU_GOOGLE_DEVICES = {"0x0042"}  # gVNIC network card, same vendor id


def tpu_chips_attached() -> bool:
    """True on a Cloud TPU VM: a Google PCI device that is not the virtual NIC."""
    try:
        from jax._src import hardware_utils  # noqa: PLC0415 (private, but exactly the check JAX itself uses)
        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except (ImportError, AttributeError):
        pass
    for vendor_file in glob.glob("/sys/bus/pci/devices/*/vendor"):
        device_file = Path(vendor_file).with_name("device")
        try:
            vendor, device = Path(vendor_file).read_text().strip(), device_file.read_text().strip()
        except OSError:
            continue
        if vendor == _GOOGLE_PCI_VENDOR and device not in _NON_TPU_GOOGLE_DEVICES:
            return True
    return False


def _from_env() -> tuple[str | None, int | None, int | None]:
    address = os.environ.get(ENV_COORDINATOR) or None
    num = os.environ.get(ENV_NUM_PROCESSES)
    pid = os.environ.get(ENV_PROCESS_ID)
    try:
        return address, (int(num) if num else None), (int(pid) if pid else None)
    except ValueError as e:
        raise ValueError(f"{ENV_NUM_PROCESSES}={num!r} / {ENV_PROCESS_ID}={pid!r}: expected integers") from e


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
    """Initialize jax.distributed if this is a multi-process run; returns whether it is initialized."""
    if jax.distributed.is_initialized():
        return True
    explicit = (coordinator_address, num_processes, process_id)
    if all(v is None for v in explicit):
        explicit = _from_env()
    if any(v is not None for v in explicit):
        coordinator_address, num_processes, process_id = explicit
        if None in explicit:
            raise ValueError("multi-process run needs all of coordinator_address, num_processes and process_id "
                             f"(or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); got {explicit}")
        if num_processes == 1:
            return False
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id {process_id} out of range for {num_processes} processes")
        # CPU devices of different processes talk through gloo; TPUs ignore this setting.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        logging.info("jax.distributed.initialize(%s, %d processes, process %d)", coordinator_address,
                     num_processes, process_id)
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
        return True
    if os.environ.get(ENV_DISTRIBUTED) == "1" or tpu_chips_attached():
        jax.distributed.initialize()
        logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
        return True
    return False
