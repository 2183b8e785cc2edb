"""predict and evaluate on synthetic videos with a tiny random checkpoint (converted layout and a run workdir)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import tiny_checkpoints
from PIL import Image

from momentor_jax import checkpoints
from momentor_jax.data import extract, synthetic
from momentor_jax.data import tokenizer as tokenizer_lib
from momentor_jax.evaluate import evaluate
from momentor_jax.evaluation import annotations, parsing, plots, tasks
from momentor_jax.inference import generate, load
from momentor_jax.models import config as model_configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM_PROMPT = "You are Momentor, a video assistant."


def _run(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """Two synthetic held-out videos, their frame records, a tokenizer, a converted checkpoint and a run workdir.

    The random model's temporal output table is scaled up so that it writes temporal tokens (times) readily.
    """
    root = tmp_path_factory.mktemp("predict_evaluate")
    raw = str(root / "raw")
    synthetic.make_dataset(raw, 2, seed=3, num_heldout=2, min_duration=8, max_duration=10, progress=False)
    config = model_configs.tiny()
    summary = extract.extract_frames(os.path.join(raw, "videos"), str(root / "frames"), num_frames=config.num_frames,
                                     size=config.vision.image_size, progress=False)
    assert not summary.failed
    base = config.llm.vocab_size - 5
    model_path = tokenizer_lib.train_sentencepiece(synthetic.tokenizer_texts(200), str(root / "sp"), vocab_size=base)
    tokenizer = tokenizer_lib.MomentorTokenizer(model_path, config.num_temporal_tokens)

    converted = str(root / "converted")
    params = tiny_checkpoints.save_writing_times(converted, config, tokenizer)

    workdir = root / "run"  # the layout momentor_jax.train writes
    (workdir / "checkpoints" / "3").mkdir(parents=True)
    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save(str(workdir / "checkpoints" / "3" / "params"), params)
    tokenizer.save(str(root / "data" / "tokenizer"))
    (workdir / "config.json").write_text(json.dumps({
        "model": config.to_dict(), "tokenizer": None,
        "data": {"dir": str(root / "data"), "system_prompt": SYSTEM_PROMPT}}))
    return {"root": root, "raw": raw, "converted": converted, "workdir": str(workdir), "config": config,
            "specs": synthetic.load_specs(raw)}


def test_load_model_accepts_the_three_layouts(tiny_setup):
    converted_params, config, tokenizer = load.load_model(tiny_setup["converted"])
    assert config == tiny_setup["config"] and tokenizer.vocab_size == config.llm.vocab_size
    for path in (tiny_setup["workdir"], os.path.join(tiny_setup["workdir"], "checkpoints", "3")):
        params, run_config, _ = load.load_model(path)
        assert run_config == config
        np.testing.assert_array_equal(params["tpm"]["output_embedding"], converted_params["tpm"]["output_embedding"])
        assert load.load_system_prompt(path) == SYSTEM_PROMPT
    with pytest.raises(FileNotFoundError, match="neither a training workdir"):
        load.load_model(str(tiny_setup["root"] / "raw"))


def test_predict_json_windows_lie_in_the_video(tiny_setup):
    vid, spec = next(iter(tiny_setup["specs"].items()))
    video = os.path.join(tiny_setup["raw"], "videos", f"{vid}.mp4")
    result = _run("momentor_jax.predict", "--checkpoint", tiny_setup["workdir"], "--video", video,
                  "--question", "When does the red circle appear?", "--json", "--max_new_tokens", "12")
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["duration"] == pytest.approx(spec.duration, abs=0.2)
    assert answer["times"], answer  # the random model writes times readily, rarely joined into windows
    for t in answer["times"]:
        assert f"{t:.1f}s" in answer["answer"]
    assert answer["windows"] == [list(w) for w in parsing.parse_windows(answer["answer"], answer["duration"])]
    assert answer["parsed"] == bool(answer["windows"])
    assert "loading the model" in result.stderr and "_CHECKPOINT_METADATA" not in result.stderr


def test_predict_missing_or_broken_video_exits_2(tiny_setup):
    broken = tiny_setup["root"] / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    for video in (str(tiny_setup["root"] / "absent.mp4"), str(broken)):
        result = _run("momentor_jax.predict", "--checkpoint", tiny_setup["converted"], "--video", video,
                      "--question", "What happens?")
        assert result.returncode == 2, result.stderr[-2000:]
        assert video in result.stderr
        assert "loading the model" not in result.stderr  # rejected before the parameters load


@pytest.fixture
def no_params(monkeypatch):
    """Fails any test that loads the parameters."""
    def refuse(path):
        raise AssertionError(f"the parameters of {path} were loaded")
    monkeypatch.setattr(checkpoints, "load_params", refuse)


def test_predict_checks_video_and_question_before_loading(tiny_setup, no_params):
    from momentor_jax import predict
    from momentor_jax.data.video import VideoDecodeError
    text = tiny_setup["root"] / "text.mp4"
    text.write_text("this is a text file")
    with pytest.raises(VideoDecodeError, match="text.mp4: .*Invalid data"):
        predict.predict(tiny_setup["converted"], str(text), "What happens?")
    video = os.path.join(tiny_setup["raw"], "videos", next(iter(tiny_setup["specs"])) + ".mp4")
    with pytest.raises(ValueError, match="prompt of .* tokens"):
        predict.predict(tiny_setup["converted"], video, " ".join(["word"] * 2000))


def _check_outputs(out, metrics, num_queries):
    assert {"R1@0.3", "R1@0.5", "R1@0.7", "mIoU"} <= set(metrics)
    assert metrics["num_queries"] == num_queries and 0 <= metrics["num_unparsable"] <= num_queries
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f) == metrics
    with open(os.path.join(out, "predictions.jsonl")) as f:
        predictions = [json.loads(line) for line in f]
    assert len(predictions) == num_queries
    for p in predictions:
        assert {"qid", "vid", "pred_relevant_windows"} <= set(p)
    with Image.open(os.path.join(out, "timeline.png")) as image:
        assert image.size[0] > 100 and image.size[1] > 50
    return predictions


def test_evaluate_grounding_command_with_video_dir(tiny_setup):
    out = str(tiny_setup["root"] / "eval_cli")
    annotations = os.path.join(tiny_setup["raw"], "grounding_heldout.jsonl")
    result = _run("momentor_jax.evaluate", "--checkpoint", tiny_setup["workdir"], "--task", "grounding",
                  "--annotations", annotations, "--video_dir", os.path.join(tiny_setup["raw"], "videos"),
                  "--out", out, "--batch_size", "2", "--max_new_tokens", "12")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(annotations) as f:
        num_queries = sum(1 for _ in f)
    with open(os.path.join(out, "metrics.json")) as f:
        _check_outputs(out, json.load(f), num_queries)


def test_evaluate_grounding_from_frame_records_counts_missing_videos(tiny_setup, monkeypatch):
    with open(os.path.join(tiny_setup["raw"], "grounding_heldout.jsonl")) as f:
        records = [json.loads(line) for line in f][:2]
    records.append({"qid": 99, "vid": "absent_video", "query": "A red circle appears.", "duration": 10.0,
                    "relevant_windows": [[1.0, 2.0]]})
    annotations = tiny_setup["root"] / "with_missing.jsonl"
    annotations.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = str(tiny_setup["root"] / "eval_frames")
    drawn = []
    original = plots.plot_timelines
    monkeypatch.setattr(plots, "plot_timelines", lambda rows, path, **kw: drawn.append((rows, kw)) or
                        original(rows, path, **kw))
    metrics = evaluate(tiny_setup["converted"], "grounding", str(annotations), out,
                       frames_dir=str(tiny_setup["root"] / "frames"), batch_size=2, max_new_tokens=12,
                       num_timelines=2, progress=False, system_prompt=SYSTEM_PROMPT)
    predictions = _check_outputs(out, metrics, 3)
    assert metrics["num_missing_videos"] == 1
    assert [p["pred_relevant_windows"] for p in predictions if p["qid"] == 99] == [[]]
    [(rows, kwargs)] = drawn  # the first two queries, labelled with their text, marked, "2 of 3 shown"
    assert [row["label"] for row in rows] == [r["query"] for r in records[:2]]
    with open(os.path.join(out, "answers.jsonl")) as f:
        answers = {a["qid"]: a for a in map(json.loads, f)}
    assert [row["status"] for row in rows] == [None if answers[r["qid"]]["parsed"] else "unparsable"
                                               for r in records[:2]]
    assert answers[99]["error"] and kwargs["total"] == 3


def test_evaluate_action_segmentation_writes_frame_labels(tiny_setup):
    ground_truth = {}
    for vid, spec in tiny_setup["specs"].items():
        times = (np.arange(20) + 0.5) * spec.duration / 20
        labels = ["background"] * 20
        for e in spec.events:
            for i in np.flatnonzero((times >= e.start) & (times <= e.end)):
                labels[i] = e.kind.name.replace(" ", "_")
        ground_truth[vid] = labels
    annotations = tiny_setup["root"] / "segmentation.json"
    annotations.write_text(json.dumps(ground_truth))
    out = str(tiny_setup["root"] / "eval_segmentation")
    metrics = evaluate(tiny_setup["converted"], "action_segmentation", str(annotations), out,
                       video_dir=os.path.join(tiny_setup["raw"], "videos"), batch_size=2, max_new_tokens=12,
                       progress=False, system_prompt=SYSTEM_PROMPT)
    assert {"Acc", "Edit", "F1@10", "F1@25", "F1@50", "num_unparsable"} <= set(metrics)
    with open(os.path.join(out, "predictions.json")) as f:
        predictions = json.load(f)
    assert set(predictions) == set(ground_truth)
    assert all(len(predictions[vid]) == 20 for vid in ground_truth)
    assert os.path.exists(os.path.join(out, "timeline.png"))


# ------------------------------------------------------------------------------------ task pieces, no model
def test_grounding_annotations_in_three_formats(tmp_path):
    charades = tmp_path / "charades.txt"
    charades.write_text("AO8RW 0.0 6.9##a person is putting a book on a shelf.\nY6R7T 12.1 20.5##Person opens door\n")
    records = annotations.read_grounding(str(charades), {"AO8RW": 33.0}).records
    assert [r["relevant_windows"] for r in records] == [[[0.0, 6.9]], [[12.1, 20.5]]]
    assert records[0]["duration"] == 33.0 and records[1]["duration"] is None
    anet = tmp_path / "anet.json"
    anet.write_text(json.dumps({"v_x": {"duration": 50.0, "timestamps": [[1, 5], [6, 9]],
                                        "sentences": ["A man runs.", " He jumps."]}}))
    records = annotations.read_grounding(str(anet)).records
    assert [(r["query"], r["relevant_windows"]) for r in records] == [("A man runs.", [[1.0, 5.0]]),
                                                                      ("He jumps.", [[6.0, 9.0]])]
    bad = tmp_path / "bad.txt"
    bad.write_text("AO8RW 0.0##missing end\n")
    with pytest.raises(ValueError, match="bad.txt, line 1"):
        annotations.read_grounding(str(bad))
    assert tasks.grounding_question("A red circle appears.") == "Find the moment when a red circle appears."


def test_answers_become_submissions_and_misses_stay():
    records = [{"qid": 0, "vid": "v", "query": "q", "duration": 20.0, "relevant_windows": [[2.0, 8.0]]},
               {"qid": 1, "vid": "v", "query": "q", "duration": 20.0, "relevant_windows": [[10.0, 12.0]]}]
    task = tasks.grounding_task(records, "gt")
    good, parsed = task.to_prediction(task.queries[0], "It appears from 2.0s to 8.0s, then 9.0s to 30.0s.", 20.0)
    assert parsed and good["pred_relevant_windows"] == [[2.0, 8.0, 1.0], [9.0, 20.0, 0.99]]
    miss, parsed = task.to_prediction(task.queries[1], "I cannot tell.", 20.0)
    assert not parsed and miss["pred_relevant_windows"] == []
    metrics = task.score({0: good, 1: miss})
    assert metrics["R1@0.7"] == 50.0 and metrics["mIoU"] == 50.0

    saliency_records = [dict(records[0], relevant_clip_ids=[1, 2], saliency_scores=[[2, 3, 4], [1, 1, 1]])]
    highlights = tasks.highlights_task(saliency_records, "gt")
    prediction, _ = highlights.to_prediction(highlights.queries[0], "2.0s to 6.0s", 20.0)
    assert prediction["pred_saliency_scores"] == [0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert "HL-min-VeryGood-mAP" in highlights.score({0: prediction})

    dense = tasks.dense_captioning_task({"v": {"duration": 20.0, "timestamps": [[0, 5]], "sentences": ["a"]}}, "gt")
    events, parsed = dense.to_prediction(dense.queries[0], "0.0s to 5.0s: a red circle appears. 6.0s to 9.0s: it "
                                                           "fades.", 20.0)
    assert parsed and events == [{"sentence": "a red circle appears", "timestamp": [0.0, 5.0]},
                                 {"sentence": "it fades", "timestamp": [6.0, 9.0]}]


def test_events_map_to_nearest_class_and_background():
    classes = ["pour_milk", "crack_egg", "stir_dough"]
    assert tasks.nearest_class("someone cracks an egg", classes) == "crack_egg"
    labels = tasks.events_to_frame_labels([(0.0, 4.0, "pouring the milk"), (6.0, 8.0, "stir the dough")], 10, 10.0,
                                          classes)
    assert labels == ["pour_milk"] * 4 + ["background"] * 2 + ["stir_dough"] * 2 + ["background"] * 2


def test_sharded_params_give_the_same_answers(tiny_setup):
    from momentor_jax.inference import generate
    params, config, tokenizer = load.load_model(tiny_setup["workdir"])
    sharded = load.shard_params(params, config)
    assert len(jax.tree.leaves(sharded)[0].sharding.device_set) == jax.device_count()
    frames = np.random.default_rng(0).integers(0, 255, (2, config.num_frames, 32, 32, 3), dtype=np.uint8)
    questions = ["When does the red circle appear?", "What happens in the video?"]
    answers = [generate.Generator(p, config, tokenizer, SYSTEM_PROMPT, generate.SamplingConfig(max_new_tokens=8))
               .answer(questions, frames, [10.0, 12.0]) for p in (params, sharded)]
    assert [a.token_ids for a in answers[0]] == [a.token_ids for a in answers[1]]


def test_rendered_answer_reads_like_the_training_text(tiny_setup):
    """Training text with <TEMP-OUTPUT> placeholders, generated as temporal tokens, renders back with seconds."""
    from momentor_jax.data.tokenizer import MomentorTokenizer
    from momentor_jax.inference import generate
    tokenizer = MomentorTokenizer.load(str(tiny_setup["root"] / "data" / "tokenizer"))
    text = "It appears from <TEMP-OUTPUT> to <TEMP-OUTPUT>. Then <TEMP-OUTPUT> to <TEMP-OUTPUT>: a red circle."
    ids = tokenizer.encode(text, add_bos=False)
    slots = [i for i, t in enumerate(ids) if t == tokenizer.temp_output_id]
    times = np.zeros(len(ids) + 1)
    for slot, (k, p) in zip(slots, [(3, 0.2), (9, 0.6), (10, 0.65), (12, 0.8)]):
        ids[slot] = tokenizer.vocab_size + k
        times[slot] = p
    answer = generate.render_answer(ids + [tokenizer.eos_id], times, 20.0, tokenizer)
    assert answer.text == "It appears from 4.0s to 12.0s. Then 13.0s to 16.0s: a red circle."
    assert answer.windows == [(4.0, 12.0), (13.0, 16.0)]


# ------------------------------------------------------------------------------------ resume, batches, export
def _heldout(tiny_setup):
    return os.path.join(tiny_setup["raw"], "grounding_heldout.jsonl")


def _eval_kwargs(tiny_setup):
    return dict(frames_dir=str(tiny_setup["root"] / "frames"), batch_size=2, max_new_tokens=12, progress=False,
                system_prompt=SYSTEM_PROMPT)


def _read(path):
    with open(path) as f:
        return f.read()


def test_evaluate_interrupted_then_resumed_equals_uninterrupted(tiny_setup, monkeypatch):
    """Ctrl-C after the first batch keeps its answers; the rerun answers the rest in the same batches."""
    root, annotations_path = tiny_setup["root"], _heldout(tiny_setup)
    full = evaluate(tiny_setup["converted"], "grounding", annotations_path, str(root / "full"),
                    **_eval_kwargs(tiny_setup))
    answer_encoded = generate.Generator.answer_encoded
    calls = []

    def interrupted_on_the_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what SIGINT raises in the main thread
        return answer_encoded(self, *args, **kwargs)

    monkeypatch.setattr(generate.Generator, "answer_encoded", interrupted_on_the_second_batch)
    out = root / "resumed"
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny_setup["converted"], "grounding", annotations_path, str(out), **_eval_kwargs(tiny_setup))
    parts = sorted(os.listdir(out / "answers.parts"))
    assert parts == ["part-00000.jsonl", "run.json"] and not (out / "metrics.json").exists()
    assert len(_read(out / "answers.parts" / "part-00000.jsonl").splitlines()) == 2  # the first batch, kept
    monkeypatch.setattr(generate.Generator, "answer_encoded", answer_encoded)
    resumed = evaluate(tiny_setup["converted"], "grounding", annotations_path, str(out), **_eval_kwargs(tiny_setup))
    assert {k: v for k, v in resumed.items() if k != "predictions"} == \
        {k: v for k, v in full.items() if k != "predictions"}
    assert _read(out / "answers.jsonl") == _read(root / "full" / "answers.jsonl")
    assert _read(out / "predictions.jsonl") == _read(root / "full" / "predictions.jsonl")

    def refuse(path):
        raise AssertionError("a finished evaluation is re-scored without loading the model")
    monkeypatch.setattr(checkpoints, "load_params", refuse)
    assert evaluate(tiny_setup["converted"], "grounding", annotations_path, str(out),
                    **_eval_kwargs(tiny_setup)) == resumed
    with pytest.raises(ValueError, match="other settings"):
        evaluate(tiny_setup["converted"], "grounding", annotations_path, str(out),
                 **dict(_eval_kwargs(tiny_setup), max_new_tokens=11))


def test_bad_ground_truth_is_rejected_before_the_model_loads(tiny_setup, no_params, tmp_path):
    with open(_heldout(tiny_setup)) as f:
        records = [json.loads(line) for line in f]
    cases = {"dup.jsonl": [records[0], records[0]],
             "nan.jsonl": [dict(records[0], duration=float("nan"))],
             "long.jsonl": [dict(records[0], query=" ".join(["word"] * 2000))]}
    for name, bad in cases.items():
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in bad))
        with pytest.raises(annotations.AnnotationError, match=f"{name}, line"):
            evaluate(tiny_setup["converted"], "grounding", str(path), str(tmp_path / "out"),
                     **_eval_kwargs(tiny_setup))
        assert not (tmp_path / "out").exists()


def test_charades_ground_truth_scores_alike_in_evaluate_and_score(tiny_setup, tmp_path):
    from momentor_jax.score import score
    with open(_heldout(tiny_setup)) as f:
        records = [json.loads(line) for line in f]
    charades = tmp_path / "charades.txt"
    charades.write_text("".join(f"{r['vid']} {r['relevant_windows'][0][0]} {r['relevant_windows'][0][1]}##"
                                f"{r['query']}\n" for r in records))
    metrics = evaluate(tiny_setup["converted"], "grounding", str(charades), str(tmp_path / "out"),
                       **_eval_kwargs(tiny_setup))
    assert metrics["num_queries"] == len(records)
    scored = score("grounding", metrics["predictions"], [str(charades)])
    assert scored == {k: metrics[k] for k in ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")}


def test_video_source_finds_upper_case_extensions(tiny_setup, tmp_path):
    import shutil
    from momentor_jax.evaluate import MissingVideo, VideoSource
    vid = next(iter(tiny_setup["specs"]))
    shutil.copy(os.path.join(tiny_setup["raw"], "videos", f"{vid}.mp4"), tmp_path / "Clip.V1.MP4")
    source = VideoSource(tiny_setup["config"], video_dir=str(tmp_path))
    frames, duration = source.get("Clip.V1")
    assert frames.shape[0] == tiny_setup["config"].num_frames and duration > 0
    with pytest.raises(MissingVideo, match="no such video"):
        source.get("Clip")


def test_predict_and_evaluate_read_answers_alike(tiny_setup):
    """One parser: the windows of predict --json and evaluate's submission agree on a fixed set of answers."""
    from momentor_jax import predict
    from momentor_jax.data.tokenizer import MomentorTokenizer
    from test_evaluation_inputs import ANSWERS
    tokenizer = MomentorTokenizer.load(str(tiny_setup["root"] / "data" / "tokenizer"))
    task = tasks.grounding_task([{"qid": 0, "vid": "v", "query": "q", "duration": 20.0,
                                  "relevant_windows": [[2.0, 8.0]]}], "gt")
    temporal = [tokenizer.vocab_size + k for k in (3, 13, 1)]  # 26.0s 8.3s 7.2s at 0.65, 0.2075, 0.18 of 40 s
    rendered = [generate.render_answer(tokenizer.encode(text, add_bos=False) + [tokenizer.eos_id],
                                       np.zeros(256), 20.0, tokenizer) for text, _ in ANSWERS]
    rendered.append(generate.render_answer(temporal + [tokenizer.eos_id], [0.65, 0.2075, 0.18, 0.0], 40.0,
                                           tokenizer))
    assert rendered[-1].text == "26.0s 8.3s 7.2s"
    for answer, duration in zip(rendered, [20.0] * len(ANSWERS) + [40.0]):
        from_predict = predict.answer_json("v.mp4", duration, "q", answer)
        prediction, parsed = task.to_prediction(task.queries[0], answer.text, duration)
        assert [w[:2] for w in prediction["pred_relevant_windows"]] == from_predict["windows"], answer.text
        assert parsed == from_predict["parsed"] == bool(from_predict["windows"])
    assert not rendered[-1].windows and rendered[-1].times == [26.0, 8.3, 7.2]
    assert rendered[1].windows == [(2.0, 8.0), (9.0, 20.0)]


def test_batch_predict_equals_single_predicts(tiny_setup, tmp_path, monkeypatch):
    from momentor_jax import predict
    vids = list(tiny_setup["specs"])
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    questions = [{"video": os.path.join(tiny_setup["raw"], "videos", f"{vids[0]}.mp4"), "question": "When?",
                  "id": "a"},
                 {"video": os.path.join(tiny_setup["raw"], "videos", f"{vids[1]}.mp4"), "question": "When?"},
                 {"video": "broken.mp4", "question": "When?"},  # relative to the questions file
                 {"video": os.path.join(tiny_setup["raw"], "videos", f"{vids[0]}.mp4"),
                  "question": "Where is the red circle?", "id": {"n": 4}}]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    encode = generate.Generator.encode
    encoded = []
    monkeypatch.setattr(generate.Generator, "encode", lambda self, v: encoded.append(len(v)) or encode(self, v))
    out = str(tmp_path / "answers.jsonl")
    summary = predict.predict_batch(tiny_setup["converted"], str(path), out, max_new_tokens=12, batch_size=2,
                                    system_prompt=SYSTEM_PROMPT, progress=False)
    assert summary == {"answered": 3, "failed": 1, "out": out}
    assert encoded == [1, 1]  # each decodable video encoded once for all its questions
    with open(out) as f:
        lines = [json.loads(line) for line in f]
    assert [line.get("id") for line in lines] == ["a", None, None, {"n": 4}]
    assert "broken.mp4: " in lines[2]["error"]
    for question, line in zip(questions, lines):
        if "error" in line:
            continue
        single = predict.predict(tiny_setup["converted"], question["video"], question["question"],
                                 max_new_tokens=12, system_prompt=SYSTEM_PROMPT)
        assert {k: v for k, v in line.items() if k != "id"} == single


def test_export_hf_takes_every_checkpoint_layout(tiny_setup, tmp_path):
    from momentor_jax.convert.__main__ import main
    layouts = {"run": tiny_setup["workdir"], "step": os.path.join(tiny_setup["workdir"], "checkpoints", "3"),
               "converted": tiny_setup["converted"]}
    for name, checkpoint in layouts.items():
        assert main(["export_hf", "--checkpoint", checkpoint, "--out", str(tmp_path / name)]) == 0
    for name in layouts:
        for file in ("llm/model.safetensors", "llm/tokenizer.model", "vision/model.safetensors",
                     "momentor_extras.safetensors"):
            with open(tmp_path / name / file, "rb") as a, open(tmp_path / "converted" / file, "rb") as b:
                assert a.read() == b.read(), (name, file)
        assert (tmp_path / name / "llm" / "tokenizer_config.json").exists()
    assert main(["export_hf", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


# ------------------------------------------------------------------------------------ everything on gs://
def test_evaluate_and_predict_on_gcs_equal_the_local_run(tiny_setup, gcs_bucket, tmp_path):
    """Checkpoint, frame shards (extracted straight to gs:// by data/extract_frames.py), annotations, questions and
    outputs on a GCS server on loopback: the same metrics, predictions and answers as the local run."""
    import data_scripts
    from momentor_jax import fileio, predict
    from momentor_jax.data import frames as frames_lib
    config = tiny_setup["config"]
    remote_ckpt, remote_frames = f"{gcs_bucket}/converted", f"{gcs_bucket}/frames"
    fileio.put_tree(tiny_setup["converted"], remote_ckpt)
    assert data_scripts.load("extract_frames").main([
        "--video_dir", os.path.join(tiny_setup["raw"], "videos"), "--out_dir", remote_frames,
        "--num_frames", str(config.num_frames), "--size", str(config.vision.image_size)]) == 0
    local_shards = sorted((tiny_setup["root"] / "frames").glob(f"*{frames_lib.SHARD_SUFFIX}"))
    assert [os.path.basename(p) for p in fileio.glob(f"{remote_frames}/*{frames_lib.SHARD_SUFFIX}")] == [
        p.name for p in local_shards]
    for shard in local_shards:  # deterministic serialization: the same bytes wherever they are written
        assert fileio.read_bytes(f"{remote_frames}/{shard.name}") == shard.read_bytes()
        assert fileio.exists(f"{remote_frames}/{shard.name}.index")
    local_annotations = os.path.join(tiny_setup["raw"], "grounding_heldout.jsonl")
    remote_annotations = f"{gcs_bucket}/grounding_heldout.jsonl"
    fileio.copy(local_annotations, remote_annotations)

    kwargs = dict(batch_size=2, max_new_tokens=12, num_timelines=2, progress=False, system_prompt=SYSTEM_PROMPT)
    local_out, remote_out = str(tmp_path / "eval"), f"{gcs_bucket}/eval"
    local = evaluate(tiny_setup["converted"], "grounding", local_annotations, local_out,
                     frames_dir=str(tiny_setup["root"] / "frames"), **kwargs)
    remote = evaluate(remote_ckpt, "grounding", remote_annotations, remote_out, frames_dir=remote_frames, **kwargs)
    where = {"checkpoint": (remote_ckpt, tiny_setup["converted"]),
             "predictions": (f"{remote_out}/predictions.jsonl", os.path.join(local_out, "predictions.jsonl"))}
    assert {k: remote[k] for k in where} == {k: v[0] for k, v in where.items()}
    assert {**remote, **{k: v[1] for k, v in where.items()}} == local
    assert json.loads(fileio.read_text(f"{remote_out}/metrics.json")) == remote
    assert fileio.listdir(remote_out) == sorted(os.listdir(local_out))
    for name in ("predictions.jsonl", "answers.jsonl"):
        assert fileio.read_text(f"{remote_out}/{name}") == fileio.read_text(os.path.join(local_out, name)), name

    vid = next(iter(tiny_setup["specs"]))
    questions = "".join(json.dumps({"video": os.path.join(tiny_setup["raw"], "videos", f"{vid}.mp4"),
                                    "question": q}) + "\n" for q in ("When?", "Where is the red circle?"))
    (tmp_path / "questions.jsonl").write_text(questions)
    fileio.write_text(f"{gcs_bucket}/questions.jsonl", questions)
    local_answers, remote_answers = str(tmp_path / "answers.jsonl"), f"{gcs_bucket}/answers.jsonl"
    for ckpt, questions_path, out in ((tiny_setup["converted"], str(tmp_path / "questions.jsonl"), local_answers),
                                      (remote_ckpt, f"{gcs_bucket}/questions.jsonl", remote_answers)):
        summary = predict.predict_batch(ckpt, questions_path, out, max_new_tokens=12, batch_size=2,
                                        system_prompt=SYSTEM_PROMPT, progress=False)
        assert summary["answered"] == 2
    assert fileio.read_text(remote_answers) == fileio.read_text(local_answers)


def test_a_flipped_byte_in_a_gcs_shard_is_reported_like_a_local_one(tiny_setup, gcs_bucket, tmp_path):
    from momentor_jax import fileio
    from momentor_jax.data import frames as frames_lib
    from momentor_jax.data import tfrecord
    [shard] = sorted((tiny_setup["root"] / "frames").glob(f"*{frames_lib.SHARD_SUFFIX}"))
    data = bytearray(shard.read_bytes())
    index = tfrecord.load_index(str(shard))
    data[index.offsets[1] + 40] ^= 0xFF  # inside record 1's data
    local, remote = tmp_path / shard.name, f"{gcs_bucket}/frames/{shard.name}"
    local.write_bytes(bytes(data))
    fileio.write_bytes(remote, bytes(data))
    messages = []
    for path in (str(local), remote):
        with pytest.raises(tfrecord.TFRecordCorruptionError) as info:  # no index: the scan meets the bad record
            tfrecord.TFRecordDataSource([path]).read(0, 1)
        messages.append(str(info.value))
    assert messages[0] == f"{local}: record 1 at byte {index.offsets[1]}: data CRC mismatch"
    assert messages[1] == messages[0].replace(str(local), remote)


class _WindowsFromFrames(generate.Generator):
    """The tiny model's encoder, and answers that state a window read off the frame embeddings (from the frame of
    the first half that embeds strongest to the end), so that two paths agree on the windows only if they gave the
    model the same frames."""

    def answer_encoded(self, questions, video_embeds, durations, input_times=None, batch_size=None):
        answers = []
        for embeds, duration in zip(np.asarray(video_embeds), durations):
            first = int(np.argmax(embeds[:len(embeds) // 2].mean(axis=-1)))
            start, end = first * duration / (len(embeds) - 1), duration
            text = f"From {start:.1f}s to {end:.1f}s."
            answers.append(generate.Answer(text, [start, end], parsing.parse_windows(text, duration), []))
        return answers


def test_grounding_during_training_writes_what_evaluate_writes(tiny_setup, tmp_path, monkeypatch):
    """training/evals.GroundingEval on a checkpoint's parameters (as the trainer runs it) writes evaluate's files for
    that checkpoint: with the random model's own answers, and with answers whose windows come from the frames."""
    from configs import tiny as tiny_configs
    from momentor_jax.training import evals

    annotations = os.path.join(tiny_setup["raw"], "grounding_heldout.jsonl")
    config = tiny_configs.get_config()
    config.data.system_prompt = SYSTEM_PROMPT
    config.evals.update(grounding_every_steps=3, grounding_annotations=annotations, max_new_tokens=12, batch_size=2)
    model_config, converted, frames = tiny_setup["config"], tiny_setup["converted"], str(tiny_setup["root"] / "frames")
    grounding = evals.GroundingEval(config, frames, load.load_tokenizer(converted, model_config), model_config,
                                    workdir=str(tmp_path / "run"))
    params = load.shard_params(checkpoints.load_params(converted), model_config)
    for step, generator in ((3, generate.Generator), (6, _WindowsFromFrames)):
        monkeypatch.setattr(generate, "Generator", generator)
        during = grounding.evaluate(params, step)
        out = tmp_path / f"evaluate_{step}"
        metrics = evaluate(converted, "grounding", annotations, str(out), frames_dir=frames, batch_size=2,
                           max_new_tokens=12, num_timelines=0, progress=False, system_prompt=SYSTEM_PROMPT)
        written = tmp_path / "run" / "eval_grounding" / str(step)
        for name in ("answers.jsonl", "predictions.jsonl"):
            assert (written / name).read_text() == (out / name).read_text(), name
        with open(written / "metrics.json") as f:
            assert json.load(f) == during == {**metrics, "predictions": str(written / "predictions.jsonl"),
                                              "checkpoint": str(tmp_path / "run" / "checkpoints" / str(step))}
        assert metrics["num_queries"] == len(grounding.queries) > 1 and metrics["num_missing_videos"] == 0
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(p["pred_relevant_windows"] for p in predictions) and metrics["num_unparsable"] == 0
    assert 0 < metrics["mIoU"] < 100
