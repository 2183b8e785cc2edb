"""The public code's cached CLIP features (<video_id>.npy) -> feature records
(see momentor_jax/data/public_features.py).

    python data/import_public_features.py --feature_dir DIR --out_dir OUT [--num_shards S] [--num_frames 300]
        [--overwrite]

Reads the files without unpickling them and writes OUT/features-XXXXX-of-YYYYY.tfrecord (+ .index); train on OUT
with `--config.data.frames=OUT --config.data.use_features=True`. Files that are not public feature files are skipped
and named. Exit status: 0; 1 when some file was skipped; 2 on bad arguments or when no file could be read.
"""
import argparse
import logging
import sys



def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--feature_dir", required=True, help="directory (local or gs://) of <video_id>.npy files")
    parser.add_argument("--out_dir", required=True, help="where features-XXXXX-of-YYYYY.tfrecord shards go")
    parser.add_argument("--num_shards", type=int, default=1)
    parser.add_argument("--num_frames", type=int, default=None,
                        help="frames every file must hold (the public extraction: 300); default: any")
    parser.add_argument("--overwrite", action="store_true", help="redo output shards that already exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    from momentor_jax.data import public_features  # noqa: PLC0415 (after argument parsing: --help stays fast)

    try:
        stats = public_features.import_feature_dir(args.feature_dir, args.out_dir, num_shards=args.num_shards,
                                                   num_frames=args.num_frames, overwrite=args.overwrite)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{stats.videos} videos written in {stats.shards_written} shards, {stats.shards_kept} shards kept from an "
          f"earlier run, {stats.skipped} files skipped")
    return 1 if stats.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
