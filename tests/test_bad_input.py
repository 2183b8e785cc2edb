"""Bad input, case by case (issue #20): no tool writes over its input, one rule for video ids, Moment-10M/GESM
conversion rejects and counts what it cannot convert, damaged shards are repaired. The seeded fuzz suite over the
same areas is tests/test_fuzz_inputs.py."""
import json
import os

import numpy as np

import pytest

from momentor_jax import outputs
from momentor_jax.data import extract, frames as frames_lib, gesm, moment10m, synthetic, video_ids
from tests import data_scripts

GOOD_ITEM = {"conversations": {"User": "What happens during {moment}?", "Assistant": "A dog runs."},
             "variables": {"moment": [1.0, 4.0]}, "match_score": 0.9}


def _raw(tmp_path, payload, name="raw.json"):
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return str(path)


def _convert(tmp_path, raw_path):
    lines = []
    counts = moment10m.convert_file(raw_path, str(tmp_path / "out.jsonl"), log=lines.append)
    return counts, lines


# ------------------------------------------------------------------------------------------------ outputs
@pytest.mark.parametrize("script", ["convert_data", "convert_data_gesm"])
def test_converters_refuse_to_write_over_their_source(tmp_path, capsys, script):
    source = _raw(tmp_path, {"v1": {"segment_caption_data": [GOOD_ITEM]}})
    before = open(source, "rb").read()
    os.symlink(source, tmp_path / "link.json")
    main = data_scripts.load(script).main
    for target in (source, str(tmp_path / "link.json"), str(tmp_path / "." / "raw.json")):
        assert main(["--source_path", source, "--target_path", target]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --target_path") and "same file as --source_path" in err
        assert err.count("\n") == 1
    assert open(source, "rb").read() == before


def test_same_file_rule():
    assert outputs.same_file("gs://b/x//y.json", "gs://b/x/y.json")
    assert not outputs.same_file("gs://b/x.json", "x.json")
    with pytest.raises(ValueError, match="--out a.jsonl is the same file as --questions a.jsonl"):
        outputs.check_not_input("a.jsonl", {"--questions": "a.jsonl", "--other": None}, "--out")


# ------------------------------------------------------------------------------------------------ video ids
def test_one_rule_for_ids_from_file_names():
    rule = video_ids.video_id_from_filename
    assert rule("clip.v1.mp4") == "clip.v1" and rule("clip.v2.MP4") == "clip.v2" and rule("VIDEO.MP4") == "VIDEO"
    assert rule("a.b.c.webm") == "a.b.c" and rule("x.mpeg") == "x"
    assert rule(".hidden.mp4") is None and rule("notes.txt") is None and rule(".mp4") is None
    assert video_ids.group_video_files(["a.mp4", "a.MKV", "b.mp4"]) == {"a": ["a.MKV", "a.mp4"], "b": ["b.mp4"]}
    for bad, words in (("", "empty"), ("a/b", "path separator"), ("a\\b", "path separator"), ("a\nb", "control"),
                       (" a", "whitespace"), ("..", "directory"), (3, "not a string")):
        assert words in video_ids.id_problem(bad)
    assert video_ids.id_problem("dQw4w9WgXcQ") is None and video_ids.id_problem("clip.v1") is None


@pytest.fixture(scope="module")
def one_video(tmp_path_factory):
    spec = synthetic.sample_video(seed=5, number=0, min_duration=4, max_duration=4)
    path = str(tmp_path_factory.mktemp("one") / "one.mp4")
    synthetic.write_video(spec, path)
    return path


def test_dotted_names_are_two_videos_and_a_collision_stops_extraction(tmp_path, one_video, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("clip.v1.mp4", "clip.v2.mp4"):
        os.link(one_video, videos / name)
    out = str(tmp_path / "frames")
    summary = extract.extract_frames(str(videos), out, num_frames=3, size=16, progress=False)
    assert summary.extracted == 2 and not summary.failed
    assert sorted(frames_lib.FrameRecordIndex(out).video_ids()) == ["clip.v1", "clip.v2"]

    os.link(one_video, videos / "clip.v1.MKV")
    main = data_scripts.load("extract_frames").main
    assert main(["--video_dir", str(videos), "--out_dir", str(tmp_path / "frames2"), "--num_frames", "3",
                 "--size", "16"]) == 2
    err = capsys.readouterr().err
    assert "clip.v1: clip.v1.MKV, clip.v1.mp4" in err and "keep one file per video" in err
    assert not os.path.exists(tmp_path / "frames2")  # refused before anything was written


def test_evaluate_finds_videos_by_the_same_rule(tmp_path):
    from momentor_jax.evaluate import MissingVideo, VideoSource
    from momentor_jax.models import config as model_configs
    for name in ("VIDEO.MP4", "clip.v1.mp4", "clip.v2.Mkv", "twice.mp4", "twice.webm", ".hidden.mp4", "x.txt"):
        (tmp_path / name).write_bytes(b"")
    source = VideoSource(model_configs.tiny(), video_dir=str(tmp_path))
    assert sorted(source.video_files()) == ["VIDEO", "clip.v1", "clip.v2", "twice"]
    with pytest.raises(MissingVideo, match="several files"):
        source.get("twice")


# ------------------------------------------------------------------------------------------------ Moment-10M
def _item(**changes):
    item = json.loads(json.dumps(GOOD_ITEM))
    for key, value in changes.items():
        if key == "variables":
            item["variables"].update(value)
        else:
            item[key] = value
    return item


CLICK = {"conversations": {"User": "What is at {click_position}?", "Assistant": "A ball."}, "match_score": 0.9}
BAD_ITEMS = [  # (data type, item, words the rejection names)
    ("appearance_data", dict(CLICK, variables={"click_position": [1.0, [float("nan"), 0.5]]}), "not a position"),
    ("appearance_data", dict(CLICK, variables={"click_position": [1.0, [float("inf"), 0.5]]}), "not a position"),
    ("appearance_data", dict(CLICK, variables={"click_position": [1.0, [1.5, 0.5]]}), "not a position"),
    ("appearance_data", dict(CLICK, variables={"click_position": [1.0, [0.5, -0.1]]}), "not a position"),
    ("appearance_data", dict(CLICK, variables={"click_position": [float("nan"), [0.5, 0.5]]}), "not a number of"),
    ("segment_caption_data", _item(match_score=float("inf")), "not a finite number"),
    ("segment_caption_data", _item(match_score=float("nan")), "not a finite number"),
    ("segment_caption_data", _item(conversations={"User": "What happens during {moment}?",
                                                  "Assistant": "A dog runs.</s>"}), "'</s>'"),
    ("segment_caption_data", _item(conversations={"User": "<video> during {moment}?", "Assistant": "x"}),
     "'<video>'"),
    ("segment_caption_data", _item(conversations={"User": "At <TEMP-INPUT> {moment}?", "Assistant": "x"}),
     "'<TEMP-INPUT>'"),
    ("instance_segment_caption_data",
     _item(conversations={"User": "What does the {instance_class} do during {moment}?", "Assistant": "It runs."},
           variables={"instance_class": ""}), "instance_class is an empty string"),
    ("instance_segment_caption_data",
     _item(conversations={"User": "What does the {instance_class} do during {moment}?", "Assistant": "It runs."},
           variables={"instance_class": "   "}), "instance_class is an empty string"),
    ("segment_caption_data", _item(variables={"moment": [4.0, 1.0]}), "starts after it ends"),
    ("segment_caption_data", _item(variables={"moment": [-1.0, 1.0]}), "negative time"),
    ("segment_caption_data", _item(variables={"moment": [float("inf"), 1.0]}), "not a number of seconds"),
]


def test_moment10m_rejects_and_counts_each_bad_item(tmp_path):
    by_type = {}
    for data_type, item, _ in BAD_ITEMS:
        by_type.setdefault(data_type, []).append(item)
    by_type["segment_caption_data"].append(GOOD_ITEM)
    counts, lines = _convert(tmp_path, _raw(tmp_path, {"v1": by_type}))
    assert counts.total.rejected == len(BAD_ITEMS) and counts.total.written == 1
    for (data_type, _, words), line in zip(sorted(BAD_ITEMS, key=lambda b: list(by_type).index(b[0])), lines):
        assert line.startswith(f"rejected video v1 type {data_type} item ") and words in line, (words, line)
    written = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
    assert [r["temporal_input_times"] for r in written] == [[1.0, 4.0]]


@pytest.mark.parametrize("video_id, words", [("", "empty video id"), ("a/b", "path separator"),
                                              ("a\nb", "control character"), ("..", "names a directory")])
def test_moment10m_and_gesm_reject_unusable_video_ids(tmp_path, video_id, words):
    counts, lines = _convert(tmp_path, _raw(tmp_path, {video_id: {"segment_caption_data": [GOOD_ITEM]},
                                                       "ok": {"segment_caption_data": [GOOD_ITEM]}}))
    assert counts.total.rejected == 1 and counts.total.written == 1
    assert lines[0].startswith(f"rejected video {video_id!r}: ") and words in lines[0]
    found = []
    counts = gesm.convert_file(_raw(tmp_path, {video_id: {"timestamps": [[0, 1]], "captions": ["a"]}}, "g.json"),
                               str(tmp_path / "g.jsonl"), log=found.append)
    assert counts.total.rejected == 1 and counts.total.written == 0 and words in found[0]


def test_a_video_key_twice_is_merged_and_counted(tmp_path):
    other = _item(conversations={"User": "And during {moment}?", "Assistant": "A cat sits."})
    text = ('{"v1": {"segment_caption_data": [%s]}, "v2": {"qa_data": []}, "v1": {"segment_caption_data": [%s]}}'
            % (json.dumps(GOOD_ITEM), json.dumps(other)))
    counts, lines = _convert(tmp_path, _raw(tmp_path, text))
    assert counts.merged_duplicates == 1 and counts.total.written == 2 and counts.total.rejected == 0
    assert "video v1 occurs 2 times" in lines[0] and "merged" in counts.table()
    replies = [json.loads(line)["conversations"][0]["Assistant"] for line in open(tmp_path / "out.jsonl")]
    assert replies == ["A dog runs.", "A cat sits."]
    # GESM: two event lists for one video cannot both be right: rejected, counted, named.
    found = []
    counts = gesm.convert_file(_raw(tmp_path, '{"v": {"timestamps": [[0, 1]], "captions": ["a"]}, "v": '
                                    '{"timestamps": [[2, 3]], "captions": ["b"]}}', "g.json"),
                               str(tmp_path / "g.jsonl"), log=found.append)
    assert counts.total.rejected == 1 and "occurs 2 times" in found[0]


def test_a_key_twice_inside_an_item_is_rejected_by_name(tmp_path):
    text = ('{"v1": {"segment_caption_data": [{"conversations": {"User": "During {moment}?", "Assistant": "x"}, '
            '"variables": {"moment": [1, 2], "moment": [3, 4]}, "match_score": 0.9}]}}')
    counts, lines = _convert(tmp_path, _raw(tmp_path, text))
    assert counts.total.rejected == 1 and "item.variables: key 'moment' occurs 2 times" in lines[0]


@pytest.mark.parametrize("text, words", [("[" * 100_000 + "]" * 100_000, "nested too deeply"),
                                         ("{not json", "not valid JSON"), (b"\xff\xfe{}", "not UTF-8")])
def test_unparsable_sources_are_one_line_errors(tmp_path, capsys, text, words):
    path = tmp_path / "raw.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    for script in ("convert_data", "convert_data_gesm"):
        assert data_scripts.load(script).main(["--source_path", str(path), "--target_path",
                                               str(tmp_path / "o.jsonl")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}: ") and words in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------------------ loader, TFRecords
from momentor_jax.data import loader, tfrecord  # noqa: E402
from tests import bad_input_data as bid  # noqa: E402


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return bid.tokenizer(str(tmp_path_factory.mktemp("sp")))


def _eval(tmp_path, tok, examples, payloads, keys=None, index=True, **kwargs):
    shard = bid.write_shard(tmp_path / "frames-00000-of-00001.tfrecord", payloads, keys, index)
    path = bid.write_examples(tmp_path / "examples.jsonl", examples)
    return loader.make_eval_examples(bid.data_config([path], shard), tokenizer=tok, num_frames=bid.NUM_FRAMES,
                                     max_length=bid.MAX_LENGTH, image_size=bid.SIZE, **kwargs)


BAD_TIMES = [((float("nan"), 4.0), "is not a time >= 0"), ((float("inf"), 4.0), "is not a time >= 0"),
             ((-1.0, 4.0), "is not a time >= 0"), ((6.0, 2.0), "starts after it ends"),
             ((1.0, 40.0), "past the video's end"), (("1", 4.0), "is not a number of seconds")]


def test_bad_times_are_skipped_and_counted_before_target_times(tmp_path, tok, caplog):
    examples = [bid.example_record("v0")] + [bid.example_record("v0", times) for times, _ in BAD_TIMES]
    examples.append(bid.example_record("v0", output_times=(5.0, 10.5)))  # 0.5 s past the end: clipped, counted
    with caplog.at_level("WARNING"):
        source = _eval(tmp_path, tok, examples, [bid.frame_record("v0")], ["v0"])
        items = list(source)
    assert len(items) == 2 and source.num_skipped_records == len(BAD_TIMES) and source.num_clipped_times == 1
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping example")]
    assert len(skipped) == len(BAD_TIMES)
    for (_, words), message in zip(BAD_TIMES, sorted(skipped, key=lambda m: int(m.split(" at byte ")[1].split()[0]))):
        assert "examples.jsonl at byte" in message and "(video v0," in message and words in message, message
    assert all(np.isfinite(item["target_times"]).all() and (item["target_times"] <= 1).all() for item in items)


def test_frame_records_that_do_not_fit_the_model(tmp_path, tok, caplog):
    good = [bid.frame_record(f"g{i}", seed=i) for i in range(3)]
    bad = {"few": bid.frame_record("few", num_frames=2), "big": bid.frame_record("big", size=24),
           "nan": bid.frame_record("nan", times=[0, float("nan"), 5, 10]),
           "down": bid.frame_record("down", times=[0, 6, 5, 10]), "flat": bid.frame_record("flat", times=[3] * 4)}
    ids = [f"g{i}" for i in range(3)] + list(bad)
    examples = [bid.example_record(v) for v in ids]
    with caplog.at_level("WARNING"):
        source = _eval(tmp_path, tok, examples, good + list(bad.values()), ids)
        assert sorted(item["id"] for item in source) == ["g0", "g1", "g2"]
    assert source.num_skipped_records == len(bad)
    for words in ("holds 2 frames, the model takes 4", "frames are 24 x 24, the model takes 16 x 16",
                  "frame_times hold NaN", "frame_times decrease", "all 4 frame_times are 3.0 s"):
        assert words in caplog.text, words
    # evaluate reads the records through the same code: the good ones alike, the bad ones missing with the line
    # the loader logged.
    from momentor_jax.evaluate import MissingVideo, VideoSource
    source_items = {item["id"]: item for item in source}
    videos = VideoSource(_model_config(), frames_dir=str(tmp_path / "frames-00000-of-00001.tfrecord"))
    for vid, item in source_items.items():
        np.testing.assert_array_equal(videos.get(vid)[0], item["frames"])
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping example")]
    for vid in bad:
        with pytest.raises(MissingVideo) as error:
            videos.get(vid)
        assert "\n" not in str(error.value) and f"video {vid}" in str(error.value)
        assert any(message.endswith(f": {error.value}") for message in skipped), (str(error.value), skipped)
    # Training batches never see the odd one (no failure inside Grain's batching), and the count is exact.
    shard = str(tmp_path / "frames-00000-of-00001.tfrecord")
    iterator = loader.make_train_loader(bid.data_config([str(tmp_path / "examples.jsonl")], shard), tokenizer=tok,
                                        num_frames=bid.NUM_FRAMES, max_length=bid.MAX_LENGTH, global_batch_size=2,
                                        seed=0, num_epochs=3, image_size=bid.SIZE)
    batches = list(iterator)
    assert all(b["frames"].shape == (2, bid.NUM_FRAMES, bid.SIZE, bid.SIZE, 3) for b in batches)
    # 8 examples, epochs of 8: each epoch skips the 5 bad ones, 3 load; 9 in the stream: 4 batches + 1 dropped
    assert iterator.num_skipped_records == 3 * 5 and iterator.num_loaded == 3 * 3 and len(batches) == 4


def _model_config():
    import dataclasses
    from momentor_jax.models import config as model_configs
    tiny = model_configs.tiny(num_frames=bid.NUM_FRAMES)
    return dataclasses.replace(tiny, vision=dataclasses.replace(tiny.vision, image_size=bid.SIZE))


def test_a_whole_extraction_that_does_not_fit_stops_at_start_up(tmp_path, tok):
    shard = bid.write_shard(tmp_path / "frames-00000-of-00001.tfrecord", [bid.frame_record("v", num_frames=2)],
                            ["v"])
    path = bid.write_examples(tmp_path / "examples.jsonl", [bid.example_record("v")] * 4)
    words = r"frames-00000-of-00001.tfrecord record 0: video v: the record holds 2 frames, the model takes 4"
    with pytest.raises(ValueError, match=words):
        loader.make_train_loader(bid.data_config([path], shard), tokenizer=tok, num_frames=4, max_length=128,
                                 global_batch_size=2, seed=0)
    from momentor_jax.evaluate import VideoSource  # evaluate stops as well, before any model loads
    with pytest.raises(ValueError, match=words):
        VideoSource(_model_config(), frames_dir=shard).check(["absent", "v"])


def test_undecodable_records_are_named_and_counted_at_start_up(tmp_path, tok, caplog):
    from tensorflow_datasets.proto import tf_example_pb2
    no_id = tf_example_pb2.Example()
    no_id.features.feature["duration"].float_list.value.append(3.0)
    latin = tf_example_pb2.Example()
    latin.features.feature["video_id"].bytes_list.value.append(b"caf\xe9")
    payloads = [bid.frame_record("ok"), b"\x00not a protobuf\xff" * 3, no_id.SerializeToString(),
                latin.SerializeToString()]
    with caplog.at_level("WARNING"):
        source = _eval(tmp_path, tok, [bid.example_record("ok")], payloads, index=False)
        assert [item["id"] for item in source] == ["ok"]
    assert source.num_bad_frame_records == 3
    shard = str(tmp_path / "frames-00000-of-00001.tfrecord")
    for record, words in ((1, "not a tf.train.Example"), (2, "no video_id"), (3, "is not UTF-8")):
        assert any(f"{shard}: record {record} at byte" in p and words in p for p in source.videos.problems), words


def test_bad_height_or_width_is_a_record_error_not_a_memory_error(tmp_path, tok, caplog):
    from tensorflow_datasets.proto import tf_example_pb2
    payloads = []
    for i, (height, width) in enumerate(((-16, 16), (1 << 40, 16), (16, 0))):
        example = tf_example_pb2.Example.FromString(bid.frame_record(f"hw{i}"))
        example.features.feature["height"].int64_list.value[0] = height
        example.features.feature["width"].int64_list.value[0] = width
        payloads.append(example.SerializeToString())
    with caplog.at_level("WARNING"):
        source = _eval(tmp_path, tok, [bid.example_record(f"hw{i}") for i in range(3)] + [bid.example_record("g")],
                       payloads + [bid.frame_record("g")], ["hw0", "hw1", "hw2", "g"])
        assert [item["id"] for item in source] == ["g"]
    assert source.num_skipped_records == 3 and caplog.text.count("is outside 1..8192") == 3
    assert "frames-00000-of-00001.tfrecord record 1" in caplog.text


@pytest.mark.parametrize("length", [1 << 40, (1 << 64) - 1, 1 << 63])
def test_a_huge_length_field_is_checked_against_the_file_size(tmp_path, tok, length):
    path = tmp_path / "frames-00000-of-00001.tfrecord"
    good = tfrecord.encode_record(bid.frame_record("ok"))
    path.write_bytes(good + bid.huge_length_header(length) + b"\x00" * 64)
    with pytest.raises(tfrecord.TFRecordCorruptionError,
                       match=rf"{path}: record 1 at byte {len(good)}: truncated or damaged: length {length} runs past"):
        list(tfrecord.iter_records(str(path)))
    index = frames_lib.FrameRecordIndex(str(path))  # the frame index salvages what precedes it
    assert index.video_ids() == ["ok"] and index.num_bad_records == 1 and "bytes from there on" in index.problems[0]


@pytest.mark.parametrize("sidecar", ["[1, 2]", '"text"', "null", '{"version": 1, "offsets": ["0"], "lengths": [5], '
                                     '"size": 1, "mtime_ns": 1}', '{"version": 1, "offsets": [-21], "lengths": [5], '
                                     '"size": 1, "mtime_ns": 1}', "{not json", "[" * 100_000 + "]" * 100_000,
                                     b"\xff\xfe\x00"])
def test_malformed_index_sidecars_are_rebuilt(tmp_path, sidecar, caplog):
    path = bid.write_shard(tmp_path / "a.tfrecord", [b"x" * 10, b"y" * 20])
    with open(tfrecord.index_path(path), "wb") as f:
        f.write(sidecar if isinstance(sidecar, bytes) else sidecar.encode())
    with caplog.at_level("WARNING"):
        source = tfrecord.TFRecordDataSource([path])
    assert source[1] == b"y" * 20 and tfrecord.index_path(path) in caplog.text
    assert json.loads(open(tfrecord.index_path(path)).read())["lengths"] == [10, 20]


def test_a_flipped_bit_without_an_index_is_skipped_and_counted(tmp_path, tok):
    payloads = [bid.frame_record(f"v{i}", seed=i) for i in range(4)]
    examples = [bid.example_record(f"v{i}") for i in range(4)] * 2
    shard = bid.write_shard(tmp_path / "frames-00000-of-00001.tfrecord", payloads, index=False)
    bid.flip_bit(shard, 12 + 12 + len(payloads[0]) + 4 + 100)  # inside record 1's data
    path = bid.write_examples(tmp_path / "examples.jsonl", examples)
    iterator = loader.make_train_loader(bid.data_config([path], shard), tokenizer=tok, num_frames=bid.NUM_FRAMES,
                                        max_length=bid.MAX_LENGTH, global_batch_size=2, seed=0, num_epochs=2,
                                        image_size=bid.SIZE)
    batches = list(iterator)
    # v1's record is unreadable: its 2 examples are missing videos; 6 examples x 2 epochs load, 3 batches each
    assert iterator.num_bad_frame_records == 1 and iterator.num_missing_videos == 2
    assert len(batches) == 6 and iterator.num_skipped_records == 0


def test_skips_are_counted_exactly_in_a_finite_run(tmp_path, tok):
    payloads = [bid.frame_record(f"v{i}", seed=i) for i in range(4)]
    shard = bid.write_shard(tmp_path / "frames-00000-of-00001.tfrecord", payloads, [f"v{i}" for i in range(4)])
    index = tfrecord.load_index(shard)
    bid.flip_bit(shard, index.offsets[3] + 12 + 50)  # v3's data, found at read time (the sidecar is current)
    stat = os.stat(shard)
    index.size, index.mtime_ns = stat.st_size, stat.st_mtime_ns
    tfrecord.save_index(shard, index)
    examples = [bid.example_record(f"v{i}") for i in (0, 1, 2)] + [bid.example_record("v3")] * 3
    path = bid.write_examples(tmp_path / "examples.jsonl", examples)
    for seed in range(3):
        iterator = loader.make_train_loader(bid.data_config([path], shard), tokenizer=tok, num_frames=bid.NUM_FRAMES,
                                            max_length=bid.MAX_LENGTH, global_batch_size=2, seed=seed, num_epochs=1,
                                            image_size=bid.SIZE)
        batches = list(iterator)
        # epochs of 6 examples: the 3 of v3 fail, 3 load: one batch, one dropped remainder
        assert iterator.num_skipped_records == 3 and len(batches) == 1, seed


# ------------------------------------------------------------------------------------------------ train start-up
def test_train_start_up_errors_are_one_line(tmp_path):
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    not_a_model = tmp_path / "tokenizer.model"
    not_a_model.write_bytes(b"this is not a sentencepiece model")
    base = [sys.executable, "-m", "momentor_jax.train", "--config=configs/tiny.py", f"--workdir={tmp_path / 'w'}",
            f"--config.data.dir={tmp_path / 'no_data'}"]
    cases = {"batch_size 8 is not divisible by grad_accum_steps 3": ["--config.grad_accum_steps=3"],
             "not a sentencepiece model": [f"--config.tokenizer={not_a_model}"],
             "neither a MomentorTokenizer directory nor a sentencepiece model": [],
             "max_length 99999 exceeds model.llm.max_position_embeddings": ["--config.max_length=99999"]}
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=repo)
    processes = {words: subprocess.Popen(base + extra, cwd=repo, env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True) for words, extra in cases.items()}
    for words, process in processes.items():
        _, err = process.communicate(timeout=300)
        assert process.returncode == 2, (words, err[-3000:])
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and words in lines[0], (words, err[-2000:])
        assert "Traceback" not in err
