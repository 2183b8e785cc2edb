"""predict, evaluate and the decode bench start JAX on the CPU with XLA's small-while-loop hoisting off."""
import os
import subprocess
import sys

import pytest

from momentor_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG = f"--xla_backend_extra_options={cli.CPU_DECODE_OPTION}"
# Runs a command module as `python -m` would, with --help (it exits before loading anything), then starts JAX's
# backend (XLA parses XLA_FLAGS there and refuses unknown flags) and prints the flags it started with.
PROBE = """
import atexit, os, runpy, sys
def report():
    import jax
    jax.devices()
    print("XLA_FLAGS=" + os.environ.get("XLA_FLAGS", ""), flush=True)
atexit.register(report)
module, sys.argv = sys.argv[1], [sys.argv[1]] + sys.argv[2:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _probe(module, *args, **env):
    environ = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    environ.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO, **env)
    proc = subprocess.run([sys.executable, "-c", PROBE, module, *args], cwd=REPO, env=environ, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("XLA_FLAGS=")]
    assert lines, proc.stderr[-3000:]
    return lines[-1].removeprefix("XLA_FLAGS=")


@pytest.mark.parametrize("module, args", [("momentor_jax.predict", ["--help"]), ("momentor_jax.evaluate", ["--help"]),
                                          ("momentor_jax.tools.bench", ["decode", "--help"])])
def test_decoding_commands_start_jax_with_the_flag(module, args):
    assert _probe(module, *args).split() == [FLAG]


def test_the_users_own_backend_options_win():
    own = "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=1024"
    assert _probe("momentor_jax.predict", "--help", XLA_FLAGS=own) == own


def test_only_on_the_cpu(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    assert not cli.cpu_decode_flags() and "XLA_FLAGS" not in os.environ
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert cli.cpu_decode_flags()
    assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {FLAG}"
