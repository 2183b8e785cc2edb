"""Start JAX's multi-controller runtime when there is more than one process; a no-op otherwise.

Call `maybe_initialize()` first thing in a program, before anything touches a JAX device.
  - explicit arguments (local CPU multi-process tests) win;
  - else MOMENTOR_COORDINATOR_ADDRESS / MOMENTOR_NUM_PROCESSES / MOMENTOR_PROCESS_ID (same meaning);
  - else on a Cloud TPU VM, or when MOMENTOR_DISTRIBUTED=1 (set by launch/tpu.py), `jax.distributed.initialize()`
    with no arguments: JAX reads the slice's workers from the TPU metadata;
  - else nothing (one process).

Leaving: `shutdown()` (registered at exit by `maybe_initialize`, so every program and every error path takes it)
shuts this process's client down (a barrier with every other process), and on the coordinator waits until the
other processes have closed their connections before it stops the coordination service. JAX's own exit handler
stops the service right after the barrier, while the other processes are still closing theirs (25-50 ms on
loopback here, longer under load); in that window gRPC has aborted the coordinator in the server's destructor
(SIGABRT after a finished run, which a pod launcher reads as a failed run).
"""
from __future__ import annotations

import atexit
import glob
import logging
import os
import time
from pathlib import Path

import jax

ENV_COORDINATOR = "MOMENTOR_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "MOMENTOR_NUM_PROCESSES"
ENV_PROCESS_ID = "MOMENTOR_PROCESS_ID"
ENV_DISTRIBUTED = "MOMENTOR_DISTRIBUTED"

# Upper bound on the coordinator's wait for the other processes to disconnect (a process that exits closes its
# connection at once; one still alive after the shutdown barrier only has its channel left to close).
DISCONNECT_TIMEOUT_S = 10.0
_POLL_S = 0.02
_BLIND_GRACE_S = 1.0
_TCP_ESTABLISHED = "01"
_IPV4_MAPPED_PREFIX = "0000000000000000FFFF0000"

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
        _initialize(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
        return True
    if os.environ.get(ENV_DISTRIBUTED) == "1" or tpu_chips_attached():
        _initialize()
        logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
        return True
    return False


def _initialize(**arguments) -> None:
    jax.distributed.initialize(**arguments)
    atexit.register(shutdown)  # runs before JAX's handler, which was registered when jax was imported


def _socket_inodes() -> set:
    inodes = set()
    fd_dir = "/proc/self/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _endpoint(hex_endpoint: str) -> tuple[str, int]:
    """'0100007F:1F90' or an IPv6 (IPv4-mapped: same key as the IPv4 form) endpoint of /proc/net/tcp*."""
    address, port = hex_endpoint.rsplit(":", 1)
    if len(address) == 32 and address.startswith(_IPV4_MAPPED_PREFIX):
        address = address[len(_IPV4_MAPPED_PREFIX):]
    return address, int(port, 16)


def peer_connections(port: int) -> int | None:
    """Established TCP connections that this process accepted on `port` from a socket of another process.

    None where /proc/net/tcp* cannot be read (not Linux). The process's own connections to its own port (JAX's
    client in the coordinator) are not counted: their client end is one of its sockets too.
    """
    rows = []
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) > 9:
                rows.append((_endpoint(fields[1]), _endpoint(fields[2]), fields[3], fields[9]))
    if not readable:
        return None
    own = _socket_inodes()
    own_ends = {local for local, _, _, inode in rows if inode in own}
    return sum(1 for local, remote, state, inode in rows
               if state == _TCP_ESTABLISHED and local[1] == port and inode in own and remote not in own_ends)


def wait_for_peers_to_disconnect(port: int, timeout_s: float = DISCONNECT_TIMEOUT_S) -> tuple[int | None, float]:
    """Polls `peer_connections(port)` until it is 0 or `timeout_s` passes; returns (the last count, seconds)."""
    start = time.monotonic()
    while True:
        count = peer_connections(port)
        waited = time.monotonic() - start
        if count is None:  # connections not visible: a short fixed grace instead
            time.sleep(_BLIND_GRACE_S)
            return None, time.monotonic() - start
        if count == 0 or waited >= timeout_s:
            return count, waited
        time.sleep(_POLL_S)


def _service_port(coordinator_address: str) -> int | None:
    bind = os.environ.get("JAX_COORDINATOR_BIND_ADDRESS") or coordinator_address
    try:
        return int(bind.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def shutdown() -> None:
    """Leaves the multi-controller runtime (a no-op when it is not running); see the module docstring."""
    from jax._src import distributed as jax_distributed  # noqa: PLC0415 (the service is not public API)
    state = jax_distributed.global_state
    service = state.service
    if service is None:  # not the coordinator, or not running
        jax.distributed.shutdown()
        return
    state.service = None
    try:
        jax.distributed.shutdown()  # this process's client: returns when every process has reached its shutdown
    finally:
        _stop_service(service, state.coordinator_address)


def _stop_service(service, coordinator_address: str | None) -> None:
    port = _service_port(coordinator_address or "")
    if port is None:
        logging.warning("coordination service address %r has no port: not waiting for the other processes",
                        coordinator_address)
    else:
        left, waited = wait_for_peers_to_disconnect(port)
        if left is None:
            logging.info("coordination service: waited %.1f s for the other processes (no /proc/net here)", waited)
        elif left:
            logging.warning("coordination service: %d connection(s) still open after %.1f s; stopping it anyway",
                            left, waited)
        else:
            logging.info("coordination service: the other processes disconnected in %.2f s", waited)
    service.shutdown()
