r"""Expand a config's `sweep()` into one training run per override set, run locally in turn or on TPU VMs.

    python launch/sweep.py --config=configs/tiny.py[:variant] --workdir_root=DIR [--dry_run]
    python launch/sweep.py --config=configs/momentor_7b.py:stage2 --workdir_root=gs://BUCKET/sweeps/s2 \
        --tpu=NAME [--tpu=NAME2 ...] [--zone=Z --project=P] [--dry_run] [--config.data.dir=gs://BUCKET/data ...]

`sweep()` (or `sweep(variant)`) next to `get_config()` in the config (a module of the configs package) returns a list
of dicts {dotted.config.key: value}. Each run gets
workdir DIR/<name>, the name built from its overrides (e.g. `learning_rate=2e-05,batch_size=64`). Locally the runs
go one after another and a failed run is counted, not fatal. With --tpu the runs are dealt round-robin to the TPU
VMs; each VM runs its share one after another in the background (see `launch/tpu.py logs`). Extra
`--config.key=value` flags, checked against the config as the trainer checks them, go to every run, before the
run's own overrides. Exit status: 0; 1 when a local run failed; 2 on bad flags or a config without sweep().
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import re
import shlex
import subprocess
import sys
import types
from typing import Any, Callable, Optional, Sequence

from launch import tpu
from momentor_jax import cli, fileio

MAX_NAME_LENGTH = 100
REPO_ROOT = cli.REPO_ROOT


def config_module(path: str):
    """The module of the `configs` package that the config file `path` is (its sweep() sits next to get_config())."""
    import configs  # noqa: PLC0415

    package = os.path.dirname(os.path.abspath(configs.__file__))
    name = os.path.basename(path).removesuffix(".py")
    if not (path.endswith(".py") and os.path.isfile(path)
            and os.path.samefile(os.path.dirname(os.path.abspath(path)), package)):
        raise tpu.LaunchError(f"--config={path}: a sweep runs a config of the configs package ({package}/NAME.py)")
    return importlib.import_module(f"configs.{name}")


def load_sweep(path: str, variant: Optional[str] = None) -> list[dict[str, Any]]:
    """The config's `sweep()` (or `sweep(variant)`): one dict of overrides per run."""
    sweep_fn = getattr(config_module(path), "sweep", None)
    if sweep_fn is None:
        raise tpu.LaunchError(f"{path} has no sweep() function")
    runs = sweep_fn(variant) if inspect.signature(sweep_fn).parameters else sweep_fn()
    runs = [dict(run) for run in runs]
    if not runs:
        raise tpu.LaunchError(f"{path}: sweep() returned no runs")
    for i, run in enumerate(runs):
        for key in run:
            if not isinstance(key, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_.]*$", key):
                raise tpu.LaunchError(f"{path}: sweep() run {i} has a bad config key {key!r}")
    return runs


def override_flags(overrides: dict[str, Any]) -> list[str]:
    return [f"--config.{key}={cli.format_override(value)}" for key, value in overrides.items()]


def run_name(overrides: dict[str, Any]) -> str:
    """`optim.learning_rate=2e-05,batch_size=64` -> 'learning_rate=2e-05,batch_size=64' (filesystem-safe)."""
    if not overrides:
        return "base"
    short = [key.rsplit(".", 1)[-1] for key in overrides]
    keys = short if len(set(short)) == len(short) else list(overrides)
    name = ",".join(f"{key}={cli.format_override(value)}" for key, value in zip(keys, overrides.values()))
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name).lstrip("._=,+-") or "run"
    if len(name) > MAX_NAME_LENGTH:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME_LENGTH - 9]}-{digest}"
    return name


def plan(workdir_root: str, sweep: Sequence[dict[str, Any]], common: Sequence[str] = ()
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
        status = runner(list(command), cwd=REPO_ROOT).returncode
        if status != 0:
            print(f"[sweep {i}/{len(commands)}] {name}: FAILED (exit {status})", file=sys.stderr, flush=True)
            failed.append(name)
    return failed


def tpu_commands(args, config: str, runs, sweep_name: str) -> list[list[str]]:
    """One ssh per TPU VM starting its round-robin share of the runs as a sequential background chain."""
    if not args.workdir_root.startswith("gs://"):
        raise tpu.LaunchError(f"--workdir_root={args.workdir_root!r}: TPU workers need a gs:// path")
    commands = []
    for t, name in enumerate(args.tpu):
        share = runs[t::len(args.tpu)]
        if not share:
            continue
        chain = [(run, tpu.train_argv(config, workdir, flags)) for run, workdir, flags in share]
        vm = types.SimpleNamespace(name=name, zone=args.zone, project=args.project)
        commands.append(tpu.ssh(vm, tpu.remote_train_script(chain, sweep_name, args.remote_dir)))
    return commands


def _define_flags(flag_values, argv) -> None:
    from absl import flags  # noqa: PLC0415
    cli.define_config(flag_values, argv)
    flags.mark_flag_as_required("config", flag_values=flag_values)
    flags.DEFINE_string("workdir_root", None, "each run writes to WORKDIR_ROOT/<run name>", required=True,
                        flag_values=flag_values)
    flags.DEFINE_multi_string("tpu", [], "TPU VM name (repeat to spread runs)", flag_values=flag_values)
    flags.DEFINE_string("sweep_name", None, "names the remote log folder ~/logs/<sweep_name> (TPU mode)",
                        flag_values=flag_values)
    flags.DEFINE_string("remote_dir", "momentor_jax", "project directory on the TPU workers", flag_values=flag_values)
    flags.DEFINE_string("project", None, f"GCP project (default ${tpu.ENV_PROJECT})", flag_values=flag_values)
    flags.DEFINE_string("zone", None, f"zone, e.g. us-east5-a (default ${tpu.ENV_ZONE})", flag_values=flag_values)
    flags.DEFINE_bool("dry_run", False, "print the commands instead of running them", flag_values=flag_values)


def main(argv: Sequence[str] | None = None) -> int:
    args, positional = cli.parse_flags(sys.argv if argv is None else ["sweep", *argv], _define_flags, __doc__)
    if positional:
        cli.fail_usage(f"unexpected arguments {positional}: only --config.key=value flags pass through")
    path, _, variant = args["config"].config_filename.partition(":")
    # The runs name the config as the package has it, so the command works in the repository on any machine.
    config = f"configs/{os.path.basename(path)}" + (f":{variant}" if variant else "")
    try:
        runs = plan(args.workdir_root, load_sweep(path, variant or None), cli.override_args(args["config"]))
        if args.tpu:
            default_name = "sweep-" + os.path.basename(path).removesuffix(".py") + (f"-{variant}" if variant else "")
            sweep_name = tpu.check_safe(args.sweep_name or default_name, "--sweep_name")
            commands = tpu_commands(args, config, runs, sweep_name)
        else:
            commands = local_commands(config, runs)
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
