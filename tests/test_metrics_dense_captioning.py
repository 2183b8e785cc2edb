"""Dense captioning metrics equal densevid_eval (ranjaykrishna/densevid_eval @ 9d4045aced3d) and SODA_c equals
fujiso/SODA @ 9cb3e2c5a73c.

tests/fixtures/metrics/dense_captioning_expected.json holds what those evaluators printed for dense_pred.json against
dense_gt_1.json + dense_gt_2.json (see the README there). METEOR's Java start takes seconds, so one test
(`test_caption_metrics_and_soda_equal_references`) starts it once and checks every Java-backed number.
"""
import copy
import json
import os

import pytest

from momentor_jax import score
from momentor_jax.evaluation.metrics import CaptionScorers, evaluate_dense_captioning, soda_c
from momentor_jax.evaluation.metrics import dense_captioning
from momentor_jax.evaluation.metrics.caption_scorers import JAVA_SKIPPED_NOTE, ptb_tokenize
from momentor_jax.evaluation.metrics.soda import best_ordered_assignment

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "metrics")
PRED = os.path.join(FIXTURES, "dense_pred.json")
GTS = [os.path.join(FIXTURES, "dense_gt_1.json"), os.path.join(FIXTURES, "dense_gt_2.json")]
REL = 1e-9  # the reference's own runs differ by ~1e-16 (set order in its averages)


@pytest.fixture(scope="module")
def data():
    with open(os.path.join(FIXTURES, "dense_captioning_expected.json")) as f:
        expected = json.load(f)
    return score.load_json(PRED)["results"], [score.load_json(path) for path in GTS], expected


def _check_localisation(metrics, expected):
    reference = expected["densevid_eval"]
    for i, tiou in enumerate(expected["tious"]):
        for name in ("Precision", "Recall"):
            assert metrics[f"{name}@{tiou:g}"] == pytest.approx(100 * reference[name][i], rel=REL), (name, tiou)
        p, r = reference["Precision"][i], reference["Recall"][i]
        assert metrics[f"F1@{tiou:g}"] == pytest.approx(100 * 2 * p * r / (p + r), rel=REL)
    for name in ("Precision", "Recall"):
        assert metrics[name] == pytest.approx(100 * sum(reference[name]) / len(reference[name]), rel=REL)
    assert metrics["F1"] == pytest.approx(2 * metrics["Precision"] * metrics["Recall"]
                                          / (metrics["Precision"] + metrics["Recall"]), rel=REL)


def test_caption_metrics_and_soda_equal_references(data):
    predictions, ground_truths, expected = data
    reference = expected["densevid_eval"]
    with CaptionScorers() as scorers:
        metrics = evaluate_dense_captioning(predictions, ground_truths, scorers=scorers)
        _check_localisation(metrics, expected)
        for i, tiou in enumerate(expected["tious"]):
            for name in ("METEOR", "CIDEr"):
                assert metrics[f"{name}@{tiou:g}"] == pytest.approx(100 * reference[name][i], rel=REL), (name, tiou)
        for name in ("METEOR", "CIDEr"):
            assert metrics[name] == pytest.approx(100 * sum(reference[name]) / len(reference[name]), rel=REL)
        assert metrics["SODA_c"] == pytest.approx(100 * expected["soda_c_merged"][2], rel=REL)
        assert "note" not in metrics

        multi = soda_c(predictions, ground_truths, multi_reference=True, scorers=scorers)
        assert [multi["precision"], multi["recall"], multi["f1"]] == pytest.approx(
            [100 * v for v in expected["soda_c_multi_reference"]], rel=REL)
        assert multi["videos"] == 4  # v_d has no prediction: SODA leaves it out

        # An empty prediction list (the references fail on it): no pair anywhere, so densevid_eval's numbers are
        # those of a missing video; SODA now scores v_d with F1 0 over 5 videos instead of 4.
        with_empty = dict(predictions, v_d=[])
        again = evaluate_dense_captioning(with_empty, ground_truths, scorers=scorers)
        assert {k: v for k, v in again.items() if k != "SODA_c"} == pytest.approx(
            {k: v for k, v in metrics.items() if k != "SODA_c"}, rel=REL)
        assert again["SODA_c"] == pytest.approx(metrics["SODA_c"] * 4 / 5, rel=REL)

        # Tokens as pycocoevalcap's PTBTokenizer gives them (lower-cased, punctuation dropped, one per sentence).
        assert scorers.tokenize(["He said: \"It's the dog's ball!\"", "...", "Caf\u00e9 time"]) == [
            "he said it 's the dog 's ball", "", "caf time"]


def test_without_java_caption_metrics_are_null_with_a_note(data, monkeypatch, capsys):
    _, _, expected = data
    monkeypatch.setattr(dense_captioning, "java_available", lambda: False)
    assert score.main(["--task", "dense_captioning", "--predictions", PRED, "--ground_truth", *GTS]) == 0
    metrics = json.loads(capsys.readouterr().out)
    _check_localisation(metrics, expected)
    assert metrics["METEOR"] is None and metrics["CIDEr"] is None and metrics["SODA_c"] is None
    assert metrics["METEOR@0.5"] is None
    assert JAVA_SKIPPED_NOTE in metrics["note"]


def test_max_proposals_cuts_each_video(data, monkeypatch):
    """Hand-derived: v_a keeps only its first prediction ([0, 14], tIoU 0.93 with [0, 15]) at tIoU 0.9."""
    predictions, ground_truths, _ = data
    monkeypatch.setattr(dense_captioning, "java_available", lambda: False)
    metrics = evaluate_dense_captioning({"v_a": predictions["v_a"]}, ground_truths, tious=[0.9], max_proposals=1)
    # v_a: precision 1/1, recall 1/3 (file 1) vs 0/2 (file 2); the other four videos score 0.
    assert metrics["Precision@0.9"] == pytest.approx(100 * 1 / 5)
    assert metrics["Recall@0.9"] == pytest.approx(100 * (1 / 3) / 5)


def test_best_ordered_assignment_by_hand():
    import numpy as np

    # rows and columns must be matched in order: the crossing pair (0, 1) + (1, 0) is not allowed
    assert best_ordered_assignment(np.array([[0.1, 0.9], [0.8, 0.2]])) == pytest.approx(0.9)
    assert best_ordered_assignment(np.array([[0.5, 0.1], [0.1, 0.5]])) == pytest.approx(1.0)
    assert best_ordered_assignment(np.array([[0.3, 0.4, 0.2]])) == pytest.approx(0.4)


@pytest.mark.parametrize("mutate, message", [
    (lambda p, g: p.update(v_z=[]), "predictions, video 'v_z': unknown video"),
    (lambda p, g: p["v_a"][1].update(timestamp=[9, 3]), "video 'v_a', event 1: malformed timestamp"),
    (lambda p, g: p["v_b"][0].pop("sentence"), "video 'v_b', event 0: expected"),
    (lambda p, g: g[1]["v_c"]["sentences"].pop(), "ground truth #2, video 'v_c': 'timestamps' and 'sentences'"),
])
def test_bad_input_names_the_record(data, mutate, message, monkeypatch):
    monkeypatch.setattr(dense_captioning, "java_available", lambda: False)
    predictions, ground_truths, _ = copy.deepcopy(data)
    mutate(predictions, ground_truths)
    with pytest.raises(ValueError) as error:
        evaluate_dense_captioning(predictions, ground_truths)
    assert message in str(error.value)


def test_cli_rejects_a_submission_without_results(tmp_path, capsys):
    bad = tmp_path / "submission.json"
    bad.write_text(json.dumps({"v_a": []}))
    assert score.main(["--task", "dense_captioning", "--predictions", str(bad), "--ground_truth", *GTS]) == 2
    assert f"{bad}: expected a JSON object with 'results'" in capsys.readouterr().err


def test_ptb_tokenize_of_nothing_starts_no_java():
    assert ptb_tokenize([]) == []


def test_ptb_tokenize_equals_pycocoevalcap_and_ignores_neighbours():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    sentences = ["The U.S. army -- (left) said: \"no\"; ok?!", "Mr. Smith's dog'll run...", "$5.00 & 10% off", "x"]
    reference = PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(sentences)})
    assert ptb_tokenize(sentences) == [reference[i][0] for i in range(len(sentences))]
    # The Java tokenizer's abbreviation rule looks across lines ("B." before "The" loses its period in one batch);
    # here every sentence comes out as if tokenized alone.
    together = ptb_tokenize(["a B.", "The cat"])
    assert together == ptb_tokenize(["a B."]) + ptb_tokenize(["The cat"]) == ["a b.", "the cat"]
