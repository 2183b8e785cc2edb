"""Synthetic shape videos and their Moment-10M / GESM / grounding annotations."""
import importlib.util
import json
import os
import re

import av
import numpy as np
import pytest

from momentor_jax.data import synthetic
from momentor_jax.data import video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLACEHOLDER = re.compile(r"\{(\w+)\}")
DATA_TYPES = {"segment_locate_data", "segment_caption_data", "appearance_data", "instance_qa_data",
              "instance_caption_data", "qa_data"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic"))
    result = synthetic.make_dataset(out, num_videos=5, seed=11, num_heldout=2, min_duration=12, max_duration=16,
                                    progress=False)
    return out, result


def _load(out, name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)


def test_specs_are_well_formed():
    specs = synthetic.sample_videos(0, 60)
    ids = [s.video_id for s in specs]
    assert len(set(ids)) == 60
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{10}", v) for v in ids)
    counts, overlapping, disjoint = set(), 0, 0
    for spec in specs:
        assert 12 <= spec.duration <= 30 and spec.num_frames == spec.duration * spec.fps
        events = spec.events
        counts.add(len(events))
        assert len({e.kind for e in events}) == len(events) and len({e.slot for e in events}) == len(events)
        for e in events:
            assert 0 <= e.start < e.end <= spec.duration and e.end - e.start >= 1.9
            assert e.end - e.start <= synthetic.EVENT_FRACTION[1] * spec.duration + 0.1
        for i, a in enumerate(events):
            for b in events[i + 1:]:
                if a.start <= b.end and b.start <= a.end:
                    overlapping += 1
                else:
                    disjoint += 1
    assert counts == set(range(1, synthetic.MAX_EVENTS + 1)) and overlapping > 0 and disjoint > 0
    assert {e.kind for s in specs for e in s.events} == set(synthetic.SHAPES)


def test_render_frame_shows_shapes_only_during_events():
    kind = synthetic.SHAPES_BY_NAME["green triangle"]
    spec = synthetic.VideoSpec("x" * 11, 10.0, 8, 64, (synthetic.Event(kind, 2.0, 5.0, 1),))
    inside = synthetic.render_frame(spec, 3.0)
    x, y = (int(c) for c in spec.events[0].center(3.0, 64))
    assert tuple(inside[y, x]) == kind.rgb
    assert (np.abs(inside.astype(int) - kind.rgb).max(axis=-1) == 0).sum() > 100  # a shape, not a dot
    outside = synthetic.render_frame(spec, 5.2)
    assert np.all(outside == synthetic.BACKGROUND)
    assert synthetic.render_frame(spec, 5.0)[y, x].tolist() != list(synthetic.BACKGROUND)  # [start, end] closed


def test_videos_decode_with_the_promised_geometry(dataset):
    out, result = dataset
    specs = synthetic.load_specs(out)
    assert sorted(os.listdir(result["video_dir"])) == sorted(f"{v}.mp4" for v in specs)
    for video_id, spec in specs.items():
        with av.open(os.path.join(result["video_dir"], f"{video_id}.mp4")) as container:
            stream = container.streams.video[0]
            assert (stream.width, stream.height) == (64, 64) and stream.average_rate == spec.fps
            assert stream.codec_context.name in ("h264", "mpeg4")
            count = sum(1 for _ in container.decode(stream))
        assert count == spec.num_frames


def test_same_seed_same_data(dataset, tmp_path):
    out, result = dataset
    again = synthetic.make_dataset(str(tmp_path), num_videos=5, seed=11, num_heldout=2, min_duration=12,
                                   max_duration=16, progress=False)
    assert again["train"] == result["train"] and again["heldout"] == result["heldout"]
    for name in ("moment10m_train.json", "moment10m_heldout.json", "gesm_train.json", "gesm_heldout.json",
                 "grounding_train.jsonl", "grounding_heldout.jsonl", "synthetic_videos.json"):
        assert open(os.path.join(out, name)).read() == open(os.path.join(str(tmp_path), name)).read(), name
    video_id = result["train"][0]
    a = video.decode_frames(os.path.join(out, "videos", f"{video_id}.mp4"), 6, 32)
    b = video.decode_frames(os.path.join(str(tmp_path), "videos", f"{video_id}.mp4"), 6, 32)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert synthetic.sample_videos(12, 5)[0].video_id not in result["train"] + result["heldout"]


def _fill(template, variables):
    """Template substitution in the spirit of the public converter (every placeholder must have a value)."""
    def value(match):
        name = match.group(1)
        assert name in variables, (template, variables)
        v = variables[name]
        if name == "moment" and isinstance(v[0], list):
            return " and ".join(f"{s:.2f}s to {e:.2f}s" for s, e in v)
        if name in ("moment", "SOURCE_CLIP"):
            return f"{v[0]:.2f}s to {v[1]:.2f}s"
        if name == "click_position":
            return f"[{v[0]}s, <{v[1][0]}, {v[1][1]}>]"
        return str(v)
    return PLACEHOLDER.sub(value, template)


def test_moment10m_annotations(dataset):
    out, result = dataset
    specs = synthetic.load_specs(out)
    train, heldout = _load(out, "moment10m_train.json"), _load(out, "moment10m_heldout.json")
    assert list(train) == result["train"] and list(heldout) == result["heldout"]
    assert len(heldout) == 2 and not set(train) & set(heldout)
    seen_types = set()
    for raw in (train, heldout):
        for video_id, by_type in raw.items():
            spec = specs[video_id]
            intervals = [[e.start, e.end] for e in spec.events]
            assert len(by_type["segment_locate_data"]) == len(spec.events)
            for data_type, items in by_type.items():
                seen_types.add(data_type)
                for item in items:
                    assert item["id"] == video_id and item["data_type"] == data_type
                    score = item.get("match_score", item.get("clip_similarity"))
                    assert score > synthetic.THRESHOLDS[data_type]
                    turns = item["conversations"]
                    turns = [turns] if isinstance(turns, dict) else turns
                    for turn in turns:
                        assert set(turn) == {"User", "Assistant"}
                        assert "{" not in _fill(turn["User"], item["variables"])
                        assert "{" not in _fill(turn["Assistant"], item["variables"])
                    variables = item["variables"]
                    for key in ("moment", "SOURCE_CLIP"):
                        if key in variables:
                            moments = variables[key] if isinstance(variables[key][0], list) else [variables[key]]
                            assert all(m in intervals for m in moments)
                    if "click_position" in variables:
                        t, (x, y) = variables["click_position"]
                        event = next(e for e in spec.events if e.kind.name == variables["instance_class"])
                        assert event.start <= t <= event.end and 0 < x < 1 and 0 < y < 1
    assert seen_types == DATA_TYPES
    locate = train[result["train"][0]]["segment_locate_data"][0]
    assert "{moment}" in locate["conversations"][0]["Assistant"]
    caption = train[result["train"][0]]["segment_caption_data"][0]["conversations"]
    assert "{SOURCE_CLIP}" in caption["User"] and caption["Assistant"].endswith(" appears.")


def test_gesm_and_grounding_files(dataset):
    out, result = dataset
    specs = synthetic.load_specs(out)
    gesm = _load(out, "gesm_train.json")
    assert list(gesm) == result["train"]
    for video_id, entry in gesm.items():
        events = specs[video_id].events
        assert entry["timestamps"] == [[e.start, e.end] for e in events]
        assert entry["timestamps"] == sorted(entry["timestamps"])
        assert entry["captions"] == [e.caption() for e in events]
        assert all(c.startswith("An orange" if "orange" in c else "A ") for c in entry["captions"])
    for split, count in (("heldout", result["num_queries"]), ("train", result["num_train_queries"])):
        queries = [json.loads(line) for line in open(os.path.join(out, f"grounding_{split}.jsonl"))]
        assert len(queries) == sum(len(specs[v].events) for v in result[split]) == count
        assert [q["qid"] for q in queries] == list(range(len(queries)))
        for q in queries:
            spec = specs[q["vid"]]
            assert q["vid"] in result[split] and q["duration"] == spec.duration
            (window,) = q["relevant_windows"]
            event = next(e for e in spec.events if e.kind.name in q["query"])
            assert window == [event.start, event.end]


def test_command_line(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_synthetic", os.path.join(REPO, "data", "make_synthetic.py"))
    make_synthetic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_synthetic)
    assert make_synthetic.main(["--out", str(tmp_path), "--num_videos", "2", "--num_heldout", "1",
                                "--max_duration", "12", "--size", "32", "--seed", "4"]) == 0
    assert "1 train and 1 held-out videos" in capsys.readouterr().out
    assert len(os.listdir(tmp_path / "videos")) == 2
    with pytest.raises(SystemExit):
        make_synthetic.main(["--out", str(tmp_path), "--num_videos", "2", "--size", "33"])
