r"""Frame records -> cached pooled CLIP features (see momentor_jax/data/features.py).

    python data/extract_features.py --frames "DIR/frames-*.tfrecord" --checkpoint CKPT --out_dir OUT \
        [--batch_frames 64] [--threads 4] [--overwrite]

CKPT is a Momentor parameter checkpoint (`python -m momentor_jax.convert import_hf` output) that holds the vision
tower. On a multi-host TPU slice run it on every host: each host takes the shards i with i % hosts == host index.
Train on the output with `use_features=True` (model config `use_cached_features`). Exit status: 0; 2 on bad
arguments or when no record could be read.

Apache Beam mode (momentor_jax/data/beam_pipelines.py): give a runner, and any other Beam pipeline option after it.
Each input shard is one step on a worker that loads the vision tower once; the output shards are those of the
single-machine mode, plus OUT/features_failures.jsonl and OUT/features_summary.json (exit status 1 when some record
could not be read).

    python data/extract_features.py --frames "gs://B/frames/frames-*.tfrecord" --checkpoint gs://B/ckpt \
        --out_dir gs://B/features --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp \
        --setup_file=./setup.py
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
    parser.add_argument("--runner", default=None, help="run as an Apache Beam pipeline on this runner "
                        "(DirectRunner, DataflowRunner, FlinkRunner, ...); other Beam options follow it")
    args, beam_args = parser.parse_known_args(argv)
    if beam_args and not args.runner:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)} (Beam options need --runner)")
    if args.runner:
        return _run_beam(args, beam_args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    import jax  # noqa: PLC0415 (after argument parsing: --help stays fast)

    from momentor_jax import checkpoints  # noqa: PLC0415
    from momentor_jax.data import features  # noqa: PLC0415
    from momentor_jax.training import distributed  # noqa: PLC0415

    distributed.maybe_initialize()  # several hosts: each extracts its own shards on its own devices
    try:
        params, config = checkpoints.load_params(args.checkpoint), checkpoints.load_config(args.checkpoint)
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


def _run_beam(args, beam_args) -> int:
    from momentor_jax.data import beam_pipelines  # noqa: PLC0415 (apache_beam only in Beam mode)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("momentor_jax.data.beam_pipelines").setLevel(logging.INFO)  # the launcher's plan
    try:
        run = beam_pipelines.extract_features(args.frames, args.out_dir, args.checkpoint,
                                              [f"--runner={args.runner}", *beam_args],
                                              batch_frames=args.batch_frames, threads=args.threads,
                                              overwrite=args.overwrite)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(run.line())
    return 1 if run.summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
