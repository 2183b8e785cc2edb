"""Score a predictions file against ground truth with the field's reference metrics and print one JSON object.

  python -m momentor_jax.score --task grounding --predictions preds.jsonl --ground_truth gt.jsonl [--out m.json]

Tasks and formats (ground truth read and checked as `evaluate` reads it, evaluation/annotations.py):
  grounding            R1@0.3/0.5/0.7 and mIoU of the top-1 window. Predictions JSONL {qid, pred_relevant_windows};
                       ground truth QVHighlights .jsonl, Charades-STA .txt (qid = line index among non-blank lines;
                       --durations JSON {vid: seconds} to check windows against the videos) or ActivityNet Captions
                       .json (qid = sentence index over the file).
  highlights           moment_detr's standalone_eval "brief" block; QVHighlights JSONL in and out.
  action_segmentation  JSON {video_id: [frame labels]}: Acc, Edit, F1@10/25/50 (--background LABEL, repeatable).
  dense_captioning     predictions {"results": {vid: [{sentence, timestamp}]}}, one or more ground-truth files
                       {vid: {duration, timestamps, sentences}}: P/R/F1, METEOR, CIDEr, SODA_c.
Bad input exits with status 2 and a message naming the file and the record (every bad ground-truth record at once).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, List, Optional, Sequence

from momentor_jax import fileio
from momentor_jax.evaluation import annotations, metrics

TASKS = ("grounding", "highlights", "action_segmentation", "dense_captioning")


def load_json(path: str) -> Any:
    return annotations.read_json(path)


def load_jsonl(path: str) -> List[Any]:
    """One JSON value per non-blank line."""
    return [value for _, value in annotations.read_jsonl(path)]


def score(task: str, predictions: str, ground_truth: Sequence[str], background: Optional[Sequence[str]] = None,
          tious: Sequence[float] = metrics.dense_captioning.DEFAULT_TIOUS,
          max_proposals: int = metrics.dense_captioning.MAX_PROPOSALS, soda_multi_reference: bool = False,
          durations: Optional[str] = None) -> dict:
    """The metrics of one task for files on disk (local or gs://); ValueError names the file and record of bad
    input. `durations`: a JSON {vid: seconds} file for Charades-STA ground truth."""
    if task != "dense_captioning" and len(ground_truth) != 1:
        raise ValueError(f"--task {task} takes exactly one --ground_truth file, got {len(ground_truth)}")
    if task in ("grounding", "highlights"):
        gt = annotations.read_grounding(ground_truth[0], annotations.read_durations(durations) if durations else None,
                                        require_query=False)
        evaluate = metrics.evaluate_grounding if task == "grounding" else metrics.evaluate_highlights
        return evaluate(load_jsonl(predictions), gt.records, pred_source=predictions, gt_source=ground_truth[0])
    if task == "action_segmentation":
        background = background or metrics.segmentation.DEFAULT_BACKGROUND
        gt = annotations.read_segmentation(ground_truth[0])
        return metrics.evaluate_segmentation(load_json(predictions), gt.records, background=background,
                                             pred_source=predictions, gt_source=ground_truth[0])
    if task == "dense_captioning":
        submission = load_json(predictions)
        if not isinstance(submission, dict) or "results" not in submission:
            raise ValueError(f"{predictions}: expected a JSON object with 'results' (ActivityNet Captions submission)")
        gts = [annotations.read_dense_captioning(path).records for path in ground_truth]
        return metrics.evaluate_dense_captioning(submission["results"], gts,
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
    parser.add_argument("--durations", help="grounding with Charades-STA .txt ground truth: JSON {vid: seconds}")
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
                       max_proposals=args.max_proposals_per_video, soda_multi_reference=args.soda_multi_reference,
                       durations=args.durations)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        fileio.write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
