"""Two JAX processes on loopback (4 CPU devices each) train the tiny config, checkpoint, restart, resume; the final
parameters match a single-process run of the same global batch on 8 devices.

Both runs go 2 steps (total_steps=2), then resume to 4 (total_steps=4), so their learning-rate schedules agree.
Process p reads examples p, p + 2, ... of each global batch, so the multi-process global batch holds the same
examples as the single-process one in another row order; the token-summed loss makes the gradients equal up to
float summation order.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from momentor_jax import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEG_TIMEOUT_S = 300
# Long enough for every synthetic example: a skipped (too long) example would shift the per-process streams
# differently from the single-process one, and the batches would no longer hold the same examples.
MAX_LENGTH = 320


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_config(data_dir: str, total_steps: int):
    from configs import tiny  # noqa: PLC0415
    config = tiny.get_config()
    config.data.dir = data_dir
    config.total_steps = total_steps
    config.max_length = MAX_LENGTH
    config.model.llm.max_position_embeddings = MAX_LENGTH
    return config


def overrides(data_dir: str, total_steps: int) -> list:
    return [f"--config.data.dir={data_dir}", f"--config.total_steps={total_steps}",
            f"--config.max_length={MAX_LENGTH}", f"--config.model.llm.max_position_embeddings={MAX_LENGTH}"]


def run_two_processes(workdir: str, data_dir: str, total_steps: int, use_env: bool, log_dir: str) -> list:
    """Starts process 0 and 1 of one run; waits for both (bounded); kills both if either fails or hangs.

    `use_env` names the coordinator through MOMENTOR_* variables instead of flags (distributed.maybe_initialize
    reads either).
    """
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOMENTOR_")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs, logs = [], []
    try:
        for process_id in range(2):
            command = [sys.executable, "-m", "momentor_jax.train", "--config=configs/tiny.py", f"--workdir={workdir}",
                       *overrides(data_dir, total_steps)]
            child_env = dict(env)
            if use_env:
                child_env.update(MOMENTOR_COORDINATOR_ADDRESS=address, MOMENTOR_NUM_PROCESSES="2",
                                 MOMENTOR_PROCESS_ID=str(process_id))
            else:
                command += [f"--coordinator_address={address}", "--num_processes=2", f"--process_id={process_id}"]
            log = open(os.path.join(log_dir, f"steps{total_steps}-process{process_id}.log"), "w")
            logs.append(log)
            procs.append(subprocess.Popen(command, cwd=REPO, env=child_env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        deadline = time.monotonic() + LEG_TIMEOUT_S
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for log in logs:
            log.close()
    outputs = []
    for process_id, p in enumerate(procs):
        with open(os.path.join(log_dir, f"steps{total_steps}-process{process_id}.log")) as f:
            outputs.append(f.read())
        assert p.returncode == 0, f"process {process_id} exited {p.returncode}:\n{outputs[-1][-4000:]}"
    return outputs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The tiny synthetic dataset, prepared once (what `train` does by itself when data.dir is unset)."""
    from momentor_jax import train  # noqa: PLC0415
    root = str(tmp_path_factory.mktemp("mp_data"))
    return train.prepare_synthetic_data(tiny_config(None, 2), root)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, data_dir):
    """Single process, 8 devices, in this test process: 2 steps, then resume to 4 (shared by both storages)."""
    from momentor_jax.training import trainer  # noqa: PLC0415
    reference_dir = str(tmp_path_factory.mktemp("single"))
    trainer.train(tiny_config(data_dir, 2), reference_dir)
    reference = trainer.train(tiny_config(data_dir, 4), reference_dir)
    assert reference.step == 4 and jax.device_count() == 8
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            reference.state.params)
    return reference_dir, abstract


@pytest.mark.parametrize("storage", ["local", "gcs"])
def test_two_processes_resume_and_match_single_process(tmp_path, data_dir, single_process, storage, request):
    """On "gcs" the two processes share their workdir on a GCS server on loopback (checkpoints, data-iterator
    states, config.json), as the workers of a pod slice do."""
    from momentor_jax import fileio  # noqa: PLC0415
    reference_dir, abstract = single_process

    # Two processes x 4 devices: 2 steps, exit, restart both, resume to 4.
    multi_dir = f"{request.getfixturevalue('gcs_bucket')}/multi" if storage == "gcs" else str(tmp_path / "multi")
    first = run_two_processes(multi_dir, data_dir, 2, use_env=False, log_dir=str(tmp_path))
    assert all("process {} of 2, 8 devices".format(i) in out for i, out in enumerate(first))
    # The coordinator stopped its service only after process 1 had disconnected (distributed.shutdown at exit).
    assert "the other processes disconnected" in first[0]
    assert all("done at step 2" in out and "skipping example" not in out for out in first)
    second = run_two_processes(multi_dir, data_dir, 4, use_env=True, log_dir=str(tmp_path))
    assert all("resumed from step 2" in out and "done at step 4" in out and "skipping example" not in out
               for out in second)
    data_states = sorted(name for name in fileio.listdir(fileio.join(multi_dir, "checkpoints", "4", "data"))
                         if name.startswith("process_"))
    assert data_states == ["process_0-of-2.json", "process_1-of-2.json"]

    assert checkpoints.locate(multi_dir).step == 4
    multi_params = checkpoints.load_params(multi_dir, abstract)
    single_params = checkpoints.load_params(reference_dir, abstract)
    flat_ref = jax.tree_util.tree_leaves_with_path(single_params)
    flat_multi = dict(jax.tree_util.tree_leaves_with_path(multi_params))
    initial = checkpoints.load_params(fileio.join(reference_dir, "checkpoints", "2"), abstract)
    moved = 0
    for path, ref in flat_ref:
        ref, got = np.asarray(ref), np.asarray(flat_multi[path])
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    for (path, after), (_, before) in zip(flat_ref, jax.tree_util.tree_leaves_with_path(initial)):
        moved += not np.array_equal(np.asarray(after), np.asarray(before))
    assert moved > 0  # steps 3-4 changed the trainable parameters, so the comparison is not vacuous


def test_maybe_initialize_single_process_and_bad_arguments(monkeypatch):
    from momentor_jax.training import distributed  # noqa: PLC0415
    for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID,
                 distributed.ENV_DISTRIBUTED):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "tpu_chips_attached", lambda: False)
    assert distributed.maybe_initialize() is False                       # plain single process: no-op
    assert distributed.maybe_initialize("127.0.0.1:1", 1, 0) is False    # one process needs no coordinator
    with pytest.raises(ValueError, match="coordinator_address, num_processes and process_id"):
        distributed.maybe_initialize("127.0.0.1:1", 2)
    with pytest.raises(ValueError, match="out of range"):
        distributed.maybe_initialize("127.0.0.1:1", 2, 2)
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match="MOMENTOR_NUM_PROCESSES"):
        distributed.maybe_initialize()
    assert not jax.distributed.is_initialized()


def test_peer_connections_counts_other_processes_only():
    """The coordinator's exit waits on this count: a connection from another process counts until that process
    closes it; the process's own connection to its own port never does."""
    from momentor_jax.training import distributed  # noqa: PLC0415
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as server:  # dual-stack, like JAX's "[::]:port"
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind(("::", 0))
        server.listen()
        port = server.getsockname()[1]
        own_client = socket.create_connection(("127.0.0.1", port))
        own_accepted, _ = server.accept()
        assert distributed.peer_connections(port) == 0
        peer = subprocess.Popen([sys.executable, "-c", "import socket, sys; "
                                 f"s = socket.create_connection(('127.0.0.1', {port})); sys.stdin.read()"],
                                stdin=subprocess.PIPE)
        try:
            accepted, _ = server.accept()
            assert distributed.peer_connections(port) == 1
            assert distributed.peer_connections(port + 1 if port < 65535 else port - 1) == 0
            assert distributed.wait_for_peers_to_disconnect(port, timeout_s=0.2)[0] == 1  # bounded while it stays
            peer.stdin.close()  # the peer exits: its connection closes
            left, waited = distributed.wait_for_peers_to_disconnect(port, timeout_s=30)
            assert left == 0 and waited < 30
        finally:
            peer.kill()
            peer.wait()
        accepted.close()
        own_client.close()
        own_accepted.close()
