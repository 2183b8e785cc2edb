"""The Beam pipelines (momentor_jax/data/beam_pipelines.py) on the DirectRunner against the single-machine tools."""
import collections
import functools
import http.server
import importlib.util
import json
import os
import socket
import subprocess
import threading

import numpy as np
import pytest

from momentor_jax.data import attrition
from momentor_jax.data import beam_pipelines  # the [beam] extra, part of [test]
from momentor_jax.data import extract
from momentor_jax.data import frames as frames_lib
from momentor_jax.data import moment10m
from momentor_jax.data import synthetic
from momentor_jax.data import tfrecord


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTI_PROCESS = ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
THREADS = ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_threading"]
NUM_FRAMES, SIZE, NUM_SHARDS = 4, 16, 3
CORRUPT = {"truncated00": "corrupt", "notavideo00": "corrupt"}
VIDEOS = dict(seed=17, num_videos=18, size=32, fps=4, min_duration=5, max_duration=6)


def _command(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "data", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    """18 tiny synthetic videos, a truncated copy of one and a text file posing as a video."""
    directory = tmp_path_factory.mktemp("videos")
    specs = synthetic.sample_videos(**VIDEOS)
    for spec in specs:
        synthetic.write_video(spec, str(directory / f"{spec.video_id}.mp4"))
    first = (directory / f"{specs[0].video_id}.mp4").read_bytes()
    (directory / "truncated00.mp4").write_bytes(first[:700])
    (directory / "notavideo00.mp4").write_text("hello")
    return str(directory)


def _records(out_dir):
    """{video_id: record bytes} over every frame shard of a directory."""
    records = {}
    for path in extract.shard_paths(out_dir, NUM_SHARDS):
        for data in tfrecord.iter_records(path):
            records[frames_lib.record_video_id(data)] = data
    return records


def _shard_bytes(out_dir):
    return [open(p, "rb").read() for p in extract.shard_paths(out_dir, NUM_SHARDS)]


def test_frames_pipeline_matches_the_single_machine_tool_and_reruns_as_a_no_op(video_dir, tmp_path, capsys):
    reference = str(tmp_path / "single")
    single = extract.extract_frames(video_dir, reference, num_frames=NUM_FRAMES, size=SIZE, num_shards=NUM_SHARDS,
                                    progress=False)
    assert single.extracted == 18 and sorted(v for v, _ in single.failed) == sorted(CORRUPT)

    out = str(tmp_path / "beam")
    command = _command("extract_frames")
    argv = ["--video_dir", video_dir, "--out_dir", out, "--num_frames", str(NUM_FRAMES), "--size", str(SIZE),
            "--num_shards", str(NUM_SHARDS), *MULTI_PROCESS]
    assert command.main(argv) == 1  # two videos failed
    assert "frames: requested 20, already done 0, done 18, failed 2 (corrupt 2)" in capsys.readouterr().out

    assert _records(out) == _records(reference)  # byte-identical per video
    assert _shard_bytes(out) == _shard_bytes(reference)  # and the same shard files: same shards, same order
    for shard, path in enumerate(extract.shard_paths(out, NUM_SHARDS)):
        keys = tfrecord.load_index(path, key_fn=frames_lib.record_video_id).keys
        assert keys == sorted(keys) and {extract.shard_of(k, NUM_SHARDS) for k in keys} == {shard}
    rows = attrition.read_failures(os.path.join(out, "frames_failures.jsonl"))
    assert {r["video_id"]: r["reason"] for r in rows} == CORRUPT
    assert all(r["stage"] == "frames" and r["video_id"] in r["detail"] for r in rows)
    assert os.listdir(os.path.join(out, beam_pipelines.STAGING_DIR)) == []

    stamps = [os.stat(p).st_mtime_ns for p in extract.shard_paths(out, NUM_SHARDS)]
    assert command.main(argv) == 1
    assert "frames: requested 20, already done 18, done 0, failed 2 (corrupt 2)" in capsys.readouterr().out
    assert [os.stat(p).st_mtime_ns for p in extract.shard_paths(out, NUM_SHARDS)] == stamps
    assert _records(out) == _records(reference)
    _check_attrition_report(out, tmp_path, capsys)


def test_staged_records_are_used_and_a_retried_shard_step_writes_nothing(video_dir, tmp_path):
    """A run that died after decoding left staged records: the next run writes them without decoding again (the
    staged video's file is now unreadable); a shard step run twice leaves the shard as it was; a damaged record is
    redone and its shard rewritten as before."""
    names = sorted(n for n in os.listdir(video_dir) if n[:-4] not in CORRUPT)[:4]
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in names:
        os.link(os.path.join(video_dir, name), videos / name)
    reference = str(tmp_path / "single")
    extract.extract_frames(str(videos), reference, num_frames=NUM_FRAMES, size=SIZE, num_shards=2, progress=False)
    expected = {frames_lib.record_video_id(d): d for p in extract.shard_paths(reference, 2)
                for d in tfrecord.iter_records(p)}
    staged_id = names[0][:-4]
    out = str(tmp_path / "beam")
    os.makedirs(os.path.join(out, beam_pipelines.STAGING_DIR))
    open(beam_pipelines.staged_path(out, staged_id), "wb").write(expected[staged_id])
    os.remove(videos / names[0])
    (videos / names[0]).write_text("no longer a video")

    run = beam_pipelines.extract_frames(str(videos), out, THREADS, num_frames=NUM_FRAMES, size=SIZE, num_shards=2)
    assert (run.summary.done, run.summary.failed, run.counters["frames_decoded"]) == (4, {}, 3)
    assert [open(p, "rb").read() for p in extract.shard_paths(out, 2)] == \
        [open(p, "rb").read() for p in extract.shard_paths(reference, 2)]
    assert os.listdir(os.path.join(out, beam_pipelines.STAGING_DIR)) == []

    shard = extract.shard_of(staged_id, 2)
    path = extract.shard_paths(out, 2)[shard]
    before = (open(path, "rb").read(), os.stat(path).st_mtime_ns)
    assert list(beam_pipelines._WriteShard(out, 2).process((shard, [staged_id]))) == [0]  # the retry
    assert (open(path, "rb").read(), os.stat(path).st_mtime_ns) == before
    with pytest.raises(FileNotFoundError, match="staged frame record of someone0000 is gone"):
        list(beam_pipelines._WriteShard(out, 2).process((shard, ["someone0000"])))

    victim = names[1][:-4]  # a damaged record: the shard keeps its intact records, the video is decoded again
    path = extract.shard_paths(out, 2)[extract.shard_of(victim, 2)]
    index = tfrecord.load_index(path, key_fn=frames_lib.record_video_id)
    where = index.offsets[index.keys.index(victim)] + 12 + index.lengths[index.keys.index(victim)] // 2
    data = bytearray(open(path, "rb").read())
    data[where] ^= 0xFF
    open(path, "wb").write(bytes(data))
    run = beam_pipelines.extract_frames(str(videos), out, THREADS, num_frames=NUM_FRAMES, size=SIZE, num_shards=2)
    assert (run.summary.already_done, run.summary.done, run.counters["frames_decoded"]) == (3, 1, 1)
    assert [open(p, "rb").read() for p in extract.shard_paths(out, 2)] == \
        [open(p, "rb").read() for p in extract.shard_paths(reference, 2)]


def test_frames_from_and_to_gcs_match_the_local_single_machine_shards(video_dir, tmp_path, gcs_bucket):
    """Videos read from gs:// and shards written to gs:// (the GCS server on loopback) hold the same bytes."""
    from momentor_jax import fileio

    names = sorted(os.listdir(video_dir))[:4] + ["notavideo00.mp4"]
    local = tmp_path / "videos"
    local.mkdir()
    remote = fileio.join(gcs_bucket, "videos")
    for name in names:
        os.link(os.path.join(video_dir, name), local / name)
        fileio.write_bytes(fileio.join(remote, name), open(os.path.join(video_dir, name), "rb").read())
    reference = str(tmp_path / "single")
    extract.extract_frames(str(local), reference, num_frames=NUM_FRAMES, size=SIZE, num_shards=2, progress=False)

    out = fileio.join(gcs_bucket, "frames")
    run = beam_pipelines.extract_frames(remote, out, THREADS, num_frames=NUM_FRAMES, size=SIZE, num_shards=2)
    assert (run.summary.done, run.summary.failed) == (4, {"corrupt": 1})
    shards = extract.shard_paths(out, 2)
    assert [fileio.read_bytes(p) for p in shards] == \
        [open(p, "rb").read() for p in extract.shard_paths(reference, 2)]
    assert [r["video_id"] for r in attrition.read_failures(run.failures_path)] == ["notavideo00"]
    versions = [fileio.stat(p) for p in shards]
    again = beam_pipelines.extract_frames(remote, out, THREADS, num_frames=NUM_FRAMES, size=SIZE, num_shards=2)
    assert (again.summary.already_done, again.summary.done) == (4, 0)
    assert [fileio.stat(p) for p in shards] == versions


def _check_attrition_report(frames_dir, tmp_path, capsys):
    """The corrupt videos carry qa_data (both) and segment_locate_data (one): those types lose examples."""
    specs = synthetic.sample_videos(**VIDEOS)
    raw = {spec.video_id: synthetic.moment10m_items(spec, seed=0) for spec in specs}
    items = raw[specs[0].video_id]
    raw["truncated00"] = {"qa_data": items["qa_data"], "segment_locate_data": items["segment_locate_data"][:1]}
    raw["notavideo00"] = {"qa_data": items["qa_data"]}
    (tmp_path / "raw.json").write_text(json.dumps(raw))
    moment10m.convert_file(str(tmp_path / "raw.json"), str(tmp_path / "examples.jsonl"), log=lambda _: None)
    examples = [json.loads(line) for line in open(tmp_path / "examples.jsonl")]
    per_type = collections.Counter(e["data_type"] for e in examples)

    merged = tmp_path / "all_failures.jsonl"
    assert _command("report_attrition").main([
        "--examples", str(tmp_path / "examples.jsonl"), "--frames", frames_dir,
        "--failures", os.path.join(frames_dir, "frames_failures.jsonl"), "--failures_out", str(merged)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "videos referenced 20, with frames 18, without 2"
    table = {line.split()[0]: [int(v) for v in line.split()[1:4]] for line in lines[2:3 + len(per_type)]}
    assert lines[2].split()[0] == "qa_data" and lines[3].split()[0] == "segment_locate_data"  # most lost first
    assert table["qa_data"] == [per_type["qa_data"], per_type["qa_data"] - 2, 2]
    assert table["segment_locate_data"] == [per_type["segment_locate_data"], per_type["segment_locate_data"] - 1, 1]
    assert table["total"] == [len(examples), len(examples) - 3, 3]
    assert "failed videos by stage and reason: frames/corrupt 2" in lines
    assert "frames: requested 20, already done 18, done 0, failed 2 (corrupt 2)" in lines
    assert [json.loads(line)["video_id"] for line in open(merged)] == sorted(CORRUPT)


# ------------------------------------------------------------------------------------------------ download


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # the connections the handler cuts on purpose
        pass


class _FlakyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves <id>.mp4; ids starting 'busy' answer 503 to their first GET (always, for 'down'), ids starting 'cut'
    drop the connection half-way through their first GET."""
    protocol_version = "HTTP/1.1"
    requests = collections.Counter()

    def do_GET(self):
        name = os.path.basename(self.path)
        _FlakyHandler.requests[name] += 1
        first = _FlakyHandler.requests[name] == 1
        if name.startswith("down") or (name.startswith("busy") and first):
            self.send_error(503)
            return
        if name.startswith("cut") and first:
            data = open(os.path.join(self.directory, name), "rb").read()
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture()
def flaky_server(tmp_path):
    """Yields (url_template, {id: bytes}) for ids that succeed at once, after a 503, after a cut connection."""
    root = tmp_path / "served"
    root.mkdir()
    specs = synthetic.sample_videos(seed=5, num_videos=4, size=32, fps=4, min_duration=5, max_duration=5)
    files = {}
    for prefix, spec in zip(("okay", "busy", "cut0", "down"), specs):
        video_id = prefix + spec.video_id[4:]
        synthetic.write_video(spec, str(root / f"{video_id}.mp4"))
        files[video_id] = (root / f"{video_id}.mp4").read_bytes()
    _FlakyHandler.requests.clear()
    httpd = _Server(("127.0.0.1", 0), functools.partial(_FlakyHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/{{id}}.mp4", files
    httpd.shutdown()
    httpd.server_close()


def test_download_pipeline_retries_records_unavailable_ids_and_leaves_no_partial_files(flaky_server, tmp_path,
                                                                                      monkeypatch, capsys):
    url_template, files = flaky_server
    fetchable = sorted(v for v in files if not v.startswith("down"))
    down = next(v for v in files if v.startswith("down"))
    target = tmp_path / "videos"
    target.mkdir()
    present = "here0000000"
    (target / f"{present}.mp4").write_bytes(b"already here")
    popen_calls = []
    real_init = subprocess.Popen.__init__

    def recording_init(self, args, *rest, **kwargs):
        popen_calls.append((args, kwargs.get("shell", False)))
        return real_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", recording_init)
    monkeypatch.setattr(os, "system", lambda *a: pytest.fail(f"os.system{a}"))
    ids = [*fetchable, present, "missing0000", down, "not valid!"]
    run = beam_pipelines.download_videos(ids, str(target), THREADS, url_template=url_template, attempts=3,
                                         backoff_seconds=0.01)

    assert run.line().startswith("download: requested 7, already done 1, done 3, failed 3 ("
                                 "invalid id 1, network error 1, unavailable 1)")
    for video_id in fetchable:
        assert (target / f"{video_id}.mp4").read_bytes() == files[video_id]
    assert (target / f"{present}.mp4").read_bytes() == b"already here"
    requests = _FlakyHandler.requests
    assert requests[f"{present}.mp4"] == 0 and requests[f"{down}.mp4"] == 3  # transient: tried 3 times
    assert requests["missing0000.mp4"] == 1  # 404: not retried
    busy, okay = (next(f"{v}.mp4" for v in fetchable if v.startswith(p)) for p in ("busy", "okay"))
    assert requests[busy] == requests[okay] + 1  # one 503, then what a clean download asks
    counts = [requests[f"{v}.mp4"] for v in fetchable]
    rows = attrition.read_failures(run.failures_path)
    assert {r["video_id"]: r["reason"] for r in rows} == {"missing0000": "unavailable", down: "network error",
                                                          "not valid!": "invalid id"}
    assert "404" in next(r["detail"] for r in rows if r["video_id"] == "missing0000")
    assert sorted(os.listdir(target)) == sorted([*(f"{v}.mp4" for v in fetchable), f"{present}.mp4",
                                                 "download_failures.jsonl", "download_summary.json"])
    assert all(not shell and not isinstance(args, (str, bytes)) for args, shell in popen_calls), popen_calls

    source = tmp_path / "ids.jsonl"  # a rerun through the command: nothing left to fetch but what failed
    source.write_text("".join(f'{{"id": "{v}"}}\n' for v in ids))
    command = _command("download_videos")
    argv = ["--source_path", str(source), "--video_path", str(target), "--url_template", url_template,
            "--attempts", "1", *THREADS]
    assert command.main(argv) == 1
    assert "download: requested 7, already done 4, done 0, failed 3" in capsys.readouterr().out
    assert requests[f"{down}.mp4"] == 4 and all(requests[f"{v}.mp4"] == n for v, n in zip(fetchable, counts))


# ------------------------------------------------------------------------------------------------ features


def test_feature_pipeline_equals_the_single_machine_features(video_dir, tmp_path, capsys):
    import flax.linen as nn
    import jax

    from momentor_jax import checkpoints
    from momentor_jax.data import features
    from momentor_jax.models import config as config_lib
    from momentor_jax.models.vit import VisionTower

    config = config_lib.tiny()
    size = config.vision.image_size
    shapes = jax.eval_shape(VisionTower(config.vision).init, jax.random.key(0),
                            np.zeros((1, size, size, 3), np.float32))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(s.dtype), nn.meta.unbox(shapes))
    checkpoints.save_params(str(tmp_path / "ckpt"), {"vision": params}, config)
    frames_dir = str(tmp_path / "frames")
    extract.extract_frames(video_dir, frames_dir, num_frames=3, size=size, num_shards=4, progress=False)
    frames = os.path.join(frames_dir, "frames-*.tfrecord")

    reference = str(tmp_path / "single")
    features.extract_features(frames, reference, params, config.vision, batch_frames=8, threads=2)
    out = str(tmp_path / "beam")
    command = _command("extract_features")
    argv = ["--frames", frames, "--checkpoint", str(tmp_path / "ckpt"), "--out_dir", out, "--batch_frames", "8",
            "--threads", "2", *THREADS]
    run = beam_pipelines.extract_features(frames, out, str(tmp_path / "ckpt"), THREADS, batch_frames=8, threads=2)
    assert run.summary.to_json() == {"stage": "features", "requested": 18, "already_done": 0, "done": 18,
                                     "failed": {}}
    assert 1 <= run.counters["model_loads"] <= 2 < run.counters["feature_shards_written"] == 4  # once per worker

    ours, theirs = frames_lib.FrameRecordIndex(out), frames_lib.FrameRecordIndex(reference)
    assert sorted(ours.video_ids()) == sorted(theirs.video_ids()) and len(ours) == 18
    for video_id in theirs.video_ids():
        mine, expected = ours.get(video_id), theirs.get(video_id)
        assert ours.locate(video_id) == theirs.locate(video_id)
        np.testing.assert_allclose(mine["features"], expected["features"], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(mine["frame_times"], expected["frame_times"])

    stamps = [os.stat(p).st_mtime_ns for p in ours.source.paths]
    assert command.main(argv) == 0  # every output shard exists: nothing to encode
    assert "features: requested 18, already done 18, done 0, failed 0" in capsys.readouterr().out
    assert [os.stat(p).st_mtime_ns for p in ours.source.paths] == stamps
