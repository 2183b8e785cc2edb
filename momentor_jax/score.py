"""Score a predictions file against ground truth with the field's reference metrics and print one JSON object.

  python -m momentor_jax.score --task grounding --predictions preds.jsonl --ground_truth gt.jsonl [--out m.json]

Tasks and formats:
  grounding            JSONL, QVHighlights style: R1@0.3/0.5/0.7 and mIoU of the top-1 window.
  highlights           JSONL as moment_detr's standalone_eval reads it: its "brief" block.
  action_segmentation  JSON {video_id: [frame labels]}: Acc, Edit, F1@10/25/50 (--background LABEL, repeatable).
  dense_captioning     predictions {"results": {vid: [{sentence, timestamp}]}}, one or more ground-truth files
                       {vid: {duration, timestamps, sentences}}: P/R/F1, METEOR, CIDEr, SODA_c.
Bad input exits with status 2 and a message naming the file and the record.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, List, Optional, Sequence

from momentor_jax.evaluation import metrics

TASKS = ("grounding", "highlights", "action_segmentation", "dense_captioning")


def load_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def load_jsonl(path: str) -> List[Any]:
    """One JSON value per non-blank line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {number}: invalid JSON: {e.msg}") from None
    return records


def score(task: str, predictions: str, ground_truth: Sequence[str], background: Optional[Sequence[str]] = None,
          tious: Sequence[float] = metrics.dense_captioning.DEFAULT_TIOUS,
          max_proposals: int = metrics.dense_captioning.MAX_PROPOSALS, soda_multi_reference: bool = False) -> dict:
    """The metrics of one task for files on disk; ValueError names the file and record of bad input."""
    if task != "dense_captioning" and len(ground_truth) != 1:
        raise ValueError(f"--task {task} takes exactly one --ground_truth file, got {len(ground_truth)}")
    if task == "grounding":
        return metrics.evaluate_grounding(load_jsonl(predictions), load_jsonl(ground_truth[0]),
                                          pred_source=predictions, gt_source=ground_truth[0])
    if task == "highlights":
        return metrics.evaluate_highlights(load_jsonl(predictions), load_jsonl(ground_truth[0]),
                                           pred_source=predictions, gt_source=ground_truth[0])
    if task == "action_segmentation":
        background = background or metrics.segmentation.DEFAULT_BACKGROUND
        return metrics.evaluate_segmentation(load_json(predictions), load_json(ground_truth[0]), background=background,
                                             pred_source=predictions, gt_source=ground_truth[0])
    if task == "dense_captioning":
        submission = load_json(predictions)
        if not isinstance(submission, dict) or "results" not in submission:
            raise ValueError(f"{predictions}: expected a JSON object with 'results' (ActivityNet Captions submission)")
        return metrics.evaluate_dense_captioning(submission["results"], [load_json(path) for path in ground_truth],
                                                 tious=tious, max_proposals=max_proposals,
                                                 soda_multi_reference=soda_multi_reference, pred_source=predictions,
                                                 gt_sources=ground_truth)
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m momentor_jax.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--predictions", required=True, help="predictions file")
    parser.add_argument("--ground_truth", required=True, nargs="+", action="extend",
                        help="ground-truth file(s); several only for dense_captioning (e.g. val_1.json val_2.json)")
    parser.add_argument("--out", help="also write the JSON object to this file")
    parser.add_argument("--background", action="append",
                        help="action_segmentation: a background label (repeatable; default: background)")
    parser.add_argument("--tious", type=float, nargs="+", default=list(metrics.dense_captioning.DEFAULT_TIOUS),
                        help="dense_captioning: tIoU thresholds to average over")
    parser.add_argument("--max_proposals_per_video", type=int, default=metrics.dense_captioning.MAX_PROPOSALS,
                        help="dense_captioning: predictions kept per video for P/R, METEOR and CIDEr")
    parser.add_argument("--soda_multi_reference", action="store_true",
                        help="dense_captioning: SODA_c keeps each ground-truth file as a reference and takes the best "
                             "per video (default: the files' events are merged, as soda.py's default)")
    args = parser.parse_args(argv)
    try:
        result = score(args.task, args.predictions, args.ground_truth, background=args.background, tious=args.tious,
                       max_proposals=args.max_proposals_per_video, soda_multi_reference=args.soda_multi_reference)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
