"""The Beam pipelines (momentor_jax/data/beam_pipelines.py) on the DirectRunner against the single-machine tools."""
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
from momentor_jax.data import download
from momentor_jax.data import extract
from momentor_jax.data import frames as frames_lib
from momentor_jax.data import synthetic
from momentor_jax.data import tfrecord

beam_pipelines = pytest.importorskip("momentor_jax.data.beam_pipelines")  # the [beam] extra

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTI_PROCESS = ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
THREADS = ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_threading"]
NUM_FRAMES, SIZE, NUM_SHARDS = 4, 16, 3
CORRUPT = {"truncated00": "corrupt", "notavideo00": "corrupt"}


def _command(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "data", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    """18 tiny synthetic videos, a truncated copy of one and a text file posing as a video."""
    directory = tmp_path_factory.mktemp("videos")
    specs = synthetic.sample_videos(seed=17, num_videos=18, size=32, fps=4, min_duration=5, max_duration=6)
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
