"""Every test process sees 8 simulated CPU devices, so sharding tests run on any machine.

GCS: `gcs_server` (session) is fake-gcs-server on loopback behind a fault proxy (momentor_jax/tools/gcs_emulator.py);
`gcs_bucket` gives each test its own empty bucket, 'gs://<name>', with the proxy's faults cleared.
"""
import gc
import itertools
import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)

_BUCKETS = itertools.count()


@pytest.fixture(scope="session")
def gcs_server():
    from momentor_jax.tools.gcs_emulator import Emulator
    saved = {k: os.environ.get(k) for k in ("MOMENTOR_GCS_RETRY_DELAY",)}
    os.environ["MOMENTOR_GCS_RETRY_DELAY"] = "0.05"  # injected faults are retried in milliseconds, not seconds
    with Emulator(proxy=True) as emulator:
        yield emulator
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def gcs_bucket(gcs_server):
    # Earlier tests in this long-lived process leave garbage of many C extensions (Beam, PyAV, gradio, torch);
    # collected here, on the main thread, it is not finalized later on fsspec's event-loop thread, where a
    # collection once crashed the test process (a segfault in a finalizer during a gs:// upload).
    gc.collect()
    gcs_server.proxy.reset()
    from momentor_jax import gcs
    gcs.reset()
    yield gcs_server.make_bucket(f"test-bucket-{os.getpid()}-{next(_BUCKETS)}")
    gcs_server.proxy.reset()
    gc.collect()
