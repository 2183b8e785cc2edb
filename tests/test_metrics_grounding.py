"""Temporal grounding R1@{0.3,0.5,0.7} and mIoU against values computed by hand, and the score CLI around it."""
import json
import os
import subprocess
import sys

import pytest

from momentor_jax import score
from momentor_jax.evaluation.metrics import evaluate_grounding, top1_ious, window_iou

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GROUND_TRUTH = [
    {"qid": 1, "relevant_windows": [[10, 20]]},
    {"qid": 2, "relevant_windows": [[0, 10]]},
    {"qid": 3, "relevant_windows": [[0, 10], [20, 30]]},
    {"qid": 4, "relevant_windows": [[0, 4]]},
    {"qid": 5, "relevant_windows": [[30, 40]]},
    {"qid": 6, "relevant_windows": [[5, 6]]},
    {"qid": 7, "relevant_windows": [[0, 10]]},
    {"qid": 8, "relevant_windows": [[0, 10]]},
]
PREDICTIONS = [
    {"qid": 2, "pred_relevant_windows": [[5, 15, 0.5]]},                # 5 / 15
    {"qid": 1, "pred_relevant_windows": [[12, 20, 0.2], [10, 20, 0.9]]},  # first window counts: 8 / 10
    {"qid": "3", "pred_relevant_windows": [[20, 25]]},                   # best of two GT windows: 5 / 10, no score
    {"qid": 4, "pred_relevant_windows": [[0, 10, 0.9]]},                 # 4 / 10
    {"qid": 5, "pred_relevant_windows": []},                             # no window: 0
    # qid 6 has no prediction: 0
    {"qid": 7, "pred_relevant_windows": [[0, 7, 0.3]]},                  # exactly 0.7
    {"qid": 8, "pred_relevant_windows": [[50, 60, 1.0]]},                # disjoint: 0
]
HAND_IOUS = {"1": 0.8, "2": 1 / 3, "3": 0.5, "4": 0.4, "5": 0.0, "6": 0.0, "7": 0.7, "8": 0.0}


def test_window_iou():
    assert window_iou((0, 10), (5, 15)) == pytest.approx(1 / 3)
    assert window_iou((0, 10), (10, 20)) == 0.0
    assert window_iou((3, 3), (3, 3)) == 0.0
    assert window_iou((2, 4), (0, 10)) == pytest.approx(0.2)


def test_top1_ious_match_hand_values_and_keep_every_query():
    ious = top1_ious(PREDICTIONS, GROUND_TRUTH)
    assert set(ious) == set(HAND_IOUS)
    for qid, iou in HAND_IOUS.items():
        assert ious[qid] == pytest.approx(iou, abs=1e-12), qid


def test_recall_and_miou_match_hand_values():
    metrics = evaluate_grounding(PREDICTIONS, GROUND_TRUTH)
    assert list(metrics) == ["R1@0.3", "R1@0.5", "R1@0.7", "mIoU"]
    assert metrics["R1@0.3"] == pytest.approx(100 * 5 / 8)   # 0.8, 1/3, 0.5, 0.4, 0.7
    assert metrics["R1@0.5"] == pytest.approx(100 * 3 / 8)   # 0.8, 0.5, 0.7 (IoU >= t)
    assert metrics["R1@0.7"] == pytest.approx(100 * 2 / 8)   # 0.8, 0.7
    assert metrics["mIoU"] == pytest.approx(100 * (0.8 + 1 / 3 + 0.5 + 0.4 + 0.7) / 8)


@pytest.mark.parametrize("predictions, message", [
    ([{"pred_relevant_windows": [[0, 1]]}], "record #1: missing 'qid'"),
    ([{"qid": 99, "pred_relevant_windows": [[0, 1]]}], "qid 99): unknown qid"),
    ([{"qid": 1, "pred_relevant_windows": [[0, "x"]]}], "malformed window"),
    ([{"qid": 1, "pred_relevant_windows": [[5, 1, 0.3]]}], "end is before start"),
    ([{"qid": 1, "pred_relevant_windows": [[1, 2, 3, 4]]}], "malformed window"),
    ([{"qid": 1}], "missing 'pred_relevant_windows'"),
    ([{"qid": 1, "pred_relevant_windows": []}, {"qid": 1, "pred_relevant_windows": []}], "duplicate qid"),
])
def test_bad_predictions_name_the_record(predictions, message):
    with pytest.raises(ValueError, match="predictions, record #") as error:
        evaluate_grounding(predictions, GROUND_TRUTH)
    assert message in str(error.value)


def test_bad_ground_truth_names_the_record():
    with pytest.raises(ValueError, match=r"ground truth, record #2 \(qid 9\): 'relevant_windows' is empty"):
        evaluate_grounding([], [{"qid": 8, "relevant_windows": [[0, 1]]}, {"qid": 9, "relevant_windows": []}])


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_cli_prints_and_writes_json(tmp_path):
    """The real entry point, `python -m momentor_jax.score`, in a subprocess."""
    pred = _write_jsonl(tmp_path / "pred.jsonl", PREDICTIONS)
    gt = _write_jsonl(tmp_path / "gt.jsonl", GROUND_TRUTH)
    out = tmp_path / "metrics.json"
    completed = subprocess.run([sys.executable, "-m", "momentor_jax.score", "--task", "grounding", "--predictions",
                                pred, "--ground_truth", gt, "--out", str(out)], cwd=REPO, capture_output=True,
                               text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), check=False)
    assert completed.returncode == 0, completed.stderr
    printed = json.loads(completed.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["R1@0.5"] == pytest.approx(37.5)


def test_cli_error_names_the_file(tmp_path, capsys):
    pred = _write_jsonl(tmp_path / "pred.jsonl", [{"qid": 1, "pred_relevant_windows": [[0, 1]]}, {"query": "x"}])
    gt = _write_jsonl(tmp_path / "gt.jsonl", GROUND_TRUTH)
    assert score.main(["--task", "grounding", "--predictions", pred, "--ground_truth", gt]) == 2
    assert f"{pred}, record #2: missing 'qid'" in capsys.readouterr().err

    (tmp_path / "broken.jsonl").write_text('{"qid": 1}\n{not json\n')
    assert score.main(["--task", "grounding", "--predictions", str(tmp_path / "broken.jsonl"),
                       "--ground_truth", gt]) == 2
    assert "broken.jsonl, line 2: invalid JSON" in capsys.readouterr().err
