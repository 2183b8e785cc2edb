"""TFRecord container, sidecar index, random access and per-video records (no TensorFlow)."""
import concurrent.futures
import json
import multiprocessing
import os
import pickle
import struct

import numpy as np
import pytest

from momentor_jax.data import frames as frames_lib
from momentor_jax.data import tfrecord


def _write(path, payloads, keys=None):
    with tfrecord.TFRecordWriter(str(path)) as writer:
        for i, payload in enumerate(payloads):
            writer.write(payload, key=None if keys is None else keys[i])
    return str(path)


def _payloads(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.bytes(int(rng.integers(0, 300))) for _ in range(n)]


def _flip_byte(path, position):
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0x40]))


def _read_in_child(source, i):
    return source[i]


def test_crc32c_known_value_and_framing():
    assert tfrecord.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    framed = tfrecord.encode_record(b"abc")
    assert len(framed) == 8 + 4 + 3 + 4
    assert struct.unpack("<Q", framed[:8])[0] == 3
    assert struct.unpack("<I", framed[8:12])[0] == tfrecord.masked_crc32c(framed[:8])
    crc = tfrecord.crc32c(b"abc")
    assert struct.unpack("<I", framed[-4:])[0] == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_roundtrip_index_and_random_access(tmp_path):
    payloads = _payloads(7) + [b""]
    path = _write(tmp_path / "a.tfrecord", payloads)
    assert list(tfrecord.iter_records(path)) == payloads
    saved = json.loads(open(path + ".index").read())
    assert saved["size"] == os.path.getsize(path) and len(saved["offsets"]) == 8
    source = tfrecord.TFRecordDataSource([path, _write(tmp_path / "b.tfrecord", payloads[:3])])
    assert len(source) == 11
    assert [source[i] for i in range(11)] == payloads + payloads[:3]
    assert source[-1] == payloads[2]
    assert source.locate(9) == (1, 1)
    with pytest.raises(IndexError):
        source[11]


def test_source_pickles_and_reads_in_spawned_process(tmp_path):
    payloads = _payloads(4, seed=1)
    source = tfrecord.TFRecordDataSource([_write(tmp_path / "a.tfrecord", payloads)])
    assert source[2] == payloads[2]  # opens a descriptor, which must not travel
    clone = pickle.loads(pickle.dumps(source))
    assert clone[3] == payloads[3]
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_read_in_child, source, 1).result() == payloads[1]


def test_source_is_a_grain_random_access_source(tmp_path):
    import grain
    payloads = _payloads(5, seed=3)
    source = tfrecord.TFRecordDataSource([_write(tmp_path / "a.tfrecord", payloads)])
    assert isinstance(source, grain.sources.RandomAccessDataSource)
    dataset = grain.MapDataset.source(source).map(len)
    assert [dataset[i] for i in range(len(dataset))] == [len(p) for p in payloads]


def test_flipped_data_byte_names_file_and_record(tmp_path):
    payloads = [b"x" * 50] * 4
    path = _write(tmp_path / "a.tfrecord", payloads)
    source = tfrecord.TFRecordDataSource([path])
    _flip_byte(path, 2 * (16 + 50) + 12 + 10)  # inside record 2's data
    with pytest.raises(tfrecord.TFRecordCorruptionError, match=r"a\.tfrecord: record 2 .*data CRC"):
        list(tfrecord.iter_records(path))
    with pytest.raises(tfrecord.TFRecordCorruptionError, match=r"a\.tfrecord: record 2 .*data CRC"):
        source[2]
    assert source[1] == payloads[1]


def test_flipped_length_byte_is_detected(tmp_path):
    path = _write(tmp_path / "a.tfrecord", [b"y" * 20] * 3)
    _flip_byte(path, 36 + 1)  # record 1's length field
    with pytest.raises(tfrecord.TFRecordCorruptionError, match=r"record 1 .*length CRC"):
        list(tfrecord.iter_records(path))


def test_truncation_names_file_and_record(tmp_path):
    path = _write(tmp_path / "a.tfrecord", [b"z" * 40] * 4)
    with open(path, "r+b") as f:
        f.truncate(3 * 56 + 30)  # in the middle of record 3
    with pytest.raises(tfrecord.TFRecordCorruptionError, match=r"a\.tfrecord: record 3 .*truncated"):
        list(tfrecord.iter_records(path))
    with pytest.raises(tfrecord.TFRecordCorruptionError, match=r"record 3"):
        tfrecord.TFRecordDataSource([path])  # the index no longer fits the file: the rescan fails loudly


def test_stale_or_missing_index_is_rebuilt(tmp_path):
    path = _write(tmp_path / "a.tfrecord", _payloads(3))
    os.remove(path + ".index")
    assert len(tfrecord.load_index(path)) == 3
    assert os.path.exists(path + ".index")  # written back

    old_index = open(path + ".index").read()
    more = _payloads(5, seed=2)
    with open(path, "ab") as f:  # the shard changes behind the index's back
        for payload in more:
            f.write(tfrecord.encode_record(payload))
    assert open(path + ".index").read() == old_index
    source = tfrecord.TFRecordDataSource([path])
    assert len(source) == 8 and source[7] == more[4]
    assert json.loads(open(path + ".index").read())["size"] == os.path.getsize(path)


def test_index_that_lies_about_offsets_is_caught(tmp_path):
    path = _write(tmp_path / "a.tfrecord", [b"a" * 10, b"b" * 30])
    saved = json.loads(open(path + ".index").read())
    saved["lengths"] = [10, 20]  # the last record no longer ends at the end of the file: rescanned
    open(path + ".index", "w").write(json.dumps(saved))
    assert tfrecord.TFRecordDataSource([path])[1] == b"b" * 30
    saved = json.loads(open(path + ".index").read())
    saved["lengths"] = [30, 30]  # same size, mtime and end, but offsets that do not follow the lengths: rebuilt
    open(path + ".index", "w").write(json.dumps(saved))
    source = tfrecord.TFRecordDataSource([path])
    assert source[0] == b"a" * 10 and json.loads(open(path + ".index").read())["lengths"] == [10, 30]
    source.indexes[0].lengths[0] = 30  # an index that lies anyway is caught when the record is read
    with pytest.raises(tfrecord.TFRecordCorruptionError, match=r"record 0 .*index says 30"):
        source[0]


def test_failed_writer_leaves_nothing(tmp_path):
    path = str(tmp_path / "a.tfrecord")
    with pytest.raises(RuntimeError):
        with tfrecord.TFRecordWriter(path) as writer:
            writer.write(b"partial")
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------ video records


def _frames(m, h=12, w=16, value=0):
    rng = np.random.default_rng(value)
    base = np.zeros((m, h, w, 3), np.uint8)
    base[..., 0] = value
    base[..., 1] = rng.integers(0, 255)
    return base


def test_frame_record_roundtrip():
    frames = _frames(5, value=200)
    times = np.linspace(0, 12.5, 5)
    parsed = frames_lib.parse_frame_record(frames_lib.make_frame_record("abcdefghijk", 12.5, times, frames, 95), 5)
    assert parsed["video_id"] == "abcdefghijk" and parsed["duration"] == 12.5
    np.testing.assert_allclose(parsed["frame_times"], times, rtol=1e-6)
    assert parsed["frames"].shape == (5, 12, 16, 3) and parsed["frames"].dtype == np.uint8
    assert np.abs(parsed["frames"].astype(int) - frames).max() <= 4  # JPEG at quality 95


def test_frame_record_errors_name_the_video():
    record = frames_lib.make_frame_record("vid_one", 4.0, [0, 2, 4], _frames(3))
    with pytest.raises(frames_lib.RecordError, match="video vid_one: 3 frames, expected 8"):
        frames_lib.parse_frame_record(record, num_frames=8)
    from tensorflow_datasets.proto import tf_example_pb2
    example = tf_example_pb2.Example.FromString(record)
    example.features.feature["frames"].bytes_list.value[1] = b"not a jpeg"
    with pytest.raises(frames_lib.RecordError, match="video vid_one: frame 1 is not a readable JPEG"):
        frames_lib.parse_frame_record(example.SerializeToString())
    example = tf_example_pb2.Example.FromString(record)
    example.features.feature["height"].int64_list.value[0] = 99
    with pytest.raises(frames_lib.RecordError, match=r"video vid_one: frame 0 is \(12, 16, 3\)"):
        frames_lib.parse_frame_record(example.SerializeToString())
    example = tf_example_pb2.Example.FromString(record)
    del example.features.feature["frame_times"].float_list.value[-1]
    with pytest.raises(frames_lib.RecordError, match="video vid_one: 3 frames for 2 frame times"):
        frames_lib.parse_frame_record(example.SerializeToString())
    with pytest.raises(frames_lib.RecordError, match="not a tf.train.Example"):
        frames_lib.parse_frame_record(b"\xff\xff\xff")


def test_feature_record_roundtrip_and_dispatch():
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    record = frames_lib.make_feature_record("feat_vid", 9.0, [0, 4.5, 9], features)
    parsed = frames_lib.parse_video_record(record, num_frames=3)
    np.testing.assert_array_equal(parsed["features"], features)
    assert "frames" not in parsed and parsed["video_id"] == "feat_vid"


def test_frame_record_index_by_video_id(tmp_path):
    ids = [f"video{i:06d}" for i in range(7)]
    records = {v: frames_lib.make_frame_record(v, 3.0, [0, 1.5, 3], _frames(3, value=30 * i))
               for i, v in enumerate(ids)}
    _write(tmp_path / "frames-00000-of-00002.tfrecord", [records[v] for v in ids[:4]], keys=ids[:4])
    second = _write(tmp_path / "frames-00001-of-00002.tfrecord", [records[v] for v in ids[4:]])  # no keys
    index = frames_lib.FrameRecordIndex(str(tmp_path), num_frames=3)
    assert len(index) == 7 and set(index.video_ids()) == set(ids)
    assert index.locate("video000005") == (1, 1)
    assert json.loads(open(second + ".index").read())["keys"] == ids[4:]  # learnt once, then stored
    got = index.get("video000005")
    assert got["video_id"] == "video000005" and abs(int(got["frames"][..., 0].mean()) - 150) <= 3
    with pytest.raises(KeyError, match="video nosuchvideo is in none of the 2 frame shards"):
        index.get("nosuchvideo")
    clone = pickle.loads(pickle.dumps(index))
    assert clone.get("video000002")["video_id"] == "video000002"
    assert len(frames_lib.FrameRecordIndex(str(tmp_path / "frames-*.tfrecord"))) == 7
    assert len(frames_lib.FrameRecordIndex([second])) == 3


def test_frame_record_index_keeps_first_of_duplicates(tmp_path):
    a = frames_lib.make_frame_record("dup", 2.0, [0, 2], _frames(2, value=10))
    b = frames_lib.make_frame_record("dup", 2.0, [0, 2], _frames(2, value=240))
    _write(tmp_path / "x.tfrecord", [a, b], keys=["dup", "dup"])
    index = frames_lib.FrameRecordIndex(str(tmp_path))
    assert len(index) == 1 and index.num_duplicates == 1
    assert int(index.get("dup")["frames"][..., 0].mean()) < 50
