r"""Downloads the videos of an annotation file with yt-dlp (see momentor_jax/data/download.py).

    python data/download_videos.py --source_path RAW.json --video_path DIR [--workers K] [--url_template T]
        [--format F]

Ids are the keys of a raw Moment-10M / GESM JSON ({video_id: ...}) or the `id` of each line of a JSONL file.
Invalid ids are skipped, files already in DIR are skipped, each video is written under a temporary name and renamed
when complete. Failures (id, reason) go to DIR/download_failures.jsonl. Exit status: 0; 1 when some id was invalid or
failed; 2 when the source cannot be read.

Apache Beam mode (momentor_jax/data/beam_pipelines.py): give a runner, and any other Beam pipeline option after it,

    python data/download_videos.py --source_path RAW.json --video_path gs://B/videos \
        --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py

Each id is tried up to --attempts times while its error looks transient (5xx, 429, timeouts); a remote
--video_path receives each file once it is complete. Failures go to VIDEO_PATH/download_failures.jsonl as
{video_id, stage, reason (unavailable, private, network error, invalid id, download error), detail}, counts to
VIDEO_PATH/download_summary.json; --workers is then the runner's business.
"""
import argparse
import logging
import sys


from momentor_jax.data import download


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source_path", required=True, help="annotation JSON keyed by video id, or JSONL with 'id'")
    parser.add_argument("--video_path", required=True, help="directory for <id>.mp4")
    parser.add_argument("--workers", type=int, default=4, help="parallel downloads")
    parser.add_argument("--url_template", default=download.DEFAULT_URL_TEMPLATE, help="URL with {id} in it")
    parser.add_argument("--format", default=download.DEFAULT_FORMAT, help="yt-dlp format selector")
    parser.add_argument("--failure_log", default=None, help=f"default: VIDEO_PATH/{download.FAILURES_FILE}")
    parser.add_argument("--runner", default=None, help="run as an Apache Beam pipeline on this runner "
                        "(DirectRunner, DataflowRunner, FlinkRunner, ...); other Beam options follow it")
    parser.add_argument("--attempts", type=int, default=3, help="Beam mode: tries per id on transient errors")
    args, beam_args = parser.parse_known_args(argv)
    if beam_args and not args.runner:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)} (Beam options need --runner)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        ids = download.read_video_ids(args.source_path)
    except (OSError, ValueError) as e:
        print(f"error: cannot read ids from {args.source_path}: {e}", file=sys.stderr)
        return 2
    if args.runner:
        return _run_beam(ids, args, beam_args)
    try:
        summary = download.download_videos(ids, args.video_path, workers=args.workers,
                                           url_template=args.url_template, fmt=args.format,
                                           failures_path=args.failure_log)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.line())
    return 1 if summary.invalid or summary.failed else 0


def _run_beam(ids, args, beam_args) -> int:
    from momentor_jax.data import beam_pipelines  # noqa: PLC0415 (apache_beam only in Beam mode)

    if args.failure_log:
        print("error: --failure_log is for the single-machine mode; Beam mode writes "
              "VIDEO_PATH/download_failures.jsonl", file=sys.stderr)
        return 2
    logging.getLogger("momentor_jax.data.beam_pipelines").setLevel(logging.INFO)  # the launcher's plan
    try:
        run = beam_pipelines.download_videos(ids, args.video_path, [f"--runner={args.runner}", *beam_args],
                                             url_template=args.url_template, fmt=args.format,
                                             attempts=args.attempts)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(run.line())
    return 1 if run.summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
