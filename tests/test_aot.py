"""tools/aot.py: slice shapes, a real libtpu compile of the tiny train step for v5e-8, the CLI's fit verdict, and
the batch search."""
import math
import os
import subprocess
import sys

import jax
import pytest

from momentor_jax.tools import aot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name, topology, chips, chip_config, wrap, hbm_gib", [
    ("v4-8", "v4:2x2x1", 4, "megacore", (False, False, False), 32),
    ("v4-128", "v4:4x4x4", 64, "megacore", (True, True, True), 32),
    ("v5p-64", "v5:2x4x4", 32, "megacore", (False, False, False), 95),
    ("v5p-256", "v5:4x4x8", 128, "megacore", (True, True, True), 95),
    ("v5e-8", "v5e:2x4", 8, "default", (False, False, False), 16),
    ("v5litepod-128", "v5e:8x16", 128, "default", (False, True, False), 16),
    ("v5e-256", "v5e:16x16", 256, "default", (True, True, False), 16),
    ("v6e-32", "v6e:4x8", 32, "default", (False, False, False), 32),
])
def test_parse_topology(name, topology, chips, chip_config, wrap, hbm_gib):
    target = aot.parse_topology(name)
    assert (target.topology_name, target.chips, target.chip_config_name, target.wrap) == (
        topology, chips, chip_config, wrap)
    assert target.hbm_bytes == hbm_gib * aot.GiB


@pytest.mark.parametrize("name", ["v5p-6", "v7-8", "tpu-8", "v5e-12", "v4"])
def test_parse_topology_rejects(name):
    with pytest.raises(ValueError, match="--topology"):
        aot.parse_topology(name)


def tiny_config():
    from configs import tiny  # noqa: PLC0415
    return tiny.get_config()


def test_tiny_train_step_compiles_for_v5e_8():
    target = aot.parse_topology("v5e-8")
    devices = aot.topology_devices(target)
    assert len(devices) == 8 and devices[0].platform == "tpu" and "v5" in devices[0].device_kind
    config = tiny_config()
    step = aot.compile_for_devices(config, devices)
    assert step.mesh_shape == {"data": 8, "fsdp": 1, "tensor": 1}
    assert step.batch_size == config.batch_size and step.num_trainable < step.num_params
    memory = aot.memory_report(step.compiled, target.hbm_bytes)
    # mesh (data=8, fsdp=1): every chip holds the whole fp32 state (params + 2 Adam moments for the trainable part)
    state_bytes = 4 * (step.num_params + 2 * step.num_trainable)
    assert state_bytes <= memory.arguments < state_bytes + 2 ** 20
    assert memory.aliased >= 4 * step.num_trainable  # donated state is updated in place
    assert 0 < memory.total < target.hbm_bytes and memory.fits
    assert step.model_flops_per_step > 0
    assert jax.devices()[0].platform == "cpu"  # compiling for TPU leaves the host's own backend alone


def test_cli_reports_and_exits_nonzero_when_it_does_not_fit():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    base = [sys.executable, "-m", "momentor_jax.tools.aot", "--config=configs/tiny.py", "--topology=v4-8",
            "--config.batch_size=4"]
    result = subprocess.run([*base, "--hbm_gib=0.001"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    out = result.stdout
    for field in ("mesh            {'data': 4, 'fsdp': 1, 'tensor': 1}", "arguments", "temporaries",
                  "generated code", "model FLOPs", "DOES NOT FIT"):
        assert field in out, out


def test_find_max_batch_bisects_multiples_of_data_parallel_size(monkeypatch):
    config = tiny_config()
    config.mesh = (2, 1, 1)
    devices = jax.devices()[:2]
    target = aot.TpuTarget("fake-2", "v5e", "v5e:1x2", "default", 2, hbm_bytes=100)
    tried = []

    def fake_try_compile(config, devices, target, batch_size):
        tried.append(batch_size)
        if batch_size > 40:
            return None, None, "RESOURCE_EXHAUSTED: out of memory"
        memory = aot.MemoryReport(arguments=batch_size * 2, outputs=0, aliased=0, temporaries=0, generated_code=0,
                                  hbm=target.hbm_bytes)
        return object(), memory, ""

    monkeypatch.setattr(aot, "try_compile", fake_try_compile)
    best, (step, memory) = aot.find_max_batch(config, devices, target, limit=1024, log=lambda _: None)
    assert best == 40 and memory.total == 80
    assert all(b % 2 == 0 for b in tried) and len(tried) == len(set(tried))
    assert math.ceil(math.log2(64 / 2)) <= len(tried) <= 12
    best, found = aot.find_max_batch(config, devices, target, limit=16, log=lambda _: None)
    assert best == 16
