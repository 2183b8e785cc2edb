"""launch/tpu.py: exact gcloud argv lists in --dry_run, clear errors, and the remote shell text really runs."""
import os
import shlex
import subprocess
import sys
import time

import pytest

from launch import tpu

SCOPE = ["--zone=us-east5-a", "--project=my-proj"]


def dry_run(capsys, *argv):
    assert tpu.main([*argv, "--dry_run"]) == 0
    return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


@pytest.fixture(autouse=True)
def gcp_env(monkeypatch):
    monkeypatch.setenv(tpu.ENV_PROJECT, "my-proj")
    monkeypatch.setenv(tpu.ENV_ZONE, "us-east5-a")
    monkeypatch.delenv(tpu.ENV_BUCKET, raising=False)


def test_create_tpu_vm_spot(capsys):
    commands = dry_run(capsys, "create", "--name=mtr-1", "--accelerator_type=v5e-16", "--spot")
    assert commands == [["gcloud", "compute", "tpus", "tpu-vm", "create", "mtr-1", *SCOPE,
                         "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite", "--spot"]]


def test_create_preemptible_with_flags_overriding_env(capsys):
    commands = dry_run(capsys, "create", "--name=mtr-1", "--accelerator_type=v4-32", "--preemptible",
                       "--zone=us-central2-b", "--project=other", "--version=tpu-vm-v4-base")
    assert commands == [["gcloud", "compute", "tpus", "tpu-vm", "create", "mtr-1", "--zone=us-central2-b",
                         "--project=other", "--accelerator-type=v4-32", "--version=tpu-vm-v4-base", "--preemptible"]]


def test_create_queued_resource_and_wait(capsys):
    commands = dry_run(capsys, "create", "--name=mtr-1", "--accelerator_type=v5p-64", "--queued", "--spot",
                       "--valid_until_duration=6h", "--wait")
    assert commands == [
        ["gcloud", "compute", "tpus", "queued-resources", "create", "mtr-1", "--node-id=mtr-1", *SCOPE,
         "--accelerator-type=v5p-64", "--runtime-version=v2-alpha-tpuv5", "--valid-until-duration=6h", "--spot"],
        ["gcloud", "compute", "tpus", "queued-resources", "describe", "mtr-1", *SCOPE, "--format=value(state.state)"],
    ]


def test_setup_from_tarball(capsys):
    commands = dry_run(capsys, "setup", "--name=mtr-1", "--tarball=/tmp/src.tar.gz")
    assert commands[0] == ["git", "-C", tpu.REPO_ROOT, "archive", "--format=tar.gz", "-o", "/tmp/src.tar.gz", "HEAD"]
    assert os.path.isdir(os.path.join(tpu.REPO_ROOT, "launch"))
    assert commands[1] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/src.tar.gz", "mtr-1:momentor_jax.tar.gz",
                           *SCOPE, "--worker=all"]
    head, remote = commands[2][:-1], commands[2][-1]
    assert head == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mtr-1", *SCOPE, "--worker=all"]
    assert remote.startswith("--command=rm -rf ~/momentor_jax && mkdir -p ~/momentor_jax && "
                             "tar -xzf ~/momentor_jax.tar.gz -C ~/momentor_jax && ")
    assert remote.endswith("cd ~/momentor_jax && python3.12 -m venv .venv && .venv/bin/pip install -q --upgrade pip"
                           " && .venv/bin/pip install -q -e '.[tpu]'")
    assert len(commands) == 3


def test_setup_from_git_quotes_user_input(capsys):
    commands = dry_run(capsys, "setup", "--name=mtr-1", "--repo_url=https://example.com/r.git; rm -rf /",
                       "--ref=v1 && echo")
    assert len(commands) == 1
    remote = commands[0][-1].removeprefix("--command=")
    assert "git clone --quiet 'https://example.com/r.git; rm -rf /' ~/momentor_jax" in remote
    assert "git checkout --quiet 'v1 && echo'" in remote


def test_setup_mounts_a_bucket_with_gcsfuse_on_every_worker(capsys, tmp_path):
    commands = dry_run(capsys, "setup", "--name=mtr-1", "--tarball=/tmp/src.tar.gz",
                       "--gcsfuse_bucket=gs://my-data", "--gcsfuse_mount=/mnt/data")
    head, remote = commands[-1][:-1], commands[-1][-1].removeprefix("--command=")
    assert head == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mtr-1", *SCOPE, "--worker=all"]
    install, mount = remote.split(" && (command -v gcsfuse", 1)
    assert install.endswith(".venv/bin/pip install -q -e '.[tpu]'")
    assert mount.endswith("sudo mkdir -p /mnt/data && sudo chown \"$(id -u):$(id -g)\" /mnt/data && "
                          "(mountpoint -q /mnt/data || gcsfuse -o ro --implicit-dirs --type-cache-max-size-mb=-1 "
                          "--stat-cache-max-size-mb=-1 --kernel-list-cache-ttl-secs=-1 --metadata-cache-ttl-secs=-1 "
                          "my-data /mnt/data)")
    # The remote text parses as shell (bash -n): quoting survives the one string gcloud passes to ssh.
    script = tmp_path / "remote.sh"
    script.write_text(remote)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    default = dry_run(capsys, "setup", "--name=mtr-1", "--tarball=/tmp/src.tar.gz", "--gcsfuse_bucket=my-data")
    assert default[-1][-1].endswith("my-data /mnt/my-data)")
    for bad in (["--gcsfuse_bucket=My Bucket;rm"], ["--gcsfuse_bucket=my-data", "--gcsfuse_mount=data"],
                ["--gcsfuse_bucket=my-data", "--gcsfuse_mount=/mnt/$(reboot)"]):
        assert tpu.main(["setup", "--name=mtr-1", *bad, "--dry_run"]) == 2
        assert "--gcsfuse_" in capsys.readouterr().err
    # train: data.dir under the declared mount is accepted, elsewhere it is refused as before.
    train = ["train", "--name=mtr-1", "--config=configs/tiny.py", "--workdir=gs://b/w"]
    assert dry_run(capsys, *train, "--gcsfuse_mount=/mnt/data", "--config.data.dir=/mnt/data/moment10m")
    assert tpu.main([*train, "--gcsfuse_mount=/mnt/data", "--config.data.dir=/home/me/data", "--dry_run"]) == 2
    assert "--gcsfuse_mount" in capsys.readouterr().err


def test_train_on_all_workers(capsys):
    commands = dry_run(capsys, "train", "--name=mtr-1", "--config=configs/momentor_7b.py:gesm",
                       "--workdir=gs://bkt/runs/r1", "--config.learning_rate=1e-05", "--config.data.dir=gs://bkt/d")
    assert len(commands) == 1
    assert commands[0][:-1] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mtr-1", *SCOPE, "--worker=all"]
    remote = commands[0][-1].removeprefix("--command=")
    inner = (".venv/bin/python -m momentor_jax.train --config=configs/momentor_7b.py:gesm "
             "--workdir=gs://bkt/runs/r1 --config.learning_rate=1e-05 --config.data.dir=gs://bkt/d")
    chain = f"export MOMENTOR_DISTRIBUTED=1; {inner} > ~/logs/r1/train.\"$(hostname)\".log 2>&1"
    assert remote == ("mkdir -p ~/logs/r1 && cd ~/momentor_jax && { setsid nohup bash -c " + shlex.quote(chain)
                      + " > /dev/null 2>&1 < /dev/null & echo $! > ~/logs/r1/pid; }")


def test_train_default_workdir_from_bucket(capsys, monkeypatch):
    monkeypatch.setenv(tpu.ENV_BUCKET, "gs://bkt")
    commands = dry_run(capsys, "train", "--name=mtr-1", "--config=configs/tiny.py", "--run_name=exp7")
    assert "--workdir=gs://bkt/runs/exp7" in commands[0][-1]
    assert "~/logs/exp7/train." in commands[0][-1]


def test_stop_logs_delete_status(capsys):
    (stop,) = dry_run(capsys, "stop", "--name=mtr-1", "--run_name=r1")
    assert stop[:-1] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mtr-1", *SCOPE, "--worker=all"]
    assert "~/logs/r1/pid" in stop[-1] and "kill -TERM --" in stop[-1]
    (logs,) = dry_run(capsys, "logs", "--name=mtr-1", "--run_name=r1", "--worker=3", "--lines=20")
    assert logs == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mtr-1", *SCOPE, "--worker=3",
                    "--command=tail -n 20 ~/logs/r1/*.log"]
    assert dry_run(capsys, "delete", "--name=mtr-1") == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "mtr-1", *SCOPE, "--quiet"]]
    assert dry_run(capsys, "delete", "--name=mtr-1", "--queued") == [
        ["gcloud", "compute", "tpus", "queued-resources", "delete", "mtr-1", *SCOPE, "--force", "--quiet"]]
    assert dry_run(capsys, "status", "--name=mtr-1") == [
        ["gcloud", "compute", "tpus", "tpu-vm", "describe", "mtr-1", *SCOPE]]


@pytest.mark.parametrize("argv, message", [
    (["create", "--name=mtr-1", "--accelerator_type=v5p-64"], "MOMENTOR_TPU_ZONE"),
    (["create", "--name=Bad_Name", "--accelerator_type=v5p-64"], "--name="),
    (["create", "--name=mtr-1", "--accelerator_type=tpu64"], "--accelerator_type="),
    (["create", "--name=mtr-1", "--accelerator_type=v5p-8", "--queued", "--preemptible"], "--spot"),
    (["train", "--name=mtr-1", "--config=configs/tiny.py"], "MOMENTOR_TPU_BUCKET"),
    (["train", "--name=mtr-1", "--config=configs/tiny.py", "--workdir=/tmp/w"], "gs://"),
    (["train", "--name=mtr-1", "--config=c.py", "--workdir=gs://b/w", "--lr=1"], "--config.key=value"),
    (["stop", "--name=mtr-1", "--run_name=../x"], "--run_name="),
    (["train", "--name=mtr-1", "--config=configs/nope.py", "--workdir=gs://b/w"], "no such file"),
    (["train", "--name=mtr-1", "--config=configs/momentor_7b.py:stage9", "--workdir=gs://b/w"],
     "unknown config variant"),
    (["train", "--name=mtr-1", "--config=configs/tiny.py", "--workdir=gs://b/w", "--config.learning_rat=1"],
     "has no key 'learning_rat'"),
    (["train", "--name=mtr-1", "--config=configs/tiny.py", "--workdir=gs://b/w", "--config.data.nope.x=1"],
     "has no key 'data.nope'"),
    (["train", "--name=mtr-1", "--config=configs/momentor_7b.py:gesm", "--workdir=gs://b/w",
      "--config.data.dir=/home/me/data"], "data.dir='/home/me/data'"),
    (["train", "--name=mtr-1", "--config=configs/momentor_7b.py:gesm", "--workdir=gs://b/w"], "data.dir is unset"),
])
def test_clear_errors(capsys, monkeypatch, argv, message):
    if message == tpu.ENV_ZONE:
        monkeypatch.delenv(tpu.ENV_ZONE)
    assert tpu.main([*argv, "--dry_run"]) == 2
    assert message in capsys.readouterr().err


def test_remote_train_script_runs_detached_and_logs_per_worker(tmp_path):
    """The shell text the workers get: run it here with HOME=tmp_path and a stand-in for the trainer."""
    (tmp_path / "proj").mkdir()
    marker = tmp_path / "order.txt"
    runs = [(name, [sys.executable, "-c", f"import sys; open({str(marker)!r}, 'a').write({name!r} + ' ');"
                    f"print('hello from', {name!r}, sys.argv[1:])", "--flag=a b"]) for name in ("one", "two")]
    script = tpu.remote_train_script(runs, "exp", "proj")
    env = {**os.environ, "HOME": str(tmp_path)}
    subprocess.run(["bash", "-c", script], env=env, check=True, timeout=30)
    host = subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip()
    logs = [tmp_path / "logs" / "exp" / f"{name}.{host}.log" for name in ("one", "two")]
    deadline = time.monotonic() + 30
    while not all(log.exists() and log.stat().st_size for log in logs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert logs[0].read_text() == "hello from one ['--flag=a b']\n"
    assert logs[1].read_text() == "hello from two ['--flag=a b']\n"
    assert marker.read_text() == "one two "
    assert (tmp_path / "logs" / "exp" / "pid").read_text().strip().isdigit()
