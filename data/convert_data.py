r"""Moment-10M raw annotations -> examples JSONL for training (see momentor_jax/data/moment10m.py).

    python data/convert_data.py --source_path RAW.json --target_path OUT.jsonl \
        [--format temporal|text] [--no_filter] [--seed S] [--strict]

Prints read / filtered / written / rejected per data type. Exit status: 0; 1 with --strict when any item was
rejected; 2 when the source file cannot be read.
"""
import argparse
import sys

from momentor_jax.data import moment10m


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source_path", required=True, help="raw Moment-10M JSON {video_id: {data_type: [items]}}")
    parser.add_argument("--target_path", required=True, help="output JSONL, one dialogue per line (a file or gs://bucket/key)")
    parser.add_argument("--format", choices=moment10m.FORMATS, default=moment10m.TEMPORAL,
                        help="temporal: <TEMP-INPUT>/<TEMP-OUTPUT> placeholders + times; text: times as text")
    parser.add_argument("--no_filter", action="store_true", help="keep items whatever their score")
    parser.add_argument("--seed", type=int, default=0, help="seed of the text-format timestamp templates")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any item was rejected")
    args = parser.parse_args(argv)
    try:
        counts = moment10m.convert_file(args.source_path, args.target_path, fmt=args.format,
                                        apply_filter=not args.no_filter, seed=args.seed)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(counts.table())
    print(f"wrote {args.target_path}")
    return 1 if args.strict and counts.total.rejected else 0


if __name__ == "__main__":
    sys.exit(main())
