r"""Expand a config's `sweep()` into one training run per override set, run locally in turn or on TPU VMs.

    python launch/sweep.py --config=configs/tiny.py[:variant] --workdir_root=DIR [--dry_run]
    python launch/sweep.py --config=configs/momentor_7b.py:stage2 --workdir_root=gs://BUCKET/sweeps/s2 \
        --tpu=NAME [--tpu=NAME2 ...] [--zone=Z --project=P] [--dry_run] [--config.data.dir=gs://BUCKET/data ...]

`sweep()` (or `sweep(variant)`) in the config file returns a list of dicts {dotted.config.key: value}. Each run gets
workdir DIR/<name>, the name built from its overrides (e.g. `learning_rate=2e-05,batch_size=64`). Locally the runs
go one after another and a failed run is counted, not fatal. With --tpu the runs are dealt round-robin to the TPU
VMs; each VM runs its share one after another in the background (see `launch/tpu.py logs`). Extra
`--config.key=value` flags go to every run, before the run's own overrides.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import inspect
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python launch/sweep.py` puts launch/ on sys.path, not the repo root
    sys.path.insert(0, str(REPO_ROOT))

from launch import tpu  # noqa: E402
from momentor_jax import fileio  # noqa: E402

MAX_NAME_LENGTH = 100


def split_config_arg(config: str) -> tuple[str, str | None]:
    path, _, variant = config.partition(":")
    return path, (variant or None)


def load_sweep(config: str) -> list[dict[str, Any]]:
    """Import the config file and call its `sweep()`; one dict of overrides per run."""
    path, variant = split_config_arg(config)
    file = Path(path) if Path(path).is_absolute() else REPO_ROOT / path
    if not file.exists():
        file = Path(path)
    if not file.exists():
        raise tpu.LaunchError(f"--config={config!r}: no such file {path}")
    spec = importlib.util.spec_from_file_location(f"_sweep_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sweep_fn = getattr(module, "sweep", None)
    if sweep_fn is None:
        raise tpu.LaunchError(f"{file} has no sweep() function")
    runs = sweep_fn(variant) if inspect.signature(sweep_fn).parameters else sweep_fn()
    runs = [dict(run) for run in runs]
    if not runs:
        raise tpu.LaunchError(f"{file}: sweep() returned no runs")
    for i, run in enumerate(runs):
        for key in run:
            if not isinstance(key, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_.]*$", key):
                raise tpu.LaunchError(f"{file}: sweep() run {i} has a bad config key {key!r}")
    return runs


def format_value(value: Any) -> str:
    """How a value is written after `--config.key=` (ml_collections parses it by the field's type)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def override_flags(overrides: dict[str, Any]) -> list[str]:
    return [f"--config.{key}={format_value(value)}" for key, value in overrides.items()]


def run_name(overrides: dict[str, Any]) -> str:
    """`optim.learning_rate=2e-05,batch_size=64` -> 'learning_rate=2e-05,batch_size=64' (filesystem-safe)."""
    if not overrides:
        return "base"
    short = [key.rsplit(".", 1)[-1] for key in overrides]
    keys = short if len(set(short)) == len(short) else list(overrides)
    name = ",".join(f"{key}={format_value(value)}" for key, value in zip(keys, overrides.values()))
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name).lstrip("._=,+-") or "run"
    if len(name) > MAX_NAME_LENGTH:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME_LENGTH - 9]}-{digest}"
    return name


def plan(config: str, workdir_root: str, sweep: Sequence[dict[str, Any]], common: Sequence[str] = ()
         ) -> list[tuple[str, str, list[str]]]:
    """(name, workdir, override flags) per run; names made unique with a numeric suffix.

    `common` flags (`--config.key=value`, e.g. data.dir) go to every run, before the run's own overrides.
    """
    runs, seen = [], {}
    for overrides in sweep:
        name = run_name(overrides)
        if name in seen:
            seen[name] += 1
            name = f"{name}-{seen[name]}"
        else:
            seen[name] = 0
        runs.append((name, f"{workdir_root.rstrip('/')}/{name}", [*common, *override_flags(overrides)]))
    return runs


def local_commands(config: str, runs, python: str = sys.executable) -> list[list[str]]:
    return [tpu.train_argv(config, workdir, flags, python=python) for _, workdir, flags in runs]


def run_local(commands: Sequence[Sequence[str]], names: Sequence[str],
              runner: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[str]:
    """Run each command to completion in the repo root; returns the names of the runs that failed."""
    failed = []
    for i, (name, command) in enumerate(zip(names, commands), 1):
        print(f"[sweep {i}/{len(commands)}] {name}: {shlex.join(command)}", file=sys.stderr, flush=True)
        status = runner(list(command), cwd=str(REPO_ROOT)).returncode
        if status != 0:
            print(f"[sweep {i}/{len(commands)}] {name}: FAILED (exit {status})", file=sys.stderr, flush=True)
            failed.append(name)
    return failed


def tpu_commands(args, runs, sweep_name: str) -> list[list[str]]:
    """One ssh per TPU VM starting its round-robin share of the runs as a sequential background chain."""
    if not args.workdir_root.startswith("gs://"):
        raise tpu.LaunchError(f"--workdir_root={args.workdir_root!r}: TPU workers need a gs:// path")
    commands = []
    for t, name in enumerate(args.tpu):
        share = runs[t::len(args.tpu)]
        if not share:
            continue
        chain = [(run, tpu.train_argv(args.config, workdir, flags)) for run, workdir, flags in share]
        vm = argparse.Namespace(name=name, zone=args.zone, project=args.project)
        commands.append(tpu.ssh(vm, tpu.remote_train_script(chain, sweep_name, args.remote_dir)))
    return commands


def default_sweep_name(config: str) -> str:
    path, variant = split_config_arg(config)
    return "sweep-" + Path(path).stem + (f"-{variant}" if variant else "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="configs/FILE.py[:variant] with a sweep() function")
    parser.add_argument("--workdir_root", required=True, help="each run writes to WORKDIR_ROOT/<run name>")
    parser.add_argument("--tpu", action="append", default=[], help="TPU VM name (repeat to spread runs)")
    parser.add_argument("--sweep_name", help="names the remote log folder ~/logs/<sweep_name> (TPU mode)")
    parser.add_argument("--remote_dir", default="momentor_jax", help="project directory on the TPU workers")
    tpu.add_gcloud_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, common = build_parser().parse_known_args(argv)
    try:
        for flag in common:
            if not flag.startswith("--config."):
                raise tpu.LaunchError(f"unexpected argument {flag!r}: only --config.key=value flags pass through")
        runs = plan(args.config, args.workdir_root, load_sweep(args.config), common)
        if args.tpu:
            sweep_name = tpu.check_safe(args.sweep_name or default_sweep_name(args.config), "--sweep_name")
            commands = tpu_commands(args, runs, sweep_name)
        else:
            commands = local_commands(args.config, runs)
        if args.dry_run:
            tpu.print_commands(commands)
            return 0
        if args.tpu:
            tpu.execute(commands)
            return 0
        fileio.makedirs(args.workdir_root)  # local, or gs:// (there: the bucket must exist)
        failed = run_local(commands, [name for name, _, _ in runs])
    except tpu.LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"sweep: {len(runs) - len(failed)}/{len(runs)} runs succeeded"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
