"""Bad input, case by case (issue #20): no tool writes over its input, one rule for video ids, Moment-10M/GESM
conversion rejects and counts what it cannot convert, damaged shards are repaired. The seeded fuzz suite over the
same areas is tests/test_fuzz_inputs.py."""
import json
import os
import types

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
    for name in ("VIDEO.MP4", "clip.v1.mp4", "clip.v2.Mkv", "twice.mp4", "twice.webm", ".hidden.mp4", "x.txt"):
        (tmp_path / name).write_bytes(b"")
    source = VideoSource(types.SimpleNamespace(use_cached_features=False), video_dir=str(tmp_path))
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
