"""The `train` benchmark suite end to end on the tiny config, its in-memory batch, and the `gpu` suite's skip path."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from momentor_jax import cli, constants
from momentor_jax.models import config as model_configs
from momentor_jax.tools.bench import __main__ as bench
from momentor_jax.tools.bench import gpu, train


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_synthetic_batch_has_the_loader_layout():
    model = model_configs.tiny()
    batch = train.synthetic_batch(model, batch_size=3, max_length=128, seed=1)
    special = constants.special_token_ids(model.llm.vocab_size)
    assert batch["frames"].shape == (3, model.num_frames, 32, 32, 3) and batch["frames"].dtype == np.uint8
    for row in range(3):
        ids, mask = batch["input_ids"][row], batch["loss_mask"][row]
        real = int(batch["segment_ids"][row].sum())
        assert 48 <= real <= 128 and not batch["segment_ids"][row, real:].any()
        assert np.sum(ids == special["vid_patch"]) == model.num_frames
        supervised = np.flatnonzero(mask)
        assert 0 < len(supervised) < real
        np.testing.assert_array_equal(batch["targets"][row, supervised], ids[supervised + 1])
        assert not batch["targets"][row][mask == 0].any()
        temporal = batch["targets"][row] == special["temp_output"]
        assert temporal.any() and np.all(batch["target_times"][row][~temporal] == 0)
        placeholders = (ids == special["temp_output"]) | (ids == special["temp_input"])
        assert np.all(batch["placeholder_times"][row][~placeholders] == 0)
        np.testing.assert_array_equal(batch["positions"][row, :real], np.arange(real))


def _env_without_allocator_settings() -> dict:
    return {k: v for k, v in os.environ.items() if k not in cli.RETAINED_MEMORY_ENV}


def test_train_suite_writes_its_figures(tmp_path):
    """The real command: it re-executes itself with the allocator settings (cli.retain_freed_memory) and says so."""
    overrides = ["--config.trainable=all", "--config.mesh", "(1, 1, 1)"]
    env = _env_without_allocator_settings()
    done = subprocess.run([sys.executable, "-m", "momentor_jax.tools.bench", "train", "--config", "configs/tiny.py",
                           *overrides, "--steps", "2", "--warmup", "1", "--peak_size", "256", "--out", str(tmp_path)],
                          cwd=cli.REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    settings = " ".join(f"{name}={value}" for name, value in cli.RETAINED_MEMORY_ENV.items())
    assert settings in done.stdout.splitlines()[0]  # the hardware line
    result = json.loads((tmp_path / "train.json").read_text())
    assert result["hardware"]["malloc"] == cli.RETAINED_MEMORY_ENV
    assert result["suite"] == "train" and result["hardware"]["backend"] == "cpu"
    assert result["overrides"] == ["trainable=all", "mesh=(1, 1, 1)"]
    assert result["num_trainable"] == result["num_params"] and result["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
    step = result["step_time_s"]
    assert step["repeats"] == 2 and 0 < step["min_s"] <= step["median_s"] <= step["max_s"]
    for key in ("examples_per_s", "tokens_per_s", "model_flops_per_step", "compiler_flops_per_step",
                "achieved_flops_per_s", "peak_flops_per_s", "mfu", "mfu_best_step", "mfu_cpu_time", "loss"):
        assert _positive(result[key]), key
    assert result["tokens_per_s"] == pytest.approx(result["examples_per_s"] * result["max_length"])
    # XLA counts the elementwise work too, so its count is of the same order as ours, not equal.
    assert 0.5 < result["compiler_flops_per_step"] / result["model_flops_per_step"] < 3
    assert result["peak_flops_per_s"] >= max(result["step_time_s"]["probe_flops_per_s"])


@pytest.mark.skipif(gpu._nvidia_gpu_visible(), reason="an NVIDIA GPU is here: the suite would run, not skip")
def test_gpu_suite_skips_without_a_gpu(tmp_path, capsys):
    assert bench.main(["gpu", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["skipped"] is True and "NVIDIA GPU" in result["reason"]
    assert "skipped" in capsys.readouterr().out


def test_train_suite_packed_vs_unpacked_on_the_length_model(tmp_path):
    overrides = ["--config.mesh", "(1, 1, 1)", "--config.max_length=1024",
                 "--config.model.llm.max_position_embeddings=1024"]
    assert bench.main(["train", "--config", "configs/tiny.py", *overrides, "--length_model", "--steps", "1",
                       "--warmup", "0", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "train.json").read_text())
    unpacked, packed = result["unpacked"], result["packed"]
    assert unpacked["dialogues_per_step"] == result["batch_size"] < packed["dialogues_per_step"]
    assert packed["useful_tokens_per_step"] > 3 * unpacked["useful_tokens_per_step"]
    assert packed["slot_efficiency"] > 0.9 > 0.5 > unpacked["slot_efficiency"]
    for side in (unpacked, packed):
        assert _positive(side["useful_tokens_per_s"]) and _positive(side["step_time_s"]["median_s"])
    assert result["packed_over_unpacked"] == pytest.approx(packed["useful_tokens_per_s"]
                                                           / unpacked["useful_tokens_per_s"])


RETAIN_PROBE = """
import ctypes, os, resource, sys
from momentor_jax import cli
cli.retain_freed_memory()  # replaces this process unless the settings are already in the environment
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
size = 256 << 20
for attempt in range(2):
    block = libc.malloc(ctypes.c_size_t(size))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(block, 1, size)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    libc.free(ctypes.c_void_p(block))
print(os.environ.get("MALLOC_ARENA_MAX"), faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")
def test_retained_memory_reuses_a_freed_block_without_page_faults():
    """A 256 MiB block freed and allocated again: by default glibc maps it fresh (every page faults again); under
    the settings retain_freed_memory re-executes with, the second block reuses the first one's pages."""
    def probe(**extra):
        done = subprocess.run([sys.executable, "-c", RETAIN_PROBE], env={**_env_without_allocator_settings(), **extra},
                              cwd=cli.REPO_ROOT, capture_output=True, text=True, timeout=120, check=True)
        arena, faults = done.stdout.split()
        return arena, int(faults)

    pages = (256 << 20) // os.sysconf("SC_PAGE_SIZE")
    arena, faults = probe()                                      # re-executed with the settings
    assert arena == cli.RETAINED_MEMORY_ENV["MALLOC_ARENA_MAX"] and faults < pages // 100
    arena, faults = probe(MALLOC_ARENA_MAX="8")                  # a user's own setting: no re-execution
    assert arena == "8" and faults > pages // 2                  # glibc's default: the block mapped afresh
