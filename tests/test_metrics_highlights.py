"""QVHighlights MR/HL metrics equal moment_detr's standalone_eval (jayleicn/moment_detr @ b7e553ac3b0c).

tests/fixtures/metrics/highlights_expected.json is the "brief" block that the reference eval.py printed for
highlights_pred.jsonl / highlights_gt.jsonl (see the README there). Cases where the reference fails are hand-derived.
"""
import copy
import json
import os

import numpy as np
import pytest

from momentor_jax import score
from momentor_jax.evaluation.metrics import evaluate_highlights
from momentor_jax.evaluation.metrics.highlights import ranking_ap

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "metrics")


def _jsonl(name):
    return score.load_jsonl(os.path.join(FIXTURES, name))


@pytest.fixture(scope="module")
def data():
    with open(os.path.join(FIXTURES, "highlights_expected.json")) as f:
        expected = json.load(f)["brief"]
    return _jsonl("highlights_pred.jsonl"), _jsonl("highlights_gt.jsonl"), expected


def test_brief_block_equals_reference(data):
    predictions, ground_truth, expected = data
    assert evaluate_highlights(predictions, ground_truth) == expected
    assert list(evaluate_highlights(predictions, ground_truth)) == list(expected)  # same keys, same order


def test_cli_equals_reference(data, capsys):
    _, _, expected = data
    assert score.main(["--task", "highlights", "--predictions", os.path.join(FIXTURES, "highlights_pred.jsonl"),
                       "--ground_truth", os.path.join(FIXTURES, "highlights_gt.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out) == expected


def test_order_of_submission_does_not_matter(data):
    predictions, ground_truth, expected = data
    assert evaluate_highlights(predictions[::-1], ground_truth[::-1]) == expected


def test_empty_windows_score_like_a_miss(data):
    """The reference fails on an empty window list; here it counts as AP 0 and an R1 miss, like qid 108's
    predictions (far from its true window) already do, so the brief block is unchanged."""
    predictions, ground_truth, expected = data
    changed = copy.deepcopy(predictions)
    (query,) = [p for p in changed if p["qid"] == 108]
    query["pred_relevant_windows"] = []
    assert evaluate_highlights(changed, ground_truth) == expected


def test_moment_retrieval_only_and_empty_length_ranges():
    """Hand-derived: one long query predicted exactly; short and middle hold no query, so they are null."""
    gt = [{"qid": 1, "relevant_windows": [[0, 40]]}]
    pred = [{"qid": 1, "pred_relevant_windows": [[0, 40, 0.9], [50, 60, 0.1]]}]
    metrics = evaluate_highlights(pred, gt)
    assert not any(key.startswith("HL") for key in metrics)
    assert metrics["MR-short-mAP"] is None and metrics["MR-middle-mAP"] is None
    assert metrics["MR-long-mAP"] == metrics["MR-full-mAP"] == 100.0
    assert metrics["MR-full-R1@0.7"] == 100.0


def test_ranking_ap_by_hand():
    # ranked labels 1, 0, 1, 0: precision 1 at recall 0.5 and 2/3 at recall 1
    assert ranking_ap(np.array([1, 0, 1, 0.]), np.array([0.9, 0.8, 0.7, 0.1])) == pytest.approx((1 + 2 / 3) / 2)
    # ties form one threshold: {1, 0} at 0.5 then {0, 1} at 0.1, precision 0.5 at both recall steps
    assert ranking_ap(np.array([1, 0, 0, 1.]), np.array([0.5, 0.5, 0.1, 0.1])) == pytest.approx(0.5)
    assert ranking_ap(np.zeros(4), np.arange(4.)) == 0.0
    assert ranking_ap(np.ones(4), np.arange(4.)) == 1.0


@pytest.mark.parametrize("mutate, message", [
    (lambda p, g: p.pop(), "no prediction for 1 qid"),
    (lambda p, g: p.append(dict(p[0], qid=999)), "qid 999): unknown qid"),
    (lambda p, g: p[1].update(pred_relevant_windows=[[0, 2]]), "malformed window"),
    (lambda p, g: p[2].pop("pred_saliency_scores"), "missing 'pred_saliency_scores'"),
    (lambda p, g: g[3].update(relevant_clip_ids=[0, 1]), "'relevant_clip_ids' must be clip indices"),
    (lambda p, g: g[0].update(saliency_scores=[[1, 2]] * len(g[0]["saliency_scores"])), "one score per worker"),
])
def test_bad_input_names_the_record(data, mutate, message):
    predictions, ground_truth, _ = data
    predictions, ground_truth = copy.deepcopy(predictions), copy.deepcopy(ground_truth)
    mutate(predictions, ground_truth)
    with pytest.raises(ValueError) as error:
        evaluate_highlights(predictions, ground_truth)
    assert message in str(error.value)
