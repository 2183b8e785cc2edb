r"""How much of a converted examples file survives preprocessing, and why videos dropped out
(momentor_jax/data/attrition.py).

    python data/report_attrition.py --examples train.jsonl --frames "FRAMES/frames-*.tfrecord" \
        [--failures VIDEOS/download_failures.jsonl --failures FRAMES/frames_failures.jsonl] [--failures_out ALL.jsonl]

Prints the examples per data type with and without frames (most lost first), the stage summaries that sit next to
the given failure logs (<stage>_summary.json: requested, done, failed by reason) and the failed videos by stage and
reason. --failures takes the Beam pipelines' logs and the single-machine ones (their reasons are classified from
the message); --failures_out writes them all as one JSONL {video_id, stage, reason, detail}, sorted by stage and id.
--frames may be feature shards too. Exit status: 0; 2 when an input cannot be read.
"""
import argparse
import collections
import json
import os
import sys

from momentor_jax import fileio
from momentor_jax.data import attrition
from momentor_jax.data import frames as frames_lib
from momentor_jax.data import tfrecord


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", required=True, help="converted examples JSONL (data/convert_data.py output)")
    parser.add_argument("--frames", required=True, help="frame (or feature) shards: glob, directory or comma list")
    parser.add_argument("--failures", action="append", default=[], help="a failure log; repeat for each stage")
    parser.add_argument("--failures_out", default=None, help="write every failure row here as one JSONL")
    args = parser.parse_args(argv)
    try:
        index = frames_lib.FrameRecordIndex(args.frames)
        coverage = attrition.example_coverage(args.examples, set(index.video_ids()))
        rows, summaries = [], []
        for path in args.failures:
            found = attrition.read_failures(path)
            rows.extend(found)
            for stage in sorted({row["stage"] for row in found} | {attrition.stage_of_file(path)}):
                summary_path = fileio.join(os.path.dirname(path) or ".", attrition.SUMMARY_FILE.format(stage=stage))
                if fileio.exists(summary_path):
                    summaries.append(attrition.read_summary(os.path.dirname(path) or ".", stage))
    except (OSError, ValueError, tfrecord.TFRecordCorruptionError, frames_lib.RecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(coverage.table(collections.Counter((row["stage"], row["reason"]) for row in rows)))
    for summary in summaries:
        print(summary.line())
    if args.failures_out:
        rows.sort(key=lambda row: (list(attrition.REASONS).index(row["stage"]), row["video_id"]))
        fileio.write_text(args.failures_out, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
        print(f"wrote {len(rows)} failure rows to {args.failures_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
