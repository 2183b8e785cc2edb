r"""Videos -> sharded TFRecords of JPEG frames, one tf.train.Example per video (see momentor_jax/data/extract.py).

    python data/extract_frames.py --video_dir DIR --out_dir OUT [--num_frames 300] [--size 224]
        [--num_shards S] [--workers K] [--jpeg_quality Q]

Frames are sampled at t_i = i * duration / (M - 1) and put in CLIP geometry (shorter side resized to --size,
center crop). Re-running resumes: videos already in OUT are skipped. Unreadable videos are skipped and listed in
OUT/extract_failures.jsonl. OUT may be gs://bucket/prefix. A damaged shard is repaired on a re-run: intact records
kept, the damaged ones redone from the videos, each printed ("repaired ..."). A video's id is its file name without
the video extension (`clip.v1.mp4` -> `clip.v1`); two files with one id stop the run (status 2). Exit status: 0; 1
when some video failed; 2 on bad arguments or an unusable OUT; 4 when Cloud Storage fails (missing bucket,
credentials, unreachable after retries).

Apache Beam mode (momentor_jax/data/beam_pipelines.py): give a runner, and any other Beam pipeline option after it,

    python data/extract_frames.py --video_dir DIR --out_dir OUT --num_shards 1024 --runner=DirectRunner \
        [--direct_num_workers=4 --direct_running_mode=multi_processing]
    python data/extract_frames.py --video_dir gs://B/videos --out_dir gs://B/frames --num_shards 1024 \
        --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py

It writes the same shards (records sorted by video id in each) plus OUT/frames_failures.jsonl (video_id, stage,
reason, detail) and OUT/frames_summary.json; --workers is then the runner's business.
"""
import argparse
import logging
import os
import sys


from momentor_jax import cli, fileio
from momentor_jax.data import extract


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video_dir", required=True, help="directory of <video_id>.mp4 (or .mkv, .webm, ...) files")
    parser.add_argument("--out_dir", required=True, help="where frames-XXXXX-of-YYYYY.tfrecord shards go "
                        "(a directory or gs://bucket/prefix)")
    parser.add_argument("--num_frames", type=int, default=300, help="frames per video, both ends included")
    parser.add_argument("--size", type=int, default=224, help="square frame side after resize + center crop")
    parser.add_argument("--num_shards", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="decoding processes")
    parser.add_argument("--jpeg_quality", type=int, default=90)
    parser.add_argument("--runner", default=None, help="run as an Apache Beam pipeline on this runner "
                        "(DirectRunner, DataflowRunner, FlinkRunner, ...); other Beam options follow it")
    args, beam_args = parser.parse_known_args(argv)
    if beam_args and not args.runner:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)} (Beam options need --runner)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.runner:
        return _run_beam(args, beam_args)
    if not os.path.isdir(args.video_dir):
        print(f"error: --video_dir {args.video_dir} is not a directory", file=sys.stderr)
        return 2
    if fileio.isfile(args.out_dir):
        print(f"error: --out_dir {args.out_dir} exists and is not a directory", file=sys.stderr)
        return 2
    try:
        summary = extract.extract_frames(args.video_dir, args.out_dir, num_frames=args.num_frames, size=args.size,
                                         num_shards=args.num_shards, workers=args.workers,
                                         jpeg_quality=args.jpeg_quality)
    except (ValueError, OSError) as e:  # bad arguments, or an OUT that cannot be written
        cli.fail_storage(e)  # a Cloud Storage failure: its one line, exit 4
        print(f"error: {e}", file=sys.stderr)
        return 2
    for repair in summary.repaired:
        print("\n".join(repair.lines()))
    for video_id, reason in summary.failed:
        print(f"failed: {video_id}: {reason}")
    print(summary.line())
    return 1 if summary.failed else 0


def _run_beam(args, beam_args) -> int:
    from momentor_jax import fileio  # noqa: PLC0415
    from momentor_jax.data import beam_pipelines  # noqa: PLC0415 (apache_beam only in Beam mode)

    if not fileio.isdir(args.video_dir):
        print(f"error: --video_dir {args.video_dir} is not a directory", file=sys.stderr)
        return 2
    logging.getLogger("momentor_jax.data.beam_pipelines").setLevel(logging.INFO)  # the launcher's plan
    try:
        run = beam_pipelines.extract_frames(args.video_dir, args.out_dir, [f"--runner={args.runner}", *beam_args],
                                            num_frames=args.num_frames, size=args.size, num_shards=args.num_shards,
                                            jpeg_quality=args.jpeg_quality)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(run.line())
    return 1 if run.summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
