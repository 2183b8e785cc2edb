"""Action segmentation Acc / Edit / F1@k equal ms-tcn's eval.py (yabufarha/ms-tcn @ 33ed91c0c757).

tests/fixtures/metrics/segmentation_expected.json holds the unrounded values its eval.py printed for
segmentation_pred.json / segmentation_gt.json with bg_class ["background"] and ["SIL", "background"] (see the
README there). Cases where the reference fails are hand-derived.
"""
import json
import os

import pytest

from momentor_jax import score
from momentor_jax.evaluation.metrics import evaluate_segmentation
from momentor_jax.evaluation.metrics.segmentation import edit_score, segment_counts, segments

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "metrics")
PRED, GT = os.path.join(FIXTURES, "segmentation_pred.json"), os.path.join(FIXTURES, "segmentation_gt.json")


@pytest.fixture(scope="module")
def expected():
    with open(os.path.join(FIXTURES, "segmentation_expected.json")) as f:
        return json.load(f)


def _assert_close(actual, wanted):
    assert list(actual) == list(wanted)
    for key in wanted:
        assert actual[key] == pytest.approx(wanted[key], rel=1e-12, abs=1e-12), key


def test_default_background_equals_reference(expected):
    _assert_close(evaluate_segmentation(score.load_json(PRED), score.load_json(GT)), expected["background"])


def test_repeatable_background_flag_equals_reference(expected, capsys):
    assert score.main(["--task", "action_segmentation", "--predictions", PRED, "--ground_truth", GT,
                       "--background", "SIL", "--background", "background"]) == 0
    _assert_close(json.loads(capsys.readouterr().out), expected["SIL+background"])


def test_segments_skip_background_runs():
    labels = ["bg", "a", "a", "bg", "b", "a", "a"]
    assert segments(labels, ["bg"]) == (["a", "b", "a"], [1, 4, 5], [3, 5, 7])
    assert segments(labels, []) == (["bg", "a", "bg", "b", "a"], [0, 1, 3, 4, 5], [1, 3, 4, 5, 7])


def test_cases_the_reference_cannot_score():
    """ms-tcn divides 0 by 0 (Edit) or takes argmax of nothing (F1) here; hand-derived values instead."""
    all_bg = ["background"] * 5
    assert edit_score(all_bg, all_bg) == 100.0  # no segment on either side: identical
    assert segment_counts(["a", "a", "background", "b", "b"], all_bg, 0.5) == (0.0, 2.0, 0.0)
    metrics = evaluate_segmentation({"v": ["a", "a", "background", "b", "b"]}, {"v": all_bg})
    assert metrics["Acc"] == pytest.approx(20.0) and metrics["Edit"] == 0.0
    assert metrics["F1@10"] == metrics["F1@50"] == 0.0  # no true positive anywhere


def test_numbers_and_strings_are_one_label():
    metrics = evaluate_segmentation({"v": [1, 1, 2, 2]}, {"v": ["1", "1", "2", "2"]})
    assert metrics == {"Acc": 100.0, "Edit": 100.0, "F1@10": 100.0, "F1@25": 100.0, "F1@50": 100.0}


@pytest.mark.parametrize("predictions, message", [
    ({"v": ["a", "a"]}, "predictions, video 'v': 2 frame labels, ground truth has 3"),
    ({"v": ["a"] * 3, "w": ["a"]}, "predictions, video 'w': unknown video"),
    ({}, "no prediction for video 'v'"),
    ({"v": []}, "predictions, video 'v': expected a non-empty list"),
])
def test_bad_input_names_the_video(predictions, message):
    with pytest.raises(ValueError) as error:
        evaluate_segmentation(predictions, {"v": ["a", "b", "b"]})
    assert message in str(error.value)
