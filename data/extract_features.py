r"""Frame records -> cached pooled CLIP features (see momentor_jax/data/features.py).

    python data/extract_features.py --frames "DIR/frames-*.tfrecord" --checkpoint CKPT --out_dir OUT \
        [--batch_frames 64] [--threads 4] [--overwrite]

CKPT is a Momentor parameter checkpoint (`python -m momentor_jax.convert import_hf` output) that holds the vision
tower. On a multi-host TPU slice run it on every host: each host takes the shards i with i % hosts == host index.
Train on the output with `use_features=True` (model config `use_cached_features`). Exit status: 0; 2 on bad
arguments or when no record could be read.
"""
import argparse
import logging
import sys



def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", required=True, help="frame TFRecord shards: glob, directory or comma list")
    parser.add_argument("--checkpoint", required=True, help="Momentor parameter checkpoint with CLIP weights")
    parser.add_argument("--out_dir", required=True, help="where features-XXXXX-of-YYYYY.tfrecord go")
    parser.add_argument("--batch_frames", type=int, default=64, help="frames per ViT call (rounded up to a "
                        "multiple of the local device count)")
    parser.add_argument("--threads", type=int, default=4, help="JPEG decoding threads")
    parser.add_argument("--overwrite", action="store_true", help="redo output shards that already exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    import jax  # noqa: PLC0415 (after argument parsing: --help stays fast)

    from momentor_jax import checkpoint_io  # noqa: PLC0415
    from momentor_jax.data import features  # noqa: PLC0415
    from momentor_jax.training import distributed  # noqa: PLC0415

    distributed.maybe_initialize()  # several hosts: each extracts its own shards on its own devices
    try:
        params, config = checkpoint_io.load_params(args.checkpoint)
        if "vision" not in params:
            raise ValueError(f"{args.checkpoint}: the checkpoint has no vision tower ('vision' parameters)")
        stats = features.extract_features(args.frames, args.out_dir, params["vision"], config.vision,
                                          batch_frames=args.batch_frames, process_index=jax.process_index(),
                                          process_count=jax.process_count(), threads=args.threads,
                                          overwrite=args.overwrite)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{stats.videos} videos ({stats.frames} frames) written in {stats.shards_written} shards, "
          f"{stats.shards_kept} shards kept from an earlier run, {stats.skipped_records} unreadable records skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
