r"""Cloud TPU VM lifecycle for momentor_jax: create, set up, train, watch, stop, delete.

    python launch/tpu.py create --name=NAME --accelerator_type=v5p-64 [--spot | --preemptible] [--queued [--wait]]
    python launch/tpu.py setup  --name=NAME [--repo_url=URL --ref=REF]      # default: tarball of git HEAD
                                [--gcsfuse_bucket=BUCKET [--gcsfuse_mount=/mnt/BUCKET]]
    python launch/tpu.py train  --name=NAME --config=configs/momentor_7b.py:stage1 [--workdir=gs://...] \
                                [--config.learning_rate=1e-5 ...]
    python launch/tpu.py logs   --name=NAME [--run_name=RUN] [--worker=0]
    python launch/tpu.py stop   --name=NAME [--run_name=RUN]
    python launch/tpu.py delete --name=NAME [--queued]
    python launch/tpu.py status --name=NAME [--queued]

Project and zone come from --project/--zone or MOMENTOR_TPU_PROJECT/MOMENTOR_TPU_ZONE; the default workdir is
gs://$MOMENTOR_TPU_BUCKET/runs/RUN. Every worker runs the same training command (JAX multi-controller), so the
workdir and the data must be on GCS. `--dry_run` prints the commands, one per line and shell-quoted, instead of
running them. Commands are argv lists; the remote command gcloud passes to ssh is one string built with shlex.
`train` (dry run or not) first loads the config here: the file and variant must exist, every --config.key override
must name a key of it, and data.dir must be a gs:// path or lie under `--gcsfuse_mount` (errors exit 2 in one
line).

`setup --gcsfuse_bucket` also mounts the bucket read-only with Cloud Storage FUSE on every worker (installing
gcsfuse from Google's apt repository if needed), with the metadata caches MaxText's setup_gcsfuse.sh uses; data
paths under the mount are then plain local paths. Checkpoints and the workdir stay gs:// (orbax writes them
through tensorstore). launch/README.md says when a mount is faster than reading gs:// directly.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Iterable, Sequence

ENV_PROJECT = "MOMENTOR_TPU_PROJECT"
ENV_ZONE = "MOMENTOR_TPU_ZONE"
ENV_BUCKET = "MOMENTOR_TPU_BUCKET"
# Tells momentor_jax.training.distributed.maybe_initialize to call jax.distributed.initialize() with no arguments.
ENV_DISTRIBUTED = "MOMENTOR_DISTRIBUTED"

# Default runtime image per TPU generation (https://cloud.google.com/tpu/docs/runtimes).
RUNTIME_VERSIONS = {
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
# gcloud calls v5e slices "v5litepod-N"; accept the marketing name too.
ACCELERATOR_ALIASES = {"v5e": "v5litepod"}

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_PYTHON = ".venv/bin/python"
LOG_ROOT = "~/logs"
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")      # GCE resource names
_SAFE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]*$")          # run names and remote dirs: no quoting needed
_ACCELERATOR_RE = re.compile(r"^(v[0-9a-z]+)-([0-9]+)$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")      # GCS bucket names
# Cloud Storage FUSE flags as MaxText's setup_gcsfuse.sh sets them for Grain: read-only, directories implied by
# object names, and metadata caches that never expire (the data does not change under a run).
GCSFUSE_FLAGS = ("-o", "ro", "--implicit-dirs", "--type-cache-max-size-mb=-1", "--stat-cache-max-size-mb=-1",
                 "--kernel-list-cache-ttl-secs=-1", "--metadata-cache-ttl-secs=-1")
_GCSFUSE_INSTALL = (
    "(command -v gcsfuse >/dev/null || ("
    "echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt "
    "gcsfuse-$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null && "
    "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc "
    ">/dev/null && sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse))")


class LaunchError(Exception):
    """A bad flag or a missing setting; the message says which."""


# --------------------------------------------------------------------------------------------------- settings

def resolve(value: str | None, env_name: str, flag: str) -> str:
    """The flag value, else the environment variable, else a clear error."""
    value = value or os.environ.get(env_name)
    if not value:
        raise LaunchError(f"no {flag.lstrip('-')} given: pass {flag}=... or set {env_name}")
    return value


def check_name(name: str) -> str:
    if not name or not _NAME_RE.match(name):
        raise LaunchError(f"--name={name!r}: TPU names are lowercase letters, digits and '-', starting with a letter")
    return name


def check_safe(value: str, flag: str) -> str:
    """Run names and remote paths go into remote shell text unquoted (so `~` expands): allow a safe charset only."""
    if not value or not _SAFE_RE.match(value) or ".." in value:
        raise LaunchError(f"{flag}={value!r}: use only letters, digits and . _ = , + - (no '..')")
    return value


def normalize_accelerator(accelerator_type: str) -> str:
    """'v5e-16' -> 'v5litepod-16'; checks the form 'vX-N'."""
    match = _ACCELERATOR_RE.match(accelerator_type or "")
    if not match:
        raise LaunchError(f"--accelerator_type={accelerator_type!r}: expected e.g. v4-8, v5p-64, v5e-256, v6e-8")
    generation, size = match.groups()
    return f"{ACCELERATOR_ALIASES.get(generation, generation)}-{size}"


def runtime_version(accelerator_type: str, version: str | None) -> str:
    if version:
        return version
    generation = accelerator_type.split("-")[0]
    if generation not in RUNTIME_VERSIONS:
        raise LaunchError(f"no default runtime for {accelerator_type!r}: pass --version "
                          f"(known: {', '.join(sorted(RUNTIME_VERSIONS))})")
    return RUNTIME_VERSIONS[generation]


def run_name_from_workdir(workdir: str) -> str:
    base = workdir.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", base) or "run"


def default_workdir(bucket: str | None, run_name: str) -> str:
    bucket = resolve(bucket, ENV_BUCKET, "--bucket").removeprefix("gs://").rstrip("/")
    return f"gs://{bucket}/runs/{run_name}"


# ---------------------------------------------------------------------------------------------- gcloud argv

def scope(args) -> list[str]:
    return [f"--zone={resolve(args.zone, ENV_ZONE, '--zone')}",
            f"--project={resolve(args.project, ENV_PROJECT, '--project')}"]


def ssh(args, remote_command: str, worker: str = "all") -> list[str]:
    """One ssh to every worker (or one); `remote_command` is a single shell string for the remote login shell."""
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", check_name(args.name), *scope(args),
            f"--worker={worker}", f"--command={remote_command}"]


def create_commands(args) -> list[list[str]]:
    accelerator = normalize_accelerator(args.accelerator_type)
    version = runtime_version(accelerator, args.version)
    if args.spot and args.preemptible:
        raise LaunchError("--spot and --preemptible are exclusive")
    name = check_name(args.name)
    if args.queued:
        if args.preemptible:
            raise LaunchError("queued resources take --spot, not --preemptible")
        command = ["gcloud", "compute", "tpus", "queued-resources", "create", name, f"--node-id={name}", *scope(args),
                   f"--accelerator-type={accelerator}", f"--runtime-version={version}"]
        if args.valid_until_duration:
            command.append(f"--valid-until-duration={args.valid_until_duration}")
    else:
        command = ["gcloud", "compute", "tpus", "tpu-vm", "create", name, *scope(args),
                   f"--accelerator-type={accelerator}", f"--version={version}"]
    if args.spot:
        command.append("--spot")
    if args.preemptible:
        command.append("--preemptible")
    return [command]


def describe_command(args) -> list[str]:
    kind = ["queued-resources"] if args.queued else ["tpu-vm"]
    return ["gcloud", "compute", "tpus", *kind, "describe", check_name(args.name), *scope(args)]


def delete_commands(args) -> list[list[str]]:
    name = check_name(args.name)
    if args.queued:  # --force also deletes the TPU VM the queued resource holds
        return [["gcloud", "compute", "tpus", "queued-resources", "delete", name, *scope(args), "--force", "--quiet"]]
    return [["gcloud", "compute", "tpus", "tpu-vm", "delete", name, *scope(args), "--quiet"]]


def setup_commands(args) -> list[list[str]]:
    """Put the project on every worker and install it into <remote_dir>/.venv."""
    remote_dir = check_safe(args.remote_dir, "--remote_dir")
    commands = []
    if args.repo_url:
        fetch = f"rm -rf ~/{remote_dir} && {shlex.join(['git', 'clone', '--quiet', args.repo_url])} ~/{remote_dir}"
        if args.ref:
            fetch += f" && cd ~/{remote_dir} && {shlex.join(['git', 'checkout', '--quiet', args.ref])}"
    else:
        tarball = args.tarball
        commands.append(["git", "-C", REPO_ROOT, "archive", "--format=tar.gz", "-o", tarball, args.ref or "HEAD"])
        commands.append(["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball,
                         f"{check_name(args.name)}:{remote_dir}.tar.gz", *scope(args), "--worker=all"])
        fetch = f"rm -rf ~/{remote_dir} && mkdir -p ~/{remote_dir} && tar -xzf ~/{remote_dir}.tar.gz -C ~/{remote_dir}"
    python = shlex.quote(args.python)
    ensure_python = (f"(command -v {python} >/dev/null || (sudo apt-get update -qq && "
                     "sudo apt-get install -y -qq software-properties-common && "
                     "sudo add-apt-repository -y ppa:deadsnakes/ppa && sudo apt-get update -qq && "
                     f"sudo apt-get install -y -qq {python} {python}-venv))")
    install = (f"cd ~/{remote_dir} && {python} -m venv .venv && .venv/bin/pip install -q --upgrade pip && "
               f"{shlex.join(['.venv/bin/pip', 'install', '-q', '-e', f'.[{args.extras}]'])}")
    steps = [fetch, ensure_python, install]
    if args.gcsfuse_bucket:
        steps.append(gcsfuse_mount_script(args.gcsfuse_bucket, args.gcsfuse_mount))
    commands.append(ssh(args, " && ".join(steps)))
    return commands


def gcsfuse_mount(bucket: str, mount: str | None) -> tuple[str, str]:
    """(bucket name, mount point) checked: `gs://` dropped from the bucket, the mount an absolute path of plain
    names (default /mnt/BUCKET)."""
    name = bucket.removeprefix("gs://").rstrip("/")
    if not _BUCKET_RE.match(name) or ".." in name:
        raise LaunchError(f"--gcsfuse_bucket={bucket!r}: not a bucket name (lower-case letters, digits, . _ -)")
    return name, check_mount(mount or f"/mnt/{name}")


def check_mount(mount: str) -> str:
    parts = mount.split("/")
    if not mount.startswith("/") or not all(_SAFE_RE.match(p) for p in parts[1:]) or ".." in parts:
        raise LaunchError(f"--gcsfuse_mount={mount!r}: use an absolute path of plain names, e.g. /mnt/BUCKET")
    return mount


def gcsfuse_mount_script(bucket: str, mount: str | None) -> str:
    """Shell text for every worker: install gcsfuse if missing, mount BUCKET read-only at MOUNT unless mounted."""
    name, mount = gcsfuse_mount(bucket, mount)
    quoted = shlex.quote(mount)
    return (f"{_GCSFUSE_INSTALL} && sudo mkdir -p {quoted} && sudo chown \"$(id -u):$(id -g)\" {quoted} && "
            f"(mountpoint -q {quoted} || {shlex.join(['gcsfuse', *GCSFUSE_FLAGS, name, mount])})")


def train_argv(config: str, workdir: str, overrides: Sequence[str] = (), python: str = REMOTE_PYTHON) -> list[str]:
    """The training command every worker runs; `overrides` are `--config.key=value` flags."""
    for flag in overrides:
        if not flag.startswith("--config."):
            raise LaunchError(f"unexpected argument {flag!r}: only --config.key=value overrides pass through")
    return [python, "-m", "momentor_jax.train", f"--config={config}", f"--workdir={workdir}", *overrides]


def remote_train_script(runs: Sequence[tuple[str, Sequence[str]]], run_name: str, remote_dir: str) -> str:
    """Shell text that starts `runs` (log name, argv) one after another, detached, logging per worker.

    Logs go to ~/logs/<run_name>/<log name>.<hostname>.log on each worker; the process group id goes to
    ~/logs/<run_name>/pid so `stop` can end the whole chain.
    """
    run_name = check_safe(run_name, "--run_name")
    remote_dir = check_safe(remote_dir, "--remote_dir")
    log_dir = f"{LOG_ROOT}/{run_name}"
    steps = []
    for log_name, argv in runs:
        check_safe(log_name, "log name")
        steps.append(f'{shlex.join(argv)} > {log_dir}/{log_name}."$(hostname)".log 2>&1')
    chain = f"export {ENV_DISTRIBUTED}=1; " + "; ".join(steps)
    return (f"mkdir -p {log_dir} && cd ~/{remote_dir} && "
            f"{{ setsid nohup bash -c {shlex.quote(chain)} > /dev/null 2>&1 < /dev/null & echo $! > {log_dir}/pid; }}")


def load_config(config: str):
    """configs/FILE.py[:variant] -> its get_config(variant) (a ConfigDict), loaded by ml_collections config_flags as
    `train` loads it; LaunchError naming what is wrong."""
    from absl import flags  # noqa: PLC0415
    from ml_collections import config_flags  # noqa: PLC0415

    path, _, variant = config.partition(":")
    file = path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)
    if not os.path.isfile(file):
        raise LaunchError(f"--config={config!r}: no such file {file} (paths are relative to the project root, "
                          "which is what the workers run from)")
    flag_values = flags.FlagValues()
    argv = ["launch", f"--config={file}" + (f":{variant}" if variant else "")]
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    try:
        flag_values(argv)
        return flag_values.config
    except flags.Error as e:  # what the config file raised, as config_flags reports it
        from momentor_jax import cli  # noqa: PLC0415
        raise LaunchError(cli.flag_error(e)) from None


def check_train_config(config: str, overrides: Sequence[str], allow_local: bool, mounts: Sequence[str] = ()) -> None:
    """What `train` would otherwise report only in the workers' logs: the config file and its variant, every
    `--config.key` override naming a key the config has, and the data on gs:// or under a bucket mount that `setup
    --gcsfuse_bucket` made on every worker (workers share nothing else)."""
    loaded = load_config(config)
    values = {}
    for flag in overrides:
        key, _, value = flag.removeprefix("--config.").partition("=")
        node = loaded
        for i, part in enumerate(key.split(".")):
            if not hasattr(node, "keys") or part not in node.keys():
                raise LaunchError(f"{flag}: the config {config} has no key {'.'.join(key.split('.')[:i + 1])!r}")
            node = node[part]
        values[key] = value
    data_dir = values.get("data.dir", loaded.data.get("dir"))
    needs_dir = not (values.get("data.examples") or loaded.data.get("examples")) and not (
        loaded.data.get("synthetic_videos", 0) > 0)
    if data_dir is None and needs_dir:
        raise LaunchError(f"{config}: data.dir is unset; add --config.data.dir=gs://BUCKET/data")
    on_mount = any(str(data_dir) == m or str(data_dir).startswith(m.rstrip("/") + "/") for m in mounts)
    if data_dir is not None and not str(data_dir).startswith("gs://") and not on_mount and not allow_local:
        raise LaunchError(f"data.dir={data_dir!r}: workers share nothing but GCS; use a gs:// path, a path under "
                          "the --gcsfuse_mount that setup mounted, or --allow_local_workdir for a single-host VM")


def train_commands(args, overrides: Sequence[str]) -> list[list[str]]:
    run_name = check_safe(args.run_name or (run_name_from_workdir(args.workdir) if args.workdir else args.name),
                          "--run_name")
    workdir = args.workdir or default_workdir(args.bucket, run_name)
    if not workdir.startswith("gs://") and not args.allow_local_workdir:
        raise LaunchError(f"--workdir={workdir!r}: workers share nothing but GCS; use a gs:// path "
                          "(or --allow_local_workdir for a single-host VM)")
    argv = train_argv(args.config, workdir, overrides)
    mounts = [check_mount(args.gcsfuse_mount)] if args.gcsfuse_mount else []
    check_train_config(args.config, overrides, args.allow_local_workdir, mounts)
    return [ssh(args, remote_train_script([("train", argv)], run_name, args.remote_dir))]


def stop_commands(args) -> list[list[str]]:
    if args.run_name:
        pid_files = f"{LOG_ROOT}/{check_safe(args.run_name, '--run_name')}/pid"
    else:
        pid_files = f"{LOG_ROOT}/*/pid"
    script = (f"for f in {pid_files}; do [ -f \"$f\" ] && kill -TERM -- -\"$(cat \"$f\")\" 2>/dev/null "
              "&& echo \"stopped $f\"; rm -f \"$f\"; done; true")
    return [ssh(args, script)]


def logs_commands(args) -> list[list[str]]:
    run = check_safe(args.run_name, "--run_name") if args.run_name else "*"
    lines = int(args.lines)
    return [ssh(args, f"tail -n {lines} {LOG_ROOT}/{run}/*.log", worker=str(args.worker))]


# ------------------------------------------------------------------------------------------------- running

def print_commands(commands: Iterable[Sequence[str]]) -> None:
    for command in commands:
        print(shlex.join(command))


def execute(commands: Iterable[Sequence[str]]) -> None:
    """Run each argv in turn; stop at the first failure with its exit status."""
    for command in commands:
        print("+ " + shlex.join(command), file=sys.stderr, flush=True)
        try:
            subprocess.run(list(command), check=True)
        except FileNotFoundError as e:
            raise LaunchError(f"{command[0]!r} not found: install the Google Cloud SDK (gcloud) and git") from e
        except subprocess.CalledProcessError as e:
            raise LaunchError(f"command failed with exit status {e.returncode}: {shlex.join(command)}") from e


def wait_until_active(args, timeout_s: float, poll_s: float = 30.0) -> None:
    """Poll a queued resource until ACTIVE (prints its state each poll); error on FAILED/SUSPENDED or timeout."""
    command = describe_command(args) + ["--format=value(state.state)"]
    deadline = time.monotonic() + timeout_s
    while True:
        state = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()
        print(f"queued resource {args.name}: {state}", file=sys.stderr, flush=True)
        if state == "ACTIVE":
            return
        if state in ("FAILED", "SUSPENDED"):
            raise LaunchError(f"queued resource {args.name} is {state}: see `{shlex.join(describe_command(args))}`")
        if time.monotonic() > deadline:
            raise LaunchError(f"queued resource {args.name} not ACTIVE after {timeout_s:.0f} s (last state {state})")
        time.sleep(poll_s)


def add_gcloud_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", help=f"GCP project (default ${ENV_PROJECT})")
    parser.add_argument("--zone", help=f"zone, e.g. us-east5-a (default ${ENV_ZONE})")
    parser.add_argument("--dry_run", action="store_true", help="print the commands instead of running them")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)

    def action(name, help_text, queued=False):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--name", required=True, help="TPU VM (and queued resource) name")
        add_gcloud_flags(p)
        if queued:
            p.add_argument("--queued", action="store_true", help="a queued resource rather than a plain TPU VM")
        return p

    p = action("create", "create a TPU VM or a queued resource", queued=True)
    p.add_argument("--accelerator_type", required=True, help="e.g. v4-8, v5p-64, v5e-256 (= v5litepod-256), v6e-8")
    p.add_argument("--version", help="TPU runtime version (default per generation)")
    p.add_argument("--spot", action="store_true", help="Spot capacity (preemptible, cheaper)")
    p.add_argument("--preemptible", action="store_true", help="legacy preemptible TPU VM (not for queued)")
    p.add_argument("--valid_until_duration", help="queued only: drop the request if not granted within, e.g. 6h")
    p.add_argument("--wait", action="store_true", help="queued only: poll until the resource is ACTIVE")
    p.add_argument("--wait_timeout_s", type=float, default=6 * 3600)

    p = action("setup", "copy the project to every worker and install it")
    p.add_argument("--repo_url", help="git clone this on the workers instead of copying a tarball of git HEAD")
    p.add_argument("--ref", help="git ref to archive or check out (default HEAD / the clone's default branch)")
    p.add_argument("--tarball", default=os.path.join(tempfile.gettempdir(), "momentor_jax_src.tar.gz"))
    p.add_argument("--remote_dir", default="momentor_jax", help="directory under the remote home")
    p.add_argument("--python", default="python3.12", help="remote interpreter for the venv")
    p.add_argument("--extras", default="tpu", help="setup.py extras to install")
    p.add_argument("--gcsfuse_bucket", help="also mount this bucket read-only with Cloud Storage FUSE on every worker "
                   "(data paths under the mount are local paths; see launch/README.md)")
    p.add_argument("--gcsfuse_mount", help="mount point for --gcsfuse_bucket (default /mnt/BUCKET)")

    p = action("train", "start training on every worker (detached; see `logs`)")
    p.add_argument("--config", required=True, help="configs/FILE.py[:variant], relative to the project root")
    p.add_argument("--workdir", help="gs://... (default gs://$MOMENTOR_TPU_BUCKET/runs/RUN)")
    p.add_argument("--bucket", help=f"bucket for the default workdir (default ${ENV_BUCKET})")
    p.add_argument("--run_name", help="names the logs and the default workdir (default: workdir basename or --name)")
    p.add_argument("--remote_dir", default="momentor_jax")
    p.add_argument("--allow_local_workdir", action="store_true", help="allow a non-gs:// workdir (single host)")
    p.add_argument("--gcsfuse_mount", help="the mount point `setup --gcsfuse_bucket` made on every worker: "
                   "data.dir may lie under it")

    p = action("logs", "show the end of the training logs")
    p.add_argument("--run_name")
    p.add_argument("--worker", default="0", help="worker index or 'all'")
    p.add_argument("--lines", type=int, default=50)

    p = action("stop", "stop training started by `train` (all runs, or --run_name)")
    p.add_argument("--run_name")

    action("delete", "delete the TPU VM (or the queued resource and its VM)", queued=True)
    action("status", "describe the TPU VM or the queued resource", queued=True)
    return parser


def commands_for(args, extra: Sequence[str]) -> list[list[str]]:
    if extra and args.action != "train":
        raise LaunchError(f"unexpected arguments: {' '.join(extra)}")
    if args.action == "create":
        return create_commands(args)
    if args.action == "setup":
        return setup_commands(args)
    if args.action == "train":
        return train_commands(args, extra)
    if args.action == "logs":
        return logs_commands(args)
    if args.action == "stop":
        return stop_commands(args)
    if args.action == "delete":
        return delete_commands(args)
    return [describe_command(args)]


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    try:
        commands = commands_for(args, extra)
        if args.dry_run:
            print_commands(commands)
            if args.action == "create" and args.queued and args.wait:
                print_commands([describe_command(args) + ["--format=value(state.state)"]])
            return 0
        execute(commands)
        if args.action == "create" and args.queued and args.wait:
            wait_until_active(args, args.wait_timeout_s)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
