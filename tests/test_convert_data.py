"""data/convert_data.py and data/convert_data_gesm.py on hand-written raw files."""
import json
import os
import re
import subprocess
import sys

import pytest

from momentor_jax.data import gesm, moment10m

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "moment10m_raw.json")


def run_script(script, *args):
    """Runs a data/ script the way users do: `python data/SCRIPT ...` from the repo root."""
    return subprocess.run([sys.executable, os.path.join("data", script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def temporal_run(tmp_path_factory):
    target = tmp_path_factory.mktemp("temporal") / "out.jsonl"
    result = run_script("convert_data.py", "--source_path", FIXTURE, "--target_path", str(target))
    return result, target


def test_temporal_format_exact_lines(temporal_run):
    result, target = temporal_run
    assert result.returncode == 0, result.stderr
    with open(target) as f:
        lines = f.read().splitlines()
    assert len(lines) == 11
    assert lines[0] == (
        '{"id": "vidA", "data_type": "segment_caption_data", "conversations": [{"User": "Describe what happens '
        'during <TEMP-INPUT> to <TEMP-INPUT>.", "Assistant": "A man opens the fridge."}], '
        '"temporal_input_times": [1.5, 4.0], "temporal_output_times": []}')
    assert lines[3] == (
        '{"id": "vidA", "data_type": "appearance_data", "conversations": [{"User": "What is the object at '
        '<0.12, 0.46><TEMP-INPUT>?", "Assistant": "A red ball."}], "temporal_input_times": [3.25], '
        '"temporal_output_times": []}')
    assert lines[10] == (
        '{"id": "vidB", "data_type": "qa_data", "conversations": [{"User": "What happens in <TEMP-INPUT> to '
        '<TEMP-INPUT>?", "Assistant": "A chef cuts onions."}, {"User": "When else does the chef cut onions?", '
        '"Assistant": "Also at <TEMP-OUTPUT> to <TEMP-OUTPUT> and <TEMP-OUTPUT> to <TEMP-OUTPUT>."}], '
        '"temporal_input_times": [5.0, 9.0], "temporal_output_times": [30.0, 35.0, 50.0, 52.0]}')


def test_every_type_and_placeholder_form(temporal_run):
    _, target = temporal_run
    records = {(r["id"], r["data_type"]): r for r in read_jsonl(target)}
    assert {data_type for _, data_type in records} == set(moment10m.DATA_TYPES)
    two = records["vidA", "instance_caption_data"]  # moment as a list of 2, conversations as a list
    assert two["conversations"] == [{
        "User": "When does the cat appear?",
        "Assistant": "It appears at <TEMP-OUTPUT> to <TEMP-OUTPUT> and <TEMP-OUTPUT> to <TEMP-OUTPUT>."}]
    assert two["temporal_output_times"] == [1.0, 2.0, 3.25, 4.5]
    three = records["vidA", "cross_segment_qa_data"]  # moment as a list of 3
    assert three["conversations"][0]["Assistant"] == (
        "He waves at <TEMP-OUTPUT> to <TEMP-OUTPUT>, <TEMP-OUTPUT> to <TEMP-OUTPUT> and "
        "<TEMP-OUTPUT> to <TEMP-OUTPUT>.")
    assert three["temporal_output_times"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.5]
    assert records["vidA", "instance_segment_caption_data"]["conversations"][0]["User"] == (
        "What does the dog do during <TEMP-INPUT> to <TEMP-INPUT>?")  # instance_class
    assert records["vidA", "instance_qa_data"]["conversations"][0]["Assistant"] == "A cup of tea."  # content
    assert records["vidA", "comp_ret_data"]["conversations"][0] == {
        "User": "Find the moment where the dog sleeps.", "Assistant": "<TEMP-OUTPUT> to <TEMP-OUTPUT>."}
    assert records["vidA", "comp_ret_data"]["temporal_output_times"] == [20.0, 31.75]
    assert records["vidA", "hypo_scene_data"]["temporal_input_times"] == [6.0, 8.0]  # SOURCE_CLIP


def test_counts_and_rejections_name_their_location(temporal_run):
    result, _ = temporal_run
    assert "rejected video vidA type qa_data item 1: Assistant text has unknown placeholder {foo}" in result.stderr
    assert "rejected video vidA type hypo_scene_data item 1: SOURCE_CLIP: window starts after it ends" in result.stderr
    assert ("rejected video vidA type segment_locate_data item 1: Assistant text uses {moment} but variables has "
            "no 'moment'") in result.stderr
    assert "rejected video vidB type cross_segment_qa_data item 0: moment: negative time -1" in result.stderr
    rows = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in result.stdout.splitlines()
            if re.match(r"^\w+\s+\d+\s+\d+\s+\d+\s+\d+$", line)}
    assert rows["segment_caption_data"] == [2, 1, 1, 0]
    assert rows["cross_segment_qa_data"] == [3, 1, 1, 1]
    assert rows["total"] == [17, 2, 11, 4]


def test_strict_exit_status_and_no_filter(tmp_path):
    target = tmp_path / "out.jsonl"
    result = run_script("convert_data.py", "--source_path", FIXTURE, "--target_path", str(target), "--no_filter",
                        "--strict")
    assert result.returncode == 1
    records = read_jsonl(target)
    assert len(records) == 13  # the two low-score items are kept, the four malformed ones still rejected
    both = [r for r in records if r["conversations"][0]["User"].startswith("How is")]
    assert both[0]["conversations"][0]["User"] == (
        "How is <TEMP-INPUT> to <TEMP-INPUT> related to <TEMP-INPUT> to <TEMP-INPUT>?")
    assert both[0]["temporal_input_times"] == [12.0, 14.0, 5.0, 9.0]  # order of appearance
    missing = run_script("convert_data.py", "--source_path", str(tmp_path / "nope.json"), "--target_path",
                         str(target))
    assert missing.returncode == 2 and "nope.json" in missing.stderr


def test_text_format_uses_the_public_templates_and_seed(tmp_path):
    paths = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        paths[name] = tmp_path / f"{name}.jsonl"
        moment10m.convert_file(FIXTURE, str(paths[name]), fmt="text", seed=seed, log=lambda message: None)
    a, b, c = (read_jsonl(paths[name]) for name in "abc")
    assert a == b and a != c
    for record in a:
        assert not record["temporal_input_times"] and not record["temporal_output_times"]
        assert "<TEMP-" not in json.dumps(record)
    first = a[0]["conversations"][0]["User"]
    assert first in {f"Describe what happens during {t.format(1.5, 4.0)}." for t in moment10m.MOMENT_TEMPLATE_POOL}
    waves = next(r for r in a if r["data_type"] == "cross_segment_qa_data")["conversations"][0]["Assistant"]
    assert waves in {f"He waves at {t.format(0, 1)}, {t.format(2, 3)} and {t.format(4, 5.5)}."
                     for t in moment10m.MOMENT_TEMPLATE_POOL}
    click = next(r for r in a if r["data_type"] == "appearance_data")["conversations"][0]["User"]
    assert click == "What is the object at [3.25s, <0.12, 0.46>]?"


def test_malformed_structures_are_rejected_not_fatal(tmp_path):
    raw = {"v1": {"qa_data": [
        "not an object",
        {"conversations": [{"User": "Where?"}], "match_score": 1},
        {"conversations": {"User": "{moment:.2f}", "Assistant": "x"}, "variables": {"moment": [1, 2]},
         "match_score": 1},
        {"conversations": {"User": "a } b", "Assistant": "x"}, "match_score": 1},
        {"conversations": {"User": "At {click_position}", "Assistant": "x"}, "variables": {"click_position": [1, 2]},
         "match_score": 1},
        {"conversations": {"User": "ok", "Assistant": "fine"}, "match_score": "high"},
        {"conversations": {"User": "ok", "Assistant": "fine"}, "match_score": 1}],
        "mystery_data": [{"conversations": {"User": "a", "Assistant": "b"}, "match_score": 5}]},
        "v2": ["not", "a", "dict"]}
    source = tmp_path / "raw.json"
    source.write_text(json.dumps(raw))
    messages = []
    counts = moment10m.convert_file(str(source), str(tmp_path / "out.jsonl"), log=messages.append)
    assert counts.by_type["qa_data"].rejected == 6 and counts.by_type["qa_data"].written == 1
    assert counts.by_type["mystery_data"].rejected == 1
    assert counts.total.rejected == 8
    joined = "\n".join(messages)
    for expected in ("v1 type qa_data item 0: item is str", "item 1: conversations[0] lacks 'User' or 'Assistant'",
                     "item 2: User text has unknown placeholder {moment}", "item 3: User text has unbalanced braces",
                     "item 4: click_position [1, 2] is not [t, [x, y]]",
                     "item 5: match_score 'high' is not a finite number",
                     "v1 type mystery_data item 0: unknown data type", "rejected video v2"):
        assert expected in joined, expected


GESM_RAW = {
    "g1": {"timestamps": [[12.0, 20.5], [0, 5], [5, 12]], "captions": ["He leaves.", "A man enters.", "He sits."]},
    "g2": {"timestamps": [[0, 3]], "captions": ["Only one event."]},
    "g3": {"timestamps": [[4, 2]], "captions": ["Backwards."]},
    "g4": {"timestamps": [[0, 1], [1, 2]], "captions": ["One caption only."]},
}


@pytest.mark.parametrize("fmt", ["temporal", "text"])
def test_gesm_conversion(tmp_path, fmt):
    source, target = tmp_path / "gesm.json", tmp_path / "gesm.jsonl"
    source.write_text(json.dumps(GESM_RAW))
    result = run_script("convert_data_gesm.py", "--source_path", str(source), "--target_path", str(target),
                        "--format", fmt, "--seed", "5")
    assert result.returncode == 0, result.stderr
    assert "rejected video g3 type event_sequence_decoding item 2: timestamps[0]: window starts after it ends" \
        in result.stderr
    assert "rejected video g4 type event_sequence_decoding item 3: 2 timestamps but 1 captions" in result.stderr
    assert re.search(r"total\s+4\s+0\s+2\s+2", result.stdout)
    records = read_jsonl(target)
    assert [r["id"] for r in records] == ["g1", "g2"]
    for record in records:
        assert record["data_type"] == "event_sequence_decoding" and len(record["conversations"]) == 1
        assert record["conversations"][0]["User"] in gesm.PROMPT_POOL
        assert record["temporal_input_times"] == []
    answer = records[0]["conversations"][0]["Assistant"]
    if fmt == "temporal":
        assert answer == ("<TEMP-OUTPUT> to <TEMP-OUTPUT>: A man enters. <TEMP-OUTPUT> to <TEMP-OUTPUT>: He sits. "
                          "<TEMP-OUTPUT> to <TEMP-OUTPUT>: He leaves.")
        assert records[0]["temporal_output_times"] == [0.0, 5.0, 5.0, 12.0, 12.0, 20.5]
        assert records[1]["temporal_output_times"] == [0.0, 3.0]
    else:
        assert answer in {f"{t.format(0, 5)}: A man enters. {t.format(5, 12)}: He sits. {t.format(12.0, 20.5)}: "
                          "He leaves." for t in moment10m.MOMENT_TEMPLATE_POOL}
        assert records[0]["temporal_output_times"] == []
    strict = run_script("convert_data_gesm.py", "--source_path", str(source), "--target_path", str(target),
                        "--format", fmt, "--strict")
    assert strict.returncode == 1
