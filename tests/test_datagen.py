"""The data generation engine (momentor_jax/datagen) against rendered videos with known cuts, events and movers,
and end to end with tiny random Hugging Face models into data/convert_data.py and data/convert_data_gesm.py."""
import os
import random

import numpy as np
import pytest

import data_scripts

from momentor_jax.data import moment10m, synthetic_cuts
from momentor_jax.datagen import events, instances, instructions, shots

SAMPLE = shots.ShotConfig(sample_fps=2, max_side=64)


def _interval_iou(a, b) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


@pytest.fixture(scope="module")
def cut_videos(tmp_path_factory):
    """6 rendered videos (64 x 64, 10 fps, 7-25 s) with their truth and one scan each."""
    out = str(tmp_path_factory.mktemp("cuts"))
    specs = synthetic_cuts.make_dataset(out, 6, seed=1, progress=False)
    scans = {v: shots.scan_video(os.path.join(out, "videos", f"{v}.mp4"), SAMPLE) for v in specs}
    return out, specs, scans


# ---- shots and events ----

def test_shot_boundaries_within_one_frame(cut_videos):
    _, specs, scans = cut_videos
    true_positive = found = truth = 0
    for video_id, spec in specs.items():
        scan = scans[video_id]
        found += len(scan.cut_frames)
        truth += len(spec.cuts)
        true_positive += sum(any(abs(c - t) <= 1 for t in spec.cuts) for c in scan.cut_frames)
        assert scan.shots[0][0] == 0.0 and scan.shots[-1][1] == pytest.approx(spec.duration, abs=1e-6)
        assert all(a[1] == b[0] for a, b in zip(scan.shots, scan.shots[1:]))
        assert np.all(np.diff(scan.sample_times) == pytest.approx(0.5, abs=0.051))
    assert truth >= 30
    assert true_positive / found >= 0.95 and true_positive / truth >= 0.95, (true_positive, found, truth)


def test_events_recovered_from_hue_features(cut_videos):
    """Hand-made features (hue, blind to brightness) make the events reachable: see synthetic_cuts.py."""
    _, specs, scans = cut_videos
    hits = total = 0
    for video_id, spec in specs.items():
        scan = scans[video_id]
        features = events.shot_features(scan.shots, scan.sample_times, synthetic_cuts.hue_features(scan.samples))
        found = events.merge_shots(scan.shots, features, events.EventConfig(threshold=0.7, min_event_seconds=1.0))
        assert found[0].start == 0.0 and found[-1].end == scan.shots[-1][1]
        for truth in spec.event_spans():
            total += 1
            hits += max(_interval_iou(truth, (e.start, e.end)) for e in found) >= 0.5
    assert total >= 20 and hits / total >= 0.9, (hits, total)


def test_merge_shots_threshold_and_minimum_length():
    shot_spans = [(0, 2), (2, 4), (4, 4.5), (4.5, 7), (7, 9)]
    f = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.05, 1], [1, 0.02]], np.float32)
    merged = events.merge_shots(shot_spans, f, events.EventConfig(threshold=0.9, min_event_seconds=0))
    assert [(e.start, e.end, e.shots) for e in merged] == [(0, 4, [0, 1]), (4, 7, [2, 3]), (7, 9, [4])]
    # A 0.5 s shot unlike both neighbours joins the more similar one when events must last 1 s.
    f2 = np.array([[1, 0], [1, 0], [0.6, 0.8], [0, 1], [0, 1]], np.float32)
    merged = events.merge_shots(shot_spans, f2, events.EventConfig(threshold=0.95, min_event_seconds=1.0))
    assert [(e.start, e.end) for e in merged] == [(0, 4), (4, 9)]
    assert np.allclose([np.linalg.norm(e.feature) for e in merged], 1)
    with pytest.raises(ValueError, match="2 shots but 1 shot features"):
        events.merge_shots(shot_spans[:2], f[:1])


# ---- tracking ----

class ColourDetector:
    """Stub detector: the box of the pixels within a tolerance of each mover's colour, labelled with its shape."""

    def __init__(self, kinds):
        self.kinds = kinds

    def detect(self, images, labels):
        out = []
        for image in images:
            found = []
            for kind in self.kinds:
                ys, xs = np.nonzero(np.abs(image.astype(int) - kind.rgb).max(axis=-1) < 40)
                if len(xs) >= 4:
                    h, w = image.shape[:2]
                    box = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
                    found.append(instances.Detection(box, 0.9, kind.shape))
            out.append(found)
        return out


def test_tracker_recovers_each_movers_span(cut_videos):
    _, specs, scans = cut_videos
    checked = 0
    for video_id, spec in specs.items():
        scan = scans[video_id]
        detector = ColourDetector([m.kind for m in spec.movers])
        detections = detector.detect(scan.samples, None)
        tracks = instances.track(detections, list(scan.sample_times))
        for mover in spec.movers:
            mine = [t for t in tracks if t.label == mover.kind.shape]
            assert len(mine) == 1, (video_id, mover, [(t.label, t.times) for t in tracks])
            span = mine[0].span(1 / SAMPLE.sample_fps, scan.duration)
            assert _interval_iou(span, spec.mover_span(mover)) >= 0.8, (span, spec.mover_span(mover))
            t, (x, y) = mine[0].click()
            k = int(round(t * spec.fps))
            x0, y0, x1, y1 = mover.box(k)
            assert x0 <= x <= x1 and y0 <= y <= y1
            checked += 1
    assert checked >= 6


def test_tracker_uses_appearance_and_gaps():
    d = instances.Detection
    # Two same-label objects swap places between frames: boxes alone would swap them, appearance keeps them apart.
    frames = [[d((0.1, 0.1, 0.3, 0.3), 0.9, "dog"), d((0.6, 0.1, 0.8, 0.3), 0.9, "dog")],
              [d((0.55, 0.1, 0.75, 0.3), 0.9, "dog"), d((0.15, 0.1, 0.35, 0.3), 0.9, "dog")],
              [], [], [d((0.1, 0.1, 0.3, 0.3), 0.9, "dog")]]
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    appearance = [np.stack([a, b]), np.stack([b, a]), None, None, np.stack([a])]
    appearance = [x if x is not None else np.zeros((0, 2)) for x in appearance]
    config = instances.TrackerConfig(iou_weight=0.3, min_match=0.3, max_gap=1, min_detections=1)
    tracks = instances.track(frames, [0, 1, 2, 3, 4], appearance, config)
    first = [t for t in tracks if t.times[0] == 0]
    assert sorted(tuple(t.boxes[1][:1]) for t in first) == [(0.15,), (0.55,)]
    assert all(np.allclose(t.appearance[0], t.appearance[1]) for t in first)
    assert [t.times for t in tracks if t.times[0] == 4] == [[4]]  # the gap of 2 frames ended the first track
    assert instances.box_iou((0, 0, 1, 1), (0.5, 0, 1.5, 1)) == pytest.approx(1 / 3)


# ---- instructions ----

class StubWriter:
    def __init__(self, replies):
        self.replies, self.prompts = replies, []

    def complete(self, prompt):
        self.prompts.append(prompt)
        return self.replies(prompt)


def _facts():
    segments = [instructions.Segment([0.0, 3.0], "A man opens {the} door.", 0.2, 1.2, 0.9),
                instructions.Segment([3.0, 7.5], "A dog runs.", 0.1, 0.9, None)]
    inst = instructions.Instance("dog", [2.5, 7.0], [4.0, [0.5, 0.25]], "A brown dog.", 0.3, 0.05,
                                 segment_captions=[(0, [2.5, 3.0], "A dog sits.", 0.2), (1, [3.0, 7.0], "", 0.1)],
                                 composites=[(1, [3.0, 7.0], instructions.composite_content("dog", "A dog runs."),
                                              0.25)])
    return segments, [inst]


def _convert_all(items, video_id):
    out = []
    for data_type, group in items.items():
        for item in group:
            out.append(moment10m.convert_item(item, video_id, data_type))
            moment10m.convert_item(item, video_id, data_type, fmt=moment10m.TEXT, rng=random.Random(0))
    return out


def test_instructions_every_type_from_templates():
    segments, insts = _facts()
    items, gesm, stats = instructions.build("vid", segments, insts, seed=3)
    assert set(items) == set(moment10m.DATA_TYPES) and all(items.values())
    assert gesm == {"timestamps": [[0.0, 3.0], [3.0, 7.5]], "captions": ["A man opens the door.", "A dog runs."]}
    assert stats["llm_calls"] == 0 and len(items["instance_segment_caption_data"]) == 1  # the empty caption is skipped
    records = _convert_all(items, "vid")
    assert all("{" not in turn["User"] + turn["Assistant"] for r in records for turn in r["conversations"])
    locate = items["segment_locate_data"]
    assert [i["match_score"] for i in locate] == [1.2, 0.9] and locate[0]["variables"]["content"] == \
        "a man opens the door"
    assert items["hypo_scene_data"][0]["match_score"] == 0.9 and len(items["hypo_scene_data"]) == 1
    assert items["appearance_data"][0]["clip_similarity"] == 0.05
    assert items["comp_ret_data"][0]["variables"]["content"] == "a dog is visible while a dog runs"
    for data_type, key in instructions.SCORE_KEYS.items():
        assert all(key in item for item in items[data_type])
    assert instructions.build("vid", segments, insts, seed=3)[0] == items


def test_instructions_written_by_a_language_model():
    segments, insts = _facts()
    writer = StubWriter(lambda p: "what does he open" if p.endswith("Question:") else "the {front} door")
    items, _, stats = instructions.build("vid", segments, insts, writer=writer)
    qa = items["qa_data"][0]["conversations"][0]
    assert qa == {"User": "In {SOURCE_CLIP}, what does he open?", "Assistant": "The front door."}
    assert items["instance_qa_data"][0]["conversations"][0]["Assistant"] == "The front door."
    assert "A man opens the door." in writer.prompts[0]
    assert stats["llm_calls"] == len(writer.prompts) > 0 and stats["llm_fallbacks"] == 0
    _convert_all(items, "vid")
    silent = StubWriter(lambda p: "")
    items, _, stats = instructions.build("vid", segments, insts, writer=silent)
    assert stats["llm_fallbacks"] == stats["llm_calls"] > 0
    assert items["qa_data"][0]["conversations"][0]["Assistant"] == "A man opens the door."


def test_make_synthetic_cuts_command(tmp_path, capsys):
    argv = ["--cuts", "--out", str(tmp_path), "--num_videos", "2", "--seed", "4", "--size", "32"]
    assert data_scripts.load("make_synthetic").main(argv) == 0
    specs = synthetic_cuts.load_specs(str(tmp_path))
    assert len(specs) == 2 and "2 cut videos" in capsys.readouterr().out
    spec = next(iter(specs.values()))
    assert synthetic_cuts.sample_cut_video(4, 0, size=32) == spec
    frame = synthetic_cuts.render_cut_frame(spec, spec.cuts[0])
    assert tuple(frame[0, 0]) == synthetic_cuts.background(spec, spec.cuts[0]) != synthetic_cuts.background(
        spec, spec.cuts[0] - 1)


def test_iter_frames_and_frame_rate(cut_videos):
    from momentor_jax.data import video as video_lib

    out, specs, _ = cut_videos
    video_id, spec = next(iter(specs.items()))
    path = os.path.join(out, "videos", f"{video_id}.mp4")
    frames = list(video_lib.iter_frames(path, max_side=32))
    assert video_lib.frame_rate(path) == spec.fps and len(frames) == spec.num_frames
    assert [round(t * spec.fps) for t, _ in frames] == list(range(spec.num_frames))
    assert frames[0][1].shape == (32, 32, 3) and frames[0][1].dtype == np.uint8
    with pytest.raises(video_lib.VideoDecodeError, match="nope.mp4"):
        list(video_lib.iter_frames(os.path.join(out, "nope.mp4")))
