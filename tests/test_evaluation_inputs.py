"""Evaluation inputs without a model: annotation checks, the answer parser, the resumable answer log, flag checks."""
import json
import os
import subprocess
import sys

import pytest

from momentor_jax import cli
from momentor_jax.evaluate import check_settings
from momentor_jax.evaluation import annotations, parsing, tasks
from momentor_jax.inference import results
from momentor_jax.score import score

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = {"qid": 1, "vid": "v1", "query": "A red circle appears.", "duration": 20.0, "relevant_windows": [[2.0, 8.0]]}


def _jsonl(path, records, bom=False):
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return str(path)


def _problems(call):
    with pytest.raises(annotations.AnnotationError) as info:
        call()
    return info.value.problems


# ------------------------------------------------------------------------------------------------ annotations
BAD_QVH = [  # (record, words the one message about it must hold)
    ('"just a string"', "expected a JSON object"),
    (dict(GOOD, qid={"a": 1}), "qid must be"),
    (dict(GOOD, qid=None), "qid must be"),
    (dict(GOOD, query=7), "'query' must be a string"),
    (dict(GOOD, query=None), "'query' must be a string"),
    (dict(GOOD, query="   "), "'query' is empty"),
    (dict(GOOD, duration=float("nan")), "not a finite number"),
    (dict(GOOD, duration="20"), "duration must be a number"),
    (dict(GOOD, duration=-3.0), "not positive"),
    (dict(GOOD, duration=0), "not positive"),
    (dict(GOOD, relevant_windows=[[-1.0, 3.0]]), "starts before 0"),
    (dict(GOOD, relevant_windows=[[8.0, 2.0]]), "reversed"),
    (dict(GOOD, relevant_windows=[[4.0, 4.0]]), "zero length"),
    (dict(GOOD, relevant_windows=[[25.0, 30.0]]), "starts at or after the video's end"),
    (dict(GOOD, relevant_windows=[[1.0]]), "is not [start, end]"),
    (dict(GOOD, relevant_windows=[]), "non-empty list"),
    (dict(GOOD, vid="../etc"), "path separator"),
    (dict(GOOD, vid=""), "is empty"),
    ('{"qid": 3, "vid": "v", ', "invalid JSON"),
]


def test_every_bad_qvh_record_is_named_once_before_any_model_work(tmp_path):
    records = [GOOD] + [dict(r, qid=100 + i) if isinstance(r, dict) and "qid" in r and r["qid"] == 1 else r
                        for i, (r, _) in enumerate(BAD_QVH)]
    path = _jsonl(tmp_path / "bad.jsonl", records)
    problems = _problems(lambda: annotations.read_grounding(path))
    assert len(problems) == len(BAD_QVH)  # one message per bad record, the good one not among them
    for (_, words), (line, problem) in zip(BAD_QVH, enumerate(problems, start=2)):
        assert problem.startswith(f"{path}, line {line}: "), problem
        assert words in problem, (words, problem)
    with pytest.raises(annotations.AnnotationError, match="bad.jsonl: 19 bad records"):
        tasks.make_task("grounding", path)


def test_duplicate_qids_and_a_byte_order_mark(tmp_path):
    path = _jsonl(tmp_path / "dup.jsonl", [GOOD, dict(GOOD, qid="1")], bom=True)
    [problem] = _problems(lambda: annotations.read_grounding(path))
    assert "line 2: duplicate qid '1' (first at" in problem
    checked = annotations.read_grounding(_jsonl(tmp_path / "bom.jsonl", [GOOD], bom=True))
    assert checked.records[0]["vid"] == "v1" and checked.locations == [f"{tmp_path / 'bom.jsonl'}, line 1"]


def test_windows_past_the_end_are_kept_and_counted(tmp_path):
    path = _jsonl(tmp_path / "past.jsonl", [dict(GOOD, relevant_windows=[[15.0, 22.5]])])
    checked = annotations.read_grounding(path)
    assert checked.records[0]["relevant_windows"] == [[15.0, 22.5]]
    assert checked.counts == {annotations.PAST_THE_END: 1}
    assert "ends past the duration 20 s" in checked.notes[0]


def test_charades_txt_binary_bom_and_bad_lines(tmp_path):
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"v1 0.0 5.0##ok\n\xff\xfe\x00\x81garbage")
    [problem] = _problems(lambda: annotations.read_grounding(str(binary)))
    assert "line 2: not UTF-8 text" in problem
    good = tmp_path / "charades.txt"
    good.write_bytes(b"\xef\xbb\xbfAO8RW 0.0 6.9##a person is putting a book on a shelf.\r\n\nY6R7T 12.1 20.5##Opens\n")
    checked = annotations.read_grounding(str(good), {"AO8RW": 33.0})
    assert [(r["qid"], r["vid"], r["duration"]) for r in checked.records] == [(0, "AO8RW", 33.0), (1, "Y6R7T", None)]
    bad = tmp_path / "bad.txt"
    bad.write_text("AO8RW 0.0##missing end\nX nan 4.0##q\nY 1 2##   \nZ 3 1##reversed\n")
    problems = _problems(lambda: annotations.read_grounding(str(bad)))
    assert [p.split(": ", 1)[0] for p in problems] == [f"{bad}, line {n}" for n in (1, 2, 3, 4)]


@pytest.mark.parametrize("entry, words", [
    ({"timestamps": [[1, 5]], "sentences": ["a"]}, "missing 'duration'"),
    ({"duration": "50", "timestamps": [[1, 5]], "sentences": ["a"]}, "duration must be a number"),
    ({"duration": 50.0, "timestamps": [[1]], "sentences": ["a"]}, "is not [start, end]"),
    ({"duration": 50.0, "timestamps": ["1-5"], "sentences": ["a"]}, "is not [start, end]"),
    ({"duration": 50.0, "timestamps": [[1, 5]], "sentences": [7]}, "'sentence' must be a string"),
    ("not an object", "expected an object"),
])
def test_activitynet_records(tmp_path, entry, words):
    path = tmp_path / "anet.json"
    path.write_text(json.dumps({"v_ok": {"duration": 9.0, "timestamps": [[1, 2]], "sentences": ["fine"]},
                                "v_bad": entry}))
    for read in (annotations.read_grounding, annotations.read_dense_captioning):
        [problem] = _problems(lambda: read(str(path)))
        assert problem.startswith(f"{path}, video 'v_bad': ") and words in problem, problem


@pytest.mark.parametrize("text, words", [
    ("[1, 2]", "expected a JSON object"), ('"v1"', "expected a JSON object"), ("null", "expected a JSON object"),
    ('{"v1": NaN}', "not a finite number"), ('{"v1": "12"}', "must be a number"), ('{"v1": -2}', "not positive"),
    ("{v1: 3", "invalid JSON"), ("[" * 100_000 + "]" * 100_000, "nested too deep"),
])
def test_bad_durations_files(tmp_path, text, words):
    path = tmp_path / "durations.json"
    path.write_text(text)
    [problem] = _problems(lambda: annotations.read_durations(str(path)))
    assert str(path) in problem and words in problem, problem


def test_segmentation_refuses_nan_labels_in_ground_truth_and_predictions(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text('{"v1": ["a", "a", NaN, "background"], "v2": ["b", null]}')
    problems = _problems(lambda: annotations.read_segmentation(str(gt)))
    assert "video 'v1': frame 2: frame label nan is not a finite number" in problems[0]
    assert "video 'v2': frame 1" in problems[1]
    good = tmp_path / "good.json"
    good.write_text('{"v1": ["a", "a", "b", "background"]}')
    pred = tmp_path / "pred.json"
    pred.write_text('{"v1": ["a", NaN, "b", "background"]}')
    with pytest.raises(ValueError, match="frame 1: label nan is not a finite number"):
        score("action_segmentation", str(pred), [str(good)])


def test_score_reads_every_grounding_format_evaluate_reads(tmp_path):
    charades = tmp_path / "gt.txt"
    charades.write_text("v1 2.0 8.0##a red circle appears\nv2 1.0 3.0##it fades\n")
    anet = tmp_path / "gt.json"
    anet.write_text(json.dumps({"v1": {"duration": 20.0, "timestamps": [[2, 8]], "sentences": ["a red circle"]},
                                "v2": {"duration": 9.0, "timestamps": [[1, 3]], "sentences": ["it fades"]}}))
    qvh = _jsonl(tmp_path / "gt.jsonl", [dict(GOOD, qid=0, relevant_windows=[[2.0, 8.0]]),
                                          dict(GOOD, qid=1, vid="v2", relevant_windows=[[1.0, 3.0]])])
    predictions = _jsonl(tmp_path / "pred.jsonl", [{"qid": 0, "pred_relevant_windows": [[2.0, 8.0, 1.0]]},
                                                   {"qid": 1, "pred_relevant_windows": [[2.0, 4.0, 1.0]]}])
    scores = [score("grounding", predictions, [path]) for path in (str(charades), str(anet), qvh)]
    assert scores[0] == scores[1] == scores[2] and scores[0]["R1@0.3"] == 100.0 and scores[0]["R1@0.5"] == 50.0
    durations = tmp_path / "durations.json"
    durations.write_text('{"v1": "long"}')
    with pytest.raises(annotations.AnnotationError, match="durations.json, video 'v1'"):
        score("grounding", predictions, [str(charades)], durations=str(durations))


def test_prompts_too_long_for_the_model_are_listed():
    items = [("gt.jsonl, line 1", "short"), ("gt.jsonl, line 2", " ".join(["word"] * 2000))]
    with pytest.raises(annotations.AnnotationError) as info:
        annotations.check_prompts(items, lambda q: len(q.split()), 100, "gt.jsonl")
    assert info.value.problems == ["gt.jsonl, line 2: the question makes a prompt of 2000 tokens; the model takes at "
                                   "most 100 (2000 words)"]


def test_evaluate_settings():
    check_settings(4, None, 12)
    for bad in ((4, -1, 12), (4, 0, 12), (0, None, 12), (4, None, -1)):
        with pytest.raises(ValueError):
            check_settings(*bad)


# ------------------------------------------------------------------------------------------------ the answer parser
ANSWERS = [  # (answer text, windows at duration 20 s)
    ("26.0s 8.3s 7.2s", []),
    ("It appears from 2.0s to 8.0s, then 9.0s to 30.0s.", [(2.0, 8.0), (9.0, 20.0)]),
    ("12.30s-15.00s", [(12.3, 15.0)]),
    ("12 seconds to 15 seconds", [(12.0, 15.0)]),
    ("3s~5s and 6 secs – 7 secs", [(3.0, 5.0), (6.0, 7.0)]),
    ("Between 3.5s and 6s.", [(3.5, 6.0)]),
    ("8.0s to 2.0s", [(2.0, 8.0)]),
    ("I cannot tell.", []),
    ("", []),
]


def test_the_parser_on_a_fixed_set_of_answers():
    for text, windows in ANSWERS:
        assert parsing.parse_windows(text, 20.0) == windows, text
    assert parsing.parse_events("0.0s to 5.0s: a red circle appears. 6.0s to 9.0s: it fades.", 20.0) == [
        (0.0, 5.0, "a red circle appears"), (6.0, 9.0, "it fades")]


# ------------------------------------------------------------------------------------------------ the answer log
def test_result_log_parts_resume_and_settings(tmp_path):
    directory = str(tmp_path / "answers.parts")
    log = results.ResultLog(directory, {"checkpoint": "a", "batch_size": 2}, every=3)
    log.add([{"key": 0, "answer": "x"}, {"key": 1, "answer": "y"}])
    assert sorted(os.listdir(directory)) == ["run.json"]  # not due yet
    log.add([{"key": [2, "b"], "answer": "z"}])
    log.add([{"key": 3, "answer": "w"}])
    log.flush()
    assert sorted(os.listdir(directory)) == ["part-00000.jsonl", "part-00001.jsonl", "run.json"]
    (tmp_path / "answers.parts" / "part-00002.jsonl.tmp-1-2").write_text("half a line")  # a crash mid-write
    again = results.ResultLog(directory, {"batch_size": 2, "checkpoint": "a"})
    assert again.keys() == {0, 1, (2, "b"), 3}
    again.add([{"key": 4, "answer": "v"}])
    again.flush()
    assert "part-00002.jsonl" in os.listdir(directory)
    assert results.latest(again.records, [1, 4]) == {1: {"key": 1, "answer": "y"}, 4: {"key": 4, "answer": "v"}}
    with pytest.raises(ValueError, match="checkpoint: 'a' there, 'b' now"):
        results.ResultLog(directory, {"checkpoint": "b", "batch_size": 2})
    again.check_made_for({0: {"answer": "x"}, 9: {"answer": "q"}}, ("answer",), "questions")
    with pytest.raises(ValueError, match="kept for 1 was made for answer 'y'; the questions changed since"):
        again.check_made_for({1: {"answer": "other"}}, ("answer",), "questions")


def test_result_log_on_gcs_writes_whole_objects(gcs_bucket):
    """gs:// objects cannot be appended to: every flush is a new part object, and a reopened log reads them all."""
    from momentor_jax import fileio

    directory = f"{gcs_bucket}/eval/answers.parts"
    log = results.ResultLog(directory, {"checkpoint": "a"}, every=2)
    log.add([{"key": 0}, {"key": 1}])
    log.add([{"key": 2}])
    log.flush()
    assert fileio.listdir(directory) == ["part-00000.jsonl", "part-00001.jsonl", "run.json"]
    assert results.ResultLog(directory, {"checkpoint": "a"}).keys() == {0, 1, 2}


# ------------------------------------------------------------------------------------------------ command lines
def test_config_paths_resolve_against_the_repository(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    [resolved] = cli.resolve_config_arg(["--config=configs/tiny.py:gesm"])
    assert resolved == f"--config={os.path.join(REPO, 'configs', 'tiny.py')}:gesm"
    assert cli.resolve_config_arg(["--config", "configs/demo.py"])[1] == os.path.join(REPO, "configs", "demo.py")
    with pytest.raises(SystemExit) as info:
        cli.resolve_config_arg(["--config=configs/nope.py"])
    assert info.value.code == 2
    assert "no such config file" in capsys.readouterr().err


def _run(args, cwd=REPO):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_usage_errors_exit_2_in_one_line(tmp_path):
    predict = ["-m", "momentor_jax.predict", "--checkpoint", "ckpt", "--video", "v.mp4", "--question", "q"]
    cases = {
        "--temperature": (predict + ["--temperature", "-1"], "temperature must be a finite number >= 0"),
        "--top_p 2": (predict + ["--top_p", "2"], "top_p must be in (0, 1]"),
        "--top_p -1": (predict + ["--top_p", "-1"], "top_p must be in (0, 1]"),
        "--max_new_tokens 0": (predict + ["--max_new_tokens", "0"], "max_new_tokens must be an integer >= 1"),
        "--max_new_tokens -5": (predict + ["--max_new_tokens", "-5"], "max_new_tokens must be an integer >= 1"),
        "evaluate --max_examples -1": (["-m", "momentor_jax.evaluate", "--checkpoint", "c", "--task", "grounding",
                                        "--annotations", "a.jsonl", "--video_dir", "v", "--out", "o",
                                        "--max_examples", "-1"], "max_examples must be an integer >= 1"),
        "train --config": (["-m", "momentor_jax.train", "--config=configs/nope.py", "--workdir=w"],
                           "no such config file"),
        "evaluate bad ground truth": (["-m", "momentor_jax.evaluate", "--checkpoint", "no_such_checkpoint", "--task",
                                       "grounding", "--annotations", _jsonl(tmp_path / "gt.jsonl", [GOOD, GOOD]),
                                       "--video_dir", str(tmp_path), "--out", str(tmp_path / "out")],
                                      "gt.jsonl: 1 bad record"),
    }
    processes = {name: _run(args, cwd=tmp_path) for name, (args, _) in cases.items()}
    for name, process in processes.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 2, (name, err[-2000:])
        assert err.startswith("error: ") and cases[name][1] in err.splitlines()[0], (name, err)
        assert "Traceback" not in err


def test_hosts_without_tpu_chips_skip_the_tpu_probe(monkeypatch):
    specs = {"libtpu": object()}
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: specs.get(name))
    monkeypatch.setattr(cli.glob, "glob", lambda pattern: [])
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    cli.skip_absent_tpu()
    assert os.environ["JAX_PLATFORMS"] == "cpu"
    for chips, plugin in ((["/dev/accel0"], None), ([], "jax_cuda12_plugin")):
        monkeypatch.delenv("JAX_PLATFORMS", raising=False)
        monkeypatch.setattr(cli.glob, "glob", lambda pattern, chips=chips: chips if "accel" in pattern else [])
        specs[plugin] = object()
        cli.skip_absent_tpu()
        assert "JAX_PLATFORMS" not in os.environ
        specs.pop(plugin, None)
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    cli.skip_absent_tpu()
    assert os.environ["JAX_PLATFORMS"] == "tpu"
