"""The file layer on gs:// against a GCS server on loopback: same results as local paths, retries of transient
faults (counted), one-line errors that name the path, nothing half written, per-process connections."""
import multiprocessing
import os
import pickle
import time

import pytest

from momentor_jax import fileio, gcs


def _fill(root):
    fileio.makedirs(fileio.join(root, "d"))
    fileio.write_bytes(fileio.join(root, "d", "a.bin"), bytes(range(256)) * 4)
    fileio.write_text(fileio.join(root, "d", "b.txt"), "hello\nworld\n")
    with fileio.atomic_open(fileio.join(root, "d", "c.jsonl"), "w") as f:
        f.write('{"x": 1}\n')


def test_remote_paths_behave_as_local_ones(tmp_path, gcs_bucket):
    results = []
    for root in (str(tmp_path), gcs_bucket):
        _fill(root)
        d = fileio.join(root, "d")
        reader = fileio.RangeReader([fileio.join(d, "a.bin"), fileio.join(d, "b.txt")])
        results.append((
            fileio.listdir(d), [os.path.basename(p) for p in fileio.glob(fileio.join(d, "*.bin"))],
            fileio.isdir(d), fileio.isfile(fileio.join(d, "a.bin")), fileio.exists(fileio.join(d, "nope")),
            fileio.size(fileio.join(d, "a.bin")), fileio.stat(fileio.join(d, "a.bin"))[0],
            fileio.read_text(fileio.join(d, "b.txt")), fileio.read_bytes(fileio.join(d, "c.jsonl")),
            reader.read(0, 250, 10), reader.read(1, 6, 5), pickle.loads(pickle.dumps(reader)).read(0, 0, 3)))
        with fileio.open(fileio.join(d, "b.txt")) as f:
            results[-1] += (f.readlines(),)
    assert results[0] == results[1]
    assert fileio.glob(f"{gcs_bucket}/d/*.txt") == [f"{gcs_bucket}/d/b.txt"]


def test_a_rewritten_object_gets_a_new_version(gcs_bucket):
    path = f"{gcs_bucket}/v.bin"
    fileio.write_bytes(path, b"one")
    first = fileio.stat(path)
    fileio.write_bytes(path, b"two")
    assert fileio.stat(path)[1] != first[1]


def test_transient_faults_are_retried_and_counted(gcs_server, gcs_bucket, caplog):
    path = f"{gcs_bucket}/r.bin"
    fileio.write_bytes(path, b"0123456789" * 100)
    reader = fileio.RangeReader([path])
    before = gcs.retry_count()
    gcs_server.proxy.fail(2, status=503)
    assert reader.read(0, 10, 5) == b"01234"
    gcs_server.proxy.cut(1)  # the response stops halfway through its body: a reset connection
    assert reader.read(0, 0, 1000) == b"0123456789" * 100
    assert gcs.retry_count() - before == 3
    assert sum("retry" in r.getMessage() and "r.bin" in r.getMessage() for r in caplog.records) == 3


def test_missing_bucket_and_object_are_one_line_errors(gcs_bucket):
    started = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        fileio.read_bytes(f"{gcs_bucket}/no/such.bin")
    assert str(info.value) == f"{gcs_bucket}/no/such.bin: no such object in {gcs_bucket}"
    with pytest.raises(gcs.StorageNotFoundError) as info:
        fileio.RangeReader(["gs://no-such-bucket-here/x.tfrecord"]).read(0, 0, 4)
    assert str(info.value).startswith("gs://no-such-bucket-here/x.tfrecord: bucket gs://no-such-bucket-here does "
                                      "not exist")
    with pytest.raises(gcs.StorageNotFoundError, match="bucket gs://no-such-bucket-here does not exist"):
        fileio.makedirs("gs://no-such-bucket-here/run")
    assert "\n" not in str(info.value)
    assert time.perf_counter() - started < 5  # never retried


@pytest.mark.parametrize("status, kind, says", [
    (401, gcs.StorageCredentialsError, "gcloud auth application-default login"),
    (403, gcs.StoragePermissionError, "permission denied"),
])
def test_credential_and_permission_errors_name_the_path_and_the_fix(gcs_server, gcs_bucket, status, kind, says):
    path = f"{gcs_bucket}/secret.bin"
    fileio.write_bytes(path, b"x")
    gcs_server.proxy.fail(1, status=status)
    before = gcs.retry_count()
    with pytest.raises(kind) as info:
        fileio.read_bytes(path)
    assert str(info.value).startswith(f"{path}: ") and says in str(info.value) and "\n" not in str(info.value)
    assert gcs.retry_count() == before


def test_a_server_gone_mid_write_leaves_no_half_object(gcs_server, gcs_bucket, monkeypatch):
    monkeypatch.setenv(gcs.ENV_RETRIES, "2")
    path = f"{gcs_bucket}/big.bin"
    with pytest.raises(gcs.StorageUnavailableError) as info:
        with fileio.atomic_open(path, "wb") as f:
            f.write(os.urandom(6 << 20))  # past gcsfs's 5 MiB block: a resumable upload is under way
            gcs_server.proxy.down_after(0)
            f.write(os.urandom(6 << 20))
            f.flush()
    message = str(info.value)
    assert message.startswith(f"{gcs_bucket}/") and "did not answer after 2 retries" in message, message
    gcs_server.proxy.reset()
    assert not fileio.exists(path)
    with pytest.raises(RuntimeError):  # an error inside the block: the upload is dropped, not finished
        with fileio.atomic_open(path, "w") as f:
            f.write("half")
            raise RuntimeError("stop")
    assert not fileio.exists(path)


def _read_in_child(reader):
    return reader.read(0, 2, 3), os.getpid()


def test_each_process_opens_its_own_connections(gcs_bucket):
    path = f"{gcs_bucket}/p.bin"
    fileio.write_bytes(path, b"abcdefgh")
    reader = fileio.RangeReader([path])
    assert reader.read(0, 2, 3) == b"cde"  # the parent's connection is open before the children start
    for method in ("fork", "spawn"):
        with multiprocessing.get_context(method).Pool(1) as pool:
            data, pid = pool.apply(_read_in_child, (reader,))
        assert data == b"cde" and pid != os.getpid()


def test_convert_data_reads_and_writes_gcs_like_local_files(tmp_path, gcs_bucket):
    import data_scripts
    fixture = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "moment10m_raw.json")
    source = f"{gcs_bucket}/raw/moment10m.json"
    fileio.copy(fixture, source)
    convert = data_scripts.load("convert_data")
    assert convert.main(["--source_path", fixture, "--target_path", str(tmp_path / "out.jsonl")]) == 0
    assert convert.main(["--source_path", source, "--target_path", f"{gcs_bucket}/out.jsonl"]) == 0
    assert fileio.read_bytes(f"{gcs_bucket}/out.jsonl") == (tmp_path / "out.jsonl").read_bytes()


def test_train_on_a_missing_bucket_fails_in_one_line_within_seconds(gcs_server):
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "momentor_jax.train", "--config=configs/tiny.py",
                           "--workdir=gs://no-such-bucket-for-runs/run"], cwd=repo, capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=repo), timeout=120)
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: gs://no-such-bucket-for-runs/run: bucket gs://no-such-bucket-for-runs does not exist (check the "
        "name, or create it: gcloud storage buckets create gs://no-such-bucket-for-runs)")
    assert "Traceback" not in proc.stderr
    assert time.perf_counter() - started < 60  # start-up included; the storage check itself takes milliseconds
