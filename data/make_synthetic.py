"""Renders synthetic shape videos with known events, plus their annotations (see momentor_jax/data/synthetic.py).

    python data/make_synthetic.py --out DIR --num_videos N [--seed S] [--num_heldout K] [--size 64] [--fps 8]
    python data/make_synthetic.py --cuts --out DIR --num_videos N [--seed S] [--size 64] [--fps 10]

Writes DIR/videos/<id>.mp4, DIR/moment10m_{train,heldout}.json (raw Moment-10M format), DIR/gesm_{train,heldout}.json,
DIR/grounding_{train,heldout}.jsonl (QVHighlights-style) and DIR/synthetic_videos.json (ground truth).
With --cuts: videos with known hard cuts, events and moving shapes instead (momentor_jax/data/synthetic_cuts.py),
DIR/videos/<id>.mp4 and DIR/synthetic_cuts.json (ground truth for the data generation engine). Same seed, same data.
"""
import argparse
import os
import sys


from momentor_jax.data import synthetic, synthetic_cuts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num_videos", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_heldout", type=int, default=2, help="the last K videos are held out for evaluation")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (even)")
    parser.add_argument("--fps", type=int, default=None, help="default 8 (10 with --cuts)")
    parser.add_argument("--min_duration", type=int, default=12, help="seconds")
    parser.add_argument("--max_duration", type=int, default=30, help="seconds")
    parser.add_argument("--cuts", action="store_true", help="render cut/event videos for the generation engine")
    args = parser.parse_args(argv)
    if args.fps is None:
        args.fps = 10 if args.cuts else 8
    if args.num_videos < 1 or args.size < 2 or args.size % 2 or args.fps < 1 \
            or not 3 <= args.min_duration <= args.max_duration:
        parser.error("need num_videos >= 1, an even size >= 2, fps >= 1 and 3 <= min_duration <= max_duration")
    if not 0 <= args.num_heldout <= args.num_videos:
        parser.error("--num_heldout must lie in [0, num_videos]")
    if args.cuts:
        specs = synthetic_cuts.make_dataset(args.out, args.num_videos, seed=args.seed, size=args.size, fps=args.fps)
        cuts = sum(len(s.cuts) for s in specs.values())
        print(f"{len(specs)} cut videos ({cuts} cuts) in {os.path.join(args.out, 'videos')}; truth in "
              f"{os.path.join(args.out, synthetic_cuts.TRUTH_FILE)}")
        return 0
    result = synthetic.make_dataset(args.out, args.num_videos, seed=args.seed, num_heldout=args.num_heldout,
                                    size=args.size, fps=args.fps, min_duration=args.min_duration,
                                    max_duration=args.max_duration)
    print(f"{len(result['train'])} train and {len(result['heldout'])} held-out videos ({result['codec']}) in "
          f"{result['video_dir']}; {result['num_queries']} held-out grounding queries "
          f"({result['num_train_queries']} on training videos); annotations in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
