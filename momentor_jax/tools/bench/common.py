"""Shared pieces of the benchmark suites: the config flag and its record, the hardware line, a timer that reports
median/min/max after warm-up, the printed table and the JSON file each suite writes."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Mapping, Optional, Sequence

from momentor_jax import cli

DEFAULT_CONFIG = os.path.join(cli.REPO_ROOT, "configs", "bench.py")


def define_config(flag_values, argv, help_more: str = "") -> None:
    """The suite's `--config` (default configs/bench.py) with `--config.KEY=VALUE` overrides, as every command takes
    a config (momentor_jax/cli.py)."""
    holder = cli.define_config(flag_values, argv, default=DEFAULT_CONFIG)
    if help_more:
        flag_values[holder.name].help += f"; {help_more}"


def checked(check: Callable, *args):
    """check(*args) for a config check that raises ValueError naming the key (the trainer's `check_config`,
    `packing_options`) -> its result; a failure is one usage line, as a bad flag is."""
    try:
        return check(*args)
    except ValueError as e:
        cli.fail_usage(f"--config: {e}")


def config_record(args) -> dict:
    """The config file (relative to the repository when inside it) and its overrides, KEY=VALUE, for the JSON."""
    from ml_collections import config_flags  # noqa: PLC0415
    path, colon, variant = args["config"].config_filename.partition(":")
    if os.path.abspath(path).startswith(cli.REPO_ROOT + os.sep):
        path = os.path.relpath(os.path.abspath(path), cli.REPO_ROOT)
    overrides = config_flags.get_override_values(args["config"])
    return {"config": path + colon + variant,
            "overrides": [f"{key}={cli.format_override(value)}" for key, value in overrides.items()]}


def hardware() -> dict:
    """What the figures were measured on: CPU model and count, JAX backend and devices, versions, XLA_FLAGS, the
    allocator settings (cli.retained_memory_settings)."""
    import jax  # noqa: PLC0415

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    devices = jax.devices()
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "backend": jax.default_backend(), "devices": [d.device_kind for d in devices],
            "jax": jax.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "malloc": cli.retained_memory_settings()}


def hardware_line(info: Optional[dict] = None) -> str:
    info = info or hardware()
    flags = f", XLA_FLAGS={info['xla_flags']}" if info.get("xla_flags") else ""
    malloc = info.get("malloc")
    if malloc:
        flags += ", " + " ".join(f"{name}={value}" for name, value in malloc.items())
    return (f"{info['cpu']} ({info['affinity']} of {info['cpu_count']} cores usable), jax {info['jax']} "
            f"{info['backend']} x{len(info['devices'])} ({info['devices'][0]}){flags}")


def time_repeats(fn: Callable[[], object], repeats: int, warmup: int = 1,
                 label: Optional[str] = None) -> dict:
    """Calls `fn` warmup + repeats times (fn must block until its work is done); seconds per call after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if label:
            print(f"  {label}: {i + 1}/{repeats} {times[-1] * 1e3:.1f} ms", file=sys.stderr, flush=True)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats,
            "warmup": warmup}


def command_line() -> str:
    """The command that produced the figures, as a user would type it."""
    return " ".join(["python -m momentor_jax.tools.bench", *sys.argv[1:]])


def print_table(title: str, rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> None:
    """A plain fixed-width table; floats with 3 significant digits."""
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  " + "  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  " + "  ".join(v.rjust(w) for v, w in zip(r, widths)))


def write_result(out_dir: str, suite: str, result: dict) -> str:
    """DIR/SUITE.json with the suite's figures, the hardware and the command."""
    os.makedirs(out_dir, exist_ok=True)
    payload = {"suite": suite, "command": command_line(), "hardware": hardware(),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result}
    path = os.path.join(out_dir, f"{suite}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    return path
