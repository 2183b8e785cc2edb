"""Video decoding and frame extraction on synthetic videos with known events."""
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from momentor_jax.data import extract, tfrecord
from momentor_jax.data import frames as frames_lib
from momentor_jax.data import synthetic
from momentor_jax.data import video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOUR_TOLERANCE = 45  # h264 4:2:0 plus JPEG, sampled at the shape's centre


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.make_dataset(str(out), num_videos=4, seed=9, num_heldout=1, min_duration=12, max_duration=18,
                           progress=False)
    return str(out), synthetic.load_specs(str(out))


def _path(root, video_id):
    return os.path.join(root, "videos", f"{video_id}.mp4")


def _nearest_frame_times(spec, num_frames):
    """Timestamps of the rendered frames nearest to i * duration / (M - 1) (ties to the earlier one)."""
    stamps = np.arange(spec.num_frames) / spec.fps
    return np.array([stamps[np.argmin(np.abs(stamps - t))] for t in video.sample_times(spec.duration, num_frames)])


def _assert_events_visible(spec, frames, times, size):
    """At every sampled time well inside an event its shape's colour sits at the shape's centre; outside it, the
    slot shows the background."""
    checked_inside = checked_outside = 0
    for event in spec.events:
        for frame, t in zip(frames, times):
            x, y = (int(round(c * size / spec.size)) for c in event.center(t, spec.size))
            pixel = frame[y, x].astype(int)
            if event.start + 0.2 <= t <= event.end - 0.2:
                assert np.abs(pixel - event.kind.rgb).max() <= COLOUR_TOLERANCE, (event, t, pixel)
                checked_inside += 1
            elif (t < event.start - 0.2 or t > event.end + 0.2) and not any(
                    e.slot == event.slot and e.visible(t) for e in spec.events):
                assert np.abs(pixel - synthetic.BACKGROUND).max() <= COLOUR_TOLERANCE, (event, t, pixel)
                checked_outside += 1
    assert checked_inside > 0 and checked_outside > 0


def test_sample_times_include_both_ends():
    np.testing.assert_allclose(video.sample_times(12.0, 5), [0, 3, 6, 9, 12])
    np.testing.assert_allclose(video.sample_times(7.0, 1), [0])
    with pytest.raises(ValueError):
        video.sample_times(7.0, 0)


def test_clip_geometry_resizes_shorter_side_and_center_crops():
    stripes = np.zeros((20, 60, 3), np.uint8)
    stripes[:, :20, 0] = 255  # red | green | blue thirds
    stripes[:, 20:40, 1] = 255
    stripes[:, 40:, 2] = 255
    out = video.clip_geometry(Image.fromarray(stripes), 16)  # resized to 48 x 16, crop columns 16..32
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert out[:, 2:-2, 1].min() > 200 and out[:, 2:-2, [0, 2]].max() < 60
    tall = video.clip_geometry(Image.fromarray(np.full((50, 10, 3), 77, np.uint8)), 8)
    assert tall.shape == (8, 8, 3) and np.all(np.abs(tall.astype(int) - 77) <= 1)


def test_decode_frames_times_duration_and_pixels(dataset):
    root, specs = dataset
    for video_id, spec in specs.items():
        for num_frames in (7, 40):
            decoded = video.decode_frames(_path(root, video_id), num_frames, 32)
            assert decoded.frames.shape == (num_frames, 32, 32, 3) and decoded.frames.dtype == np.uint8
            assert decoded.duration == spec.duration
            np.testing.assert_allclose(decoded.sample_times, video.sample_times(spec.duration, num_frames))
            np.testing.assert_allclose(decoded.frame_times, _nearest_frame_times(spec, num_frames), atol=1e-6)
            assert decoded.frame_times[-1] == pytest.approx((spec.num_frames - 1) / spec.fps)  # last decodable
        _assert_events_visible(spec, decoded.frames, decoded.frame_times, 32)


def test_seeking_picks_the_same_frames(dataset, monkeypatch):
    root, specs = dataset
    video_id = max(specs, key=lambda v: specs[v].duration)
    monkeypatch.setattr(video, "SEEK_AHEAD_SECONDS", 1e9)
    sequential = video.decode_frames(_path(root, video_id), 5, 32)
    monkeypatch.setattr(video, "SEEK_AHEAD_SECONDS", 1.0)
    seeking = video.decode_frames(_path(root, video_id), 5, 32)
    np.testing.assert_array_equal(seeking.frame_times, sequential.frame_times)
    np.testing.assert_array_equal(seeking.frames, sequential.frames)


def test_duration_by_decoding_when_metadata_is_missing(dataset, monkeypatch, tmp_path):
    root, specs = dataset
    video_id, spec = next(iter(specs.items()))
    monkeypatch.setattr(video, "_metadata_duration", lambda container, stream: None)
    decoded = video.decode_frames(_path(root, video_id), 6, 16)
    assert decoded.duration == pytest.approx(spec.duration)  # last frame time + one frame interval
    monkeypatch.undo()

    raw = str(tmp_path / "raw.h264")  # an elementary stream: no container, no timestamps
    with av.open(raw, "w", format="h264") as container:
        stream = container.add_stream(synthetic.video_codec(), rate=8)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for k in range(20):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * k, np.uint8),
                                                                   format="rgb24")))
        container.mux(stream.encode(None))
    with av.open(raw) as container:
        rate = float(container.streams.video[0].average_rate or container.streams.video[0].guessed_rate)
    decoded = video.decode_frames(raw, 3, 16)
    assert decoded.duration == pytest.approx(20 / rate)
    np.testing.assert_allclose(decoded.frame_times, [0, 10 / rate, 19 / rate])
    assert decoded.frames[0].mean() < decoded.frames[1].mean() < decoded.frames[2].mean()


def test_unreadable_video_raises_with_its_path(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 300)
    with pytest.raises(video.VideoDecodeError, match="broken.mp4"):
        video.decode_frames(str(bad), 4, 16)


def test_video_shorter_than_its_stated_duration_is_refused(dataset, monkeypatch):
    root, specs = dataset
    video_id, spec = next(iter(specs.items()))
    monkeypatch.setattr(video, "_metadata_duration", lambda container, stream: 2 * spec.duration)
    with pytest.raises(video.VideoDecodeError, match=rf"decodable frames end at .* of a {2 * spec.duration:.2f}s"):
        video.decode_frames(_path(root, video_id), 5, 16)


def test_truncated_video_with_readable_header_is_refused(tmp_path):
    spec = synthetic.sample_video(seed=1, number=0, min_duration=16, max_duration=16)
    path = str(tmp_path / "faststart.mp4")  # index first, as streamed downloads are: a cut file still opens
    with av.open(path, "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream(synthetic.video_codec(), rate=spec.fps)
        stream.width = stream.height = spec.size
        stream.pix_fmt = "yuv420p"
        for k in range(spec.num_frames):
            frame = av.VideoFrame.from_ndarray(synthetic.render_frame(spec, k / spec.fps), format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert video.decode_frames(path, 5, 16).duration == 16.0
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    for num_frames in (5, 10):  # the decoder either errors at the cut or runs dry early: refused both ways
        with pytest.raises(video.VideoDecodeError, match="faststart.mp4"):
            video.decode_frames(path, num_frames, 16)


# ------------------------------------------------------------------------------------------------ extraction


@pytest.fixture()
def video_dir(dataset, tmp_path):
    """The synthetic videos plus a truncated copy and a text file posing as a video."""
    root, specs = dataset
    directory = tmp_path / "videos"
    directory.mkdir()
    for video_id in specs:
        os.link(_path(root, video_id), directory / f"{video_id}.mp4")
    first = next(iter(specs))
    (directory / "truncated00.mp4").write_bytes(open(_path(root, first), "rb").read()[:700])
    (directory / "notavideo00.mp4").write_text("hello")
    (directory / ".hidden_partial.mp4").write_text("ignored")
    (directory / "README.txt").write_text("ignored")
    return str(directory)


def test_extract_sharded_records_and_random_access(dataset, video_dir, tmp_path):
    _, specs = dataset
    out = str(tmp_path / "frames")
    summary = extract.extract_frames(video_dir, out, num_frames=9, size=32, num_shards=2, workers=2,
                                     progress=False)
    assert summary.extracted == 4 and summary.already_done == 0 and len(summary.shards) == 2
    assert sorted(v for v, _ in summary.failed) == ["notavideo00", "truncated00"]
    listed = [json.loads(line) for line in open(os.path.join(out, extract.FAILURES_FILE))]
    assert sorted(row["video_id"] for row in listed) == ["notavideo00", "truncated00"]
    assert all(row["reason"] and row["path"].endswith(".mp4") for row in listed)
    assert not [n for n in os.listdir(out) if ".tmp-" in n]

    index = frames_lib.FrameRecordIndex(out, num_frames=9)
    assert sorted(index.video_ids()) == sorted(specs)
    for video_id, spec in specs.items():
        shard, _ = index.locate(video_id)
        assert index.source.paths[shard].endswith(f"frames-{extract.shard_of(video_id, 2):05d}-of-00002.tfrecord")
        record = index.get(video_id)
        assert record["video_id"] == video_id
        assert record["duration"] == pytest.approx(spec.duration)
        assert record["frames"].shape == (9, 32, 32, 3)
        np.testing.assert_allclose(record["frame_times"], _nearest_frame_times(spec, 9), atol=1e-5)
        _assert_events_visible(spec, record["frames"], record["frame_times"], 32)


def test_extract_resumes(dataset, video_dir, tmp_path):
    _, specs = dataset
    out = str(tmp_path / "frames")
    extract.extract_frames(video_dir, out, num_frames=5, size=16, num_shards=2, progress=False)
    shards = extract.shard_paths(out, 2)
    before = {p: os.stat(p).st_mtime_ns for p in shards if os.path.exists(p)}

    again = extract.extract_frames(video_dir, out, num_frames=5, size=16, num_shards=2, progress=False)
    assert again.extracted == 0 and again.already_done == 4 and len(again.failed) == 2
    assert {p: os.stat(p).st_mtime_ns for p in before} == before  # nothing rewritten

    extra = synthetic.sample_video(seed=99, number=0, min_duration=12, max_duration=12)
    synthetic.write_video(extra, os.path.join(video_dir, f"{extra.video_id}.mp4"))
    third = extract.extract_frames(video_dir, out, num_frames=5, size=16, num_shards=2, progress=False)
    assert third.extracted == 1 and third.already_done == 4
    index = frames_lib.FrameRecordIndex(out)
    assert sorted(index.video_ids()) == sorted([*specs, extra.video_id])
    assert index.get(extra.video_id)["duration"] == pytest.approx(12.0)

    damaged = index.source.paths[index.locate(extra.video_id)[0]]
    in_damaged = tfrecord.load_index(damaged, key_fn=frames_lib.record_video_id).keys
    assert len(in_damaged) >= 2  # the fixture's seed puts several videos in this shard
    with open(damaged, "r+b") as f:  # a flipped byte inside record 0's data: only that video is redone
        f.seek(40)
        byte = f.read(1)
        f.seek(40)
        f.write(bytes([byte[0] ^ 1]))
    fourth = extract.extract_frames(video_dir, out, num_frames=5, size=16, num_shards=2, progress=False)
    assert fourth.extracted == 1 and fourth.already_done == 4
    [repair] = fourth.repaired
    assert repair.path == damaged and repair.redone == [in_damaged[0]] and repair.kept == len(in_damaged) - 1
    assert not repair.lost and "record 0 at byte 0: data CRC mismatch" in repair.problems[0]
    assert "1 damaged shards repaired (1 videos redone)" in fourth.line()
    assert len(frames_lib.FrameRecordIndex(out)) == 5
    assert list(tfrecord.iter_records(damaged))  # the rewritten shard checks out

    # Damaged again, with its video gone: the intact records stay, the lost one is a failure.
    with open(damaged, "r+b") as f:
        f.seek(40)
        byte = f.read(1)
        f.seek(40)
        f.write(bytes([byte[0] ^ 1]))
    lost_id = tfrecord.saved_index(damaged).keys[0]
    os.remove(os.path.join(video_dir, f"{lost_id}.mp4"))
    fifth = extract.extract_frames(video_dir, out, num_frames=5, size=16, num_shards=2, progress=False)
    assert fifth.repaired[0].lost == [lost_id] and lost_id in [v for v, _ in fifth.failed]
    assert len(frames_lib.FrameRecordIndex(out)) == 4

    with pytest.raises(ValueError, match="num_frames=5, not 6"):
        extract.extract_frames(video_dir, out, num_frames=6, size=16, num_shards=2, progress=False)


def test_interrupted_extraction_keeps_finished_shards(dataset, video_dir, tmp_path, monkeypatch):
    out = str(tmp_path / "frames")
    real = extract.extract_record
    calls = []

    def flaky(task):
        calls.append(task.video_id)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(extract, "extract_record", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract.extract_frames(video_dir, out, num_frames=3, size=16, num_shards=3, progress=False)
    assert not [n for n in os.listdir(out) if ".tmp-" in n]
    finished = [p for p in extract.shard_paths(out, 3) if os.path.exists(p)]
    kept = len(frames_lib.FrameRecordIndex(finished)) if finished else 0
    assert 0 < kept < 4  # some shards were finished before the interruption, some not
    monkeypatch.setattr(extract, "extract_record", real)
    summary = extract.extract_frames(video_dir, out, num_frames=3, size=16, num_shards=3, progress=False)
    assert summary.already_done == kept and summary.extracted == 4 - kept
    assert len(frames_lib.FrameRecordIndex(out)) == 4


def test_extract_frames_command_line(dataset, tmp_path):
    root, specs = dataset
    videos = tmp_path / "videos"
    videos.mkdir()
    video_id = next(iter(specs))
    os.link(_path(root, video_id), videos / f"{video_id}.mp4")
    (videos / "brokenvideo.mp4").write_bytes(b"nope")
    out = tmp_path / "frames"
    result = subprocess.run([sys.executable, os.path.join(REPO, "data", "extract_frames.py"),
                             "--video_dir", str(videos), "--out_dir", str(out), "--num_frames", "4",
                             "--size", "16", "--num_shards", "1"], capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 1, result.stderr
    assert "extracted 1 videos, 0 already done, 1 failed" in result.stdout
    assert "failed: brokenvideo" in result.stdout
    assert frames_lib.FrameRecordIndex(str(out)).get(video_id)["frames"].shape == (4, 16, 16, 3)
