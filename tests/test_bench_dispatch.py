"""tools.bench dispatcher: the suites take `--config` and `--config.KEY=VALUE` as every command does (config_flags);
the suites without a config refuse them; bad flags are one-line usage errors; the gpu scaling yields to overrides."""
import pytest

from momentor_jax import cli
from momentor_jax.tools.bench import __main__ as bench
from momentor_jax.tools.bench import common, gpu


def _parse(argv):
    return cli.parse_flags(["bench", *argv], lambda flag_values, a: common.define_config(flag_values, a))[0]


def test_config_overrides_are_applied_and_recorded():
    args = _parse(["--config", "configs/tiny.py", "--config.batch_size=4", "--config.model.llm.num_layers=3",
                   "--config.mesh", "(1, 1, 1)", "--config.trainable=all"])
    config = args.config
    assert config.batch_size == 4 and config.model.llm.num_layers == 3
    assert tuple(config.mesh) == (1, 1, 1) and config.trainable == "all"
    assert common.config_record(args) == {
        "config": "configs/tiny.py",
        "overrides": ["batch_size=4", "model.llm.num_layers=3", "mesh=(1, 1, 1)", "trainable=all"]}
    assert common.config_record(_parse([]))["config"] == "configs/bench.py"


def test_gpu_scaling_then_the_command_line_overrides():
    args = _parse(["--config.batch_size=2"])
    config = gpu.gpu_config(args.config, "1b", {"batch_size": 2})
    assert config.model.llm.num_layers == 16 and config.batch_size == 2
    assert config.model.llm.remat_policy == "none"  # tied to remat_policy by a FieldReference


@pytest.mark.parametrize("argv", [["peak", "--config.batch_size=4"], ["train", "--config.no_such_key=1"],
                                  ["train", "--no_such_flag=1"], ["train", "extra"]])
def test_bad_flags_exit_2_in_one_line(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        bench.main([*argv, "--out", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 2
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, key", [
    (["train", "--config.log_every_steps=0"], "log_every_steps"),
    (["train", "--length_model", "--config.data.packing=True", "--config.data.max_segments=0"], "data.max_segments"),
    (["torch", "--length_model", "--config.data.packing=True", "--config.data.max_segments=0"],
     "data.max_segments")])
def test_bad_config_values_exit_2_naming_the_key(argv, key, tmp_path, capsys):
    # Values the trainer's config checks reject reach a suite as one usage line, as a bad flag does.
    with pytest.raises(SystemExit) as info:
        bench.main([argv[0], "--config", "configs/tiny.py", *argv[1:], "--out", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --config: {key} ") and len(err.splitlines()) == 2
    assert not list(tmp_path.iterdir())


def test_help_shows_the_suite_and_its_flags(capsys):
    with pytest.raises(SystemExit) as info:
        bench.main(["train", "--help"])
    assert info.value.code == 0
    shown = capsys.readouterr().out
    assert "`train`" in shown and "--steps" in shown and "--config" in shown
