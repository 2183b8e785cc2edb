"""Videos -> sharded TFRecords of JPEG frames, one tf.train.Example per video (see momentor_jax/data/extract.py).

    python data/extract_frames.py --video_dir DIR --out_dir OUT [--num_frames 300] [--size 224]
        [--num_shards S] [--workers K] [--jpeg_quality Q]

Frames are sampled at t_i = i * duration / (M - 1) and put in CLIP geometry (shorter side resized to --size,
center crop). Re-running resumes: videos already in OUT are skipped. Unreadable videos are skipped and listed in
OUT/extract_failures.jsonl. Exit status: 0; 1 when some video failed; 2 on bad arguments or an unusable OUT.
"""
import argparse
import logging
import os
import sys


from momentor_jax.data import extract


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video_dir", required=True, help="directory of <video_id>.mp4 (or .mkv, .webm, ...) files")
    parser.add_argument("--out_dir", required=True, help="where frames-XXXXX-of-YYYYY.tfrecord shards go")
    parser.add_argument("--num_frames", type=int, default=300, help="frames per video, both ends included")
    parser.add_argument("--size", type=int, default=224, help="square frame side after resize + center crop")
    parser.add_argument("--num_shards", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="decoding processes")
    parser.add_argument("--jpeg_quality", type=int, default=90)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if not os.path.isdir(args.video_dir):
        print(f"error: --video_dir {args.video_dir} is not a directory", file=sys.stderr)
        return 2
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        print(f"error: --out_dir {args.out_dir} exists and is not a directory", file=sys.stderr)
        return 2
    try:
        summary = extract.extract_frames(args.video_dir, args.out_dir, num_frames=args.num_frames, size=args.size,
                                         num_shards=args.num_shards, workers=args.workers,
                                         jpeg_quality=args.jpeg_quality)
    except (ValueError, OSError) as e:  # bad arguments, or an OUT that cannot be written
        print(f"error: {e}", file=sys.stderr)
        return 2
    for video_id, reason in summary.failed:
        print(f"failed: {video_id}: {reason}")
    print(summary.line())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
