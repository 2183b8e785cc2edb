"""launch/sweep.py: sweep() expansion, run names, local sequential runs with failures counted, TPU hand-off,
usage errors."""
import os
import shlex
import subprocess
import sys

import pytest

from launch import sweep, tpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "configs/tiny.py"  # sweep(): learning_rate 1e-3, 3e-3


def test_run_names():
    assert sweep.run_name({"optim.learning_rate": 2e-05, "batch_size": 64}) == "learning_rate=2e-05,batch_size=64"
    assert sweep.run_name({"a.lr": 1, "b.lr": 2}) == "a.lr=1,b.lr=2"  # same short key: keep the full keys
    assert sweep.run_name({"name": "a b/c"}) == "name=a_b_c"
    assert sweep.run_name({}) == "base"
    long_name = sweep.run_name({f"key{i}": "x" * 20 for i in range(10)})
    assert len(long_name) == sweep.MAX_NAME_LENGTH


def _usage_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        sweep.main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_dry_run_local(capsys):
    assert sweep.main([f"--config={TINY}:instruct", "--workdir_root=/tmp/root/", "--dry_run"]) == 0
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    head = [sys.executable, "-m", "momentor_jax.train", f"--config={TINY}:instruct"]
    assert commands == [[*head, "--workdir=/tmp/root/learning_rate=0.001", "--config.learning_rate=0.001"],
                        [*head, "--workdir=/tmp/root/learning_rate=0.003", "--config.learning_rate=0.003"]]


def test_plan_makes_names_unique_and_writes_values_as_flags():
    runs = sweep.plan("/r", [{"model.llm.attention": "splash x/y", "scan": False}, {"batch_size": 64},
                             {"batch_size": 64}, {}], ["--config.data.dir=/d"])
    assert runs == [
        ("attention=splash_x_y,scan=false", "/r/attention=splash_x_y,scan=false",
         ["--config.data.dir=/d", "--config.model.llm.attention=splash x/y", "--config.scan=false"]),
        ("batch_size=64", "/r/batch_size=64", ["--config.data.dir=/d", "--config.batch_size=64"]),
        ("batch_size=64-1", "/r/batch_size=64-1", ["--config.data.dir=/d", "--config.batch_size=64"]),
        ("base", "/r/base", ["--config.data.dir=/d"])]


def test_common_overrides_go_to_every_run_and_are_checked(capsys, tmp_path):
    argv = [f"--config={TINY}", "--workdir_root=/r", "--config.data.dir=/data", "--config.mesh=(1, 1, 1)",
            "--dry_run"]
    assert sweep.main(argv) == 0
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert [c[5:7] for c in commands] == [["--config.data.dir=/data", "--config.mesh=(1, 1, 1)"]] * 2
    assert [c[7:] for c in commands] == [["--config.learning_rate=0.001"], ["--config.learning_rate=0.003"]]
    assert "lr" in _usage_error(capsys, [f"--config={TINY}", "--workdir_root=/r", "--lr=1", "--dry_run"])
    assert "no_such_key" in _usage_error(capsys, [f"--config={TINY}", "--workdir_root=/r", "--config.no_such_key=1"])
    assert "extra" in _usage_error(capsys, [f"--config={TINY}", "--workdir_root=/r", "extra"])
    assert "workdir_root" in _usage_error(capsys, [f"--config={TINY}"])
    outside = tmp_path / "tiny.py"
    outside.write_text(open(os.path.join(REPO, TINY)).read())
    assert sweep.main([f"--config={outside}", "--workdir_root=/r", "--dry_run"]) == 2
    assert "configs package" in capsys.readouterr().err


def test_runs_name_the_config_inside_the_repository(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sweep.main([f"--config={TINY}", "--workdir_root=/r", "--dry_run"]) == 0
    assert f"--config={TINY}" in shlex.split(capsys.readouterr().out.splitlines()[0])


def test_dry_run_tpu_round_robin(capsys):
    argv = ["--config=configs/momentor_7b.py:instruct", "--workdir_root=gs://b/s", "--tpu=vm-a", "--tpu=vm-b",
            "--zone=z", "--project=p", "--dry_run"]
    assert sweep.main(argv) == 0
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert [c[:9] for c in commands] == [
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, "--zone=z", "--project=p", "--worker=all"]
        for name in ("vm-a", "vm-b")]
    remote_a, remote_b = (c[9].removeprefix("--command=") for c in commands)
    assert "~/logs/sweep-momentor_7b-instruct/pid" in remote_a
    assert "--config=configs/momentor_7b.py:instruct " in remote_a
    lr_bs = [f"learning_rate={lr},batch_size={bs}" for lr in ("1e-05", "2e-05", "5e-05") for bs in (32, 64)]
    for i, name in enumerate(lr_bs):  # runs 0, 2, 4 on vm-a; 1, 3, 5 on vm-b
        assert f"--workdir=gs://b/s/{name} " in (remote_a if i % 2 == 0 else remote_b)


def test_tpu_needs_gcs(capsys):
    assert sweep.main([f"--config={TINY}", "--workdir_root=/local", "--tpu=vm", "--zone=z", "--project=p",
                       "--dry_run"]) == 2
    assert "gs://" in capsys.readouterr().err


def test_missing_sweep_function(capsys):
    assert sweep.main(["--config=configs/bench.py", "--workdir_root=/tmp/x", "--dry_run"]) == 2
    assert "no sweep()" in capsys.readouterr().err


def test_project_configs_expand():
    for config, variant in (("configs/tiny.py", None), ("configs/demo.py", None), ("configs/momentor_7b.py",
                                                                                     "instruct")):
        runs = sweep.plan("/r", sweep.load_sweep(os.path.join(REPO, config), variant))
        assert len(runs) >= 2
        assert len({name for name, _, _ in runs}) == len(runs)


def test_local_runs_continue_after_failure():
    calls = []

    def fake_runner(command, cwd):
        calls.append(command)
        return subprocess.CompletedProcess(command, 3 if len(calls) == 1 else 0)

    failed = sweep.run_local([["a"], ["b"], ["c"]], ["n1", "n2", "n3"], runner=fake_runner)
    assert calls == [["a"], ["b"], ["c"]]
    assert failed == ["n1"]


def test_local_sweep_runs_commands_for_real(tmp_path, monkeypatch):
    """main() without --dry_run really runs each command; a stand-in trainer records its argv."""
    record = tmp_path / "argv.txt"
    stand_in = [sys.executable, "-c", f"import sys; open({str(record)!r}, 'a').write(repr(sys.argv[1:]) + '\\n')"]
    monkeypatch.setattr(tpu, "train_argv", lambda config, workdir, flags, python=None: [*stand_in, workdir, *flags])
    assert sweep.main([f"--config={TINY}", f"--workdir_root={tmp_path}/runs"]) == 0
    lines = record.read_text().splitlines()
    assert lines == [repr([f"{tmp_path}/runs/learning_rate=0.001", "--config.learning_rate=0.001"]),
                     repr([f"{tmp_path}/runs/learning_rate=0.003", "--config.learning_rate=0.003"])]
