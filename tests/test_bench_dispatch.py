"""tools.bench dispatcher: `--config.KEY=VALUE` overrides reach the suites that take a config, and one
`common.load_config` applies them."""
import pytest

from momentor_jax.tools.bench import __main__ as bench
from momentor_jax.tools.bench import common


def test_config_overrides_are_split_from_the_suite_options():
    rest, overrides = bench.split_config_overrides(
        ["--config", "configs/tiny.py", "--config.batch_size=4", "--steps", "2", "--config.mesh", "(1, 1, 1)"])
    assert rest == ["--config", "configs/tiny.py", "--steps", "2"]
    assert overrides == ["batch_size=4", "mesh=(1, 1, 1)"]


def test_load_config_applies_overrides_as_literals_or_strings():
    config = common.load_config("configs/tiny.py", ["batch_size=4", "model.llm.num_layers=3", "mesh=(1, 1, 1)",
                                                    "trainable=all"])
    assert config.batch_size == 4 and config.model.llm.num_layers == 3
    assert tuple(config.mesh) == (1, 1, 1) and config.trainable == "all"
    with pytest.raises(KeyError, match="no key"):
        common.load_config("configs/tiny.py", ["model.llm.no_such_key=1"])


def test_a_suite_without_a_config_refuses_overrides(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["peak", "--config.batch_size=4", "--out", str(tmp_path)])
