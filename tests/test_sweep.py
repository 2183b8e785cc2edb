"""launch/sweep.py: sweep() expansion, run names, local sequential runs with failures counted, TPU hand-off."""
import shlex
import subprocess
import sys

import pytest

from launch import sweep, tpu

CONFIG = '''
def get_config(arg=None):
    return {"learning_rate": 1e-3}

def sweep(arg=None):
    return [{"optim.learning_rate": 2e-05, "batch_size": 64},
            {"optim.learning_rate": 2e-05, "batch_size": 64},
            {"model.llm.attention": "splash x/y", "scan": False},
            {}]
'''


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "swept.py"
    path.write_text(CONFIG)
    return str(path)


def test_run_names():
    assert sweep.run_name({"optim.learning_rate": 2e-05, "batch_size": 64}) == "learning_rate=2e-05,batch_size=64"
    assert sweep.run_name({"a.lr": 1, "b.lr": 2}) == "a.lr=1,b.lr=2"  # same short key: keep the full keys
    assert sweep.run_name({"name": "a b/c"}) == "name=a_b_c"
    assert sweep.run_name({}) == "base"
    long_name = sweep.run_name({f"key{i}": "x" * 20 for i in range(10)})
    assert len(long_name) == sweep.MAX_NAME_LENGTH


def test_dry_run_local(capsys, config_file):
    assert sweep.main([f"--config={config_file}:v", "--workdir_root=/tmp/root/", "--dry_run"]) == 0
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    head = [sys.executable, "-m", "momentor_jax.train", f"--config={config_file}:v"]
    assert commands == [
        [*head, "--workdir=/tmp/root/learning_rate=2e-05,batch_size=64", "--config.optim.learning_rate=2e-05",
         "--config.batch_size=64"],
        [*head, "--workdir=/tmp/root/learning_rate=2e-05,batch_size=64-1", "--config.optim.learning_rate=2e-05",
         "--config.batch_size=64"],
        [*head, "--workdir=/tmp/root/attention=splash_x_y,scan=false", "--config.model.llm.attention=splash x/y",
         "--config.scan=false"],
        [*head, "--workdir=/tmp/root/base"],
    ]


def test_common_overrides_go_to_every_run(capsys, config_file):
    assert sweep.main([f"--config={config_file}", "--workdir_root=/r", "--config.data.dir=/data", "--dry_run"]) == 0
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert [c[5] for c in commands] == ["--config.data.dir=/data"] * 4
    assert commands[0][6:] == ["--config.optim.learning_rate=2e-05", "--config.batch_size=64"]
    assert sweep.main([f"--config={config_file}", "--workdir_root=/r", "--lr=1", "--dry_run"]) == 2
    assert "--config.key=value" in capsys.readouterr().err


def test_dry_run_tpu_round_robin(capsys, config_file):
    argv = [f"--config={config_file}", "--workdir_root=gs://b/s", "--tpu=vm-a", "--tpu=vm-b", "--zone=z",
            "--project=p", "--dry_run"]
    assert sweep.main(argv) == 0
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert [c[:9] for c in commands] == [
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, "--zone=z", "--project=p", "--worker=all"]
        for name in ("vm-a", "vm-b")]
    remote_a, remote_b = (c[9].removeprefix("--command=") for c in commands)
    assert "~/logs/sweep-swept/pid" in remote_a
    assert "--workdir=gs://b/s/learning_rate=2e-05,batch_size=64 " in remote_a  # runs 0 and 2 on vm-a
    assert "--workdir=gs://b/s/attention=splash_x_y,scan=false " in remote_a
    assert "--workdir=gs://b/s/learning_rate=2e-05,batch_size=64-1 " in remote_b  # runs 1 and 3 on vm-b
    assert "--workdir=gs://b/s/base " in remote_b


def test_tpu_needs_gcs(capsys, config_file):
    assert sweep.main([f"--config={config_file}", "--workdir_root=/local", "--tpu=vm", "--zone=z", "--project=p",
                       "--dry_run"]) == 2
    assert "gs://" in capsys.readouterr().err


def test_missing_sweep_function(capsys, tmp_path):
    path = tmp_path / "nosweep.py"
    path.write_text("def get_config(arg=None):\n    return {}\n")
    assert sweep.main([f"--config={path}", "--workdir_root=/tmp/x", "--dry_run"]) == 2
    assert "no sweep()" in capsys.readouterr().err


def test_project_configs_expand():
    for config in ("configs/tiny.py", "configs/demo.py", "configs/momentor_7b.py:instruct"):
        runs = sweep.plan(config, "/r", sweep.load_sweep(config))
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
    config = tmp_path / "two.py"
    config.write_text("def sweep():\n    return [{'lr': 1}, {'lr': 2}]\n")
    assert sweep.main([f"--config={config}", f"--workdir_root={tmp_path}/runs"]) == 0
    lines = record.read_text().splitlines()
    assert lines == [repr([f"{tmp_path}/runs/lr=1", "--config.lr=1"]), repr([f"{tmp_path}/runs/lr=2", "--config.lr=2"])]
