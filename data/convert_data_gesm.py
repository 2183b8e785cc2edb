r"""GESM raw annotations -> event-sequence examples JSONL (see momentor_jax/data/gesm.py).

    python data/convert_data_gesm.py --source_path GESM.json --target_path OUT.jsonl \
        [--format temporal|text] [--seed S] [--strict]

Prints read / written / rejected. Exit status: 0; 1 with --strict when any video was rejected; 2 when the source
file cannot be read.
"""
import argparse
import sys


from momentor_jax.data import gesm, moment10m


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source_path", required=True, help="raw GESM JSON {video_id: {timestamps, captions}}")
    parser.add_argument("--target_path", required=True, help="output JSONL, one video per line (a file or gs://bucket/key)")
    parser.add_argument("--format", choices=moment10m.FORMATS, default=moment10m.TEMPORAL,
                        help="temporal: <TEMP-OUTPUT> placeholders + times; text: times as text")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt phrasing and text templates")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any video was rejected")
    args = parser.parse_args(argv)
    try:
        counts = gesm.convert_file(args.source_path, args.target_path, fmt=args.format, seed=args.seed)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(counts.table())
    print(f"wrote {args.target_path}")
    return 1 if args.strict and counts.total.rejected else 0


if __name__ == "__main__":
    sys.exit(main())
