"""Input-pipeline throughput: examples/s of the training loader (frames decoded, tokenized, batched).

    python -m momentor_jax.tools.bench_loader --workers 0 1 2 [--num_videos 32 --num_frames 32 --image_size 224]

Renders synthetic shape videos straight into frame records (JPEG frames, as extraction writes them) and converted
examples (JSONL) in a temporary directory, trains a small sentencepiece model, then times `make_train_loader` for
each worker count. `render_dataset` is also what tests/test_loader.py builds its data with.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from momentor_jax import constants
from momentor_jax.data import frames as frames_lib
from momentor_jax.data import synthetic, tfrecord
from momentor_jax.data import tokenizer as tokenizer_lib
from momentor_jax.data import video as video_lib

SHORT_SYSTEM_PROMPT = "A video assistant."


def _examples_for(spec: synthetic.VideoSpec) -> list:
    """Three converted examples per video: caption a segment, ground an event, list all events (GESM)."""
    first = spec.events[0]
    temp_in, temp_out = constants.TEMP_INPUT_TOKEN, constants.TEMP_OUTPUT_TOKEN
    listing = " ".join(f"{temp_out} to {temp_out}: {e.caption()}" for e in spec.events)
    all_times = [t for e in spec.events for t in (e.start, e.end)]
    return [
        {"id": spec.video_id, "data_type": "segment_caption_data",
         "conversations": [{"User": f"What happens from {temp_in} to {temp_in}?", "Assistant": first.caption()}],
         "temporal_input_times": [first.start, first.end], "temporal_output_times": []},
        {"id": spec.video_id, "data_type": "segment_locate_data",
         "conversations": [{"User": f"When: {first.caption()}", "Assistant": f"From {temp_out} to {temp_out}."}],
         "temporal_input_times": [], "temporal_output_times": [first.start, first.end]},
        {"id": spec.video_id, "data_type": "gesm",
         "conversations": [{"User": "Localize every event.", "Assistant": listing}],
         "temporal_input_times": [], "temporal_output_times": all_times},
    ]


def render_dataset(out_dir: str, num_videos: int, num_frames: int, image_size: int, num_shards: int = 2,
                   seed: int = 0, missing_videos: int = 0) -> dict:
    """Writes frames-XXXXX-of-YYYYY.tfrecord (+ .index) and examples-{0,1}.jsonl under out_dir.

    `missing_videos` extra videos get examples but no frame record. Returns {examples: [paths], frames: glob,
    specs: [VideoSpec with a record], missing_ids: [...]}.
    """
    os.makedirs(out_dir, exist_ok=True)
    specs = synthetic.sample_videos(seed, num_videos + missing_videos, size=image_size)
    recorded, missing = specs[:num_videos], specs[num_videos:]
    prefix = os.path.join(out_dir, "frames")
    for shard in range(num_shards):
        with tfrecord.TFRecordWriter(frames_lib.shard_name(prefix, shard, num_shards)) as writer:
            for spec in recorded[shard::num_shards]:
                times = video_lib.sample_times(spec.duration, num_frames)
                pixels = np.stack([synthetic.render_frame(spec, t) for t in times])
                writer.write(frames_lib.make_frame_record(spec.video_id, spec.duration, times, pixels),
                             key=spec.video_id)
    examples = [e for spec in specs for e in _examples_for(spec)]
    paths = [os.path.join(out_dir, f"examples-{i}.jsonl") for i in range(2)]
    for i, path in enumerate(paths):
        with open(path, "w") as f:
            for example in examples[i::2]:
                f.write(json.dumps(example) + "\n")
    return {"examples": paths, "frames": f"{prefix}-*-of-{num_shards:05d}.tfrecord", "specs": recorded,
            "missing_ids": [s.video_id for s in missing]}


def make_tokenizer(out_dir: str, num_temporal_tokens: int) -> tokenizer_lib.MomentorTokenizer:
    path = tokenizer_lib.train_sentencepiece(tokenizer_lib.demo_texts(), os.path.join(out_dir, "sp"), 300)
    return tokenizer_lib.MomentorTokenizer(path, num_temporal_tokens)


def time_loader(data: dict, tokenizer, *, workers: int, num_frames: int, max_length: int, batch_size: int,
                num_batches: int, read_threads: int) -> tuple:
    """(examples per second over `num_batches` batches after one warm-up batch (worker start-up excluded),
    records skipped)."""
    from momentor_jax.data import loader

    config = {"examples": data["examples"], "frames": data["frames"], "read_threads": read_threads,
              "system_prompt": SHORT_SYSTEM_PROMPT}
    iterator = loader.make_train_loader(config, tokenizer=tokenizer, num_frames=num_frames, max_length=max_length,
                                        global_batch_size=batch_size, seed=0, worker_count=workers)
    try:
        next(iterator)
        start = time.perf_counter()
        for _ in range(num_batches):
            batch = next(iterator)
        elapsed = time.perf_counter() - start
        skipped = iterator.num_skipped_records
    finally:
        iterator.close()
    if batch["frames"].shape[:2] != (batch_size, num_frames):
        raise RuntimeError(f"unexpected frames batch {batch['frames'].shape}")
    return num_batches * batch_size / elapsed, skipped


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts to time")
    parser.add_argument("--num_videos", type=int, default=32)
    parser.add_argument("--num_frames", type=int, default=32, help="frames per video (M)")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_batches", type=int, default=20)
    parser.add_argument("--read_threads", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=None, help="default: 256 + num_frames")
    args = parser.parse_args(argv)
    max_length = args.max_length or 256 + args.num_frames

    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        print(f"rendering {args.num_videos} videos x {args.num_frames} frames of {args.image_size}px into {tmp}",
              flush=True)
        data = render_dataset(tmp, args.num_videos, args.num_frames, args.image_size)
        tokenizer = make_tokenizer(tmp, num_temporal_tokens=16)
        for workers in args.workers:
            rate, skipped = time_loader(data, tokenizer, workers=workers, num_frames=args.num_frames, max_length=max_length,
                               batch_size=args.batch_size, num_batches=args.num_batches,
                               read_threads=args.read_threads)
            print(f"workers={workers}: {rate:.1f} examples/s ({rate * args.num_frames:.0f} frames/s), "
                  f"{skipped} records skipped", flush=True)


if __name__ == "__main__":
    main()
