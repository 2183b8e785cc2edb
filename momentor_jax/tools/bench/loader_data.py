"""Synthetic data for the loader benchmark and the loader tests: converted examples (JSONL) for synthetic videos,
frame records rendered straight to TFRecords, and a small sentencepiece tokenizer.

The `loader` suite extracts its frame records from rendered mp4s (the real extraction path); tests/test_loader.py
uses `render_dataset`, which skips the video encode/decode round trip.
"""
from __future__ import annotations

import json
import os

import numpy as np

from momentor_jax import constants
from momentor_jax.data import frames as frames_lib
from momentor_jax.data import synthetic, tfrecord
from momentor_jax.data import tokenizer as tokenizer_lib
from momentor_jax.data import video as video_lib

SHORT_SYSTEM_PROMPT = "A video assistant."


def examples_for(spec: synthetic.VideoSpec) -> list:
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


def write_examples(out_dir: str, specs: list, num_files: int = 2) -> list:
    """examples-{i}.jsonl under out_dir holding `examples_for` every spec, dealt round robin -> the paths."""
    examples = [e for spec in specs for e in examples_for(spec)]
    paths = [os.path.join(out_dir, f"examples-{i}.jsonl") for i in range(num_files)]
    for i, path in enumerate(paths):
        with open(path, "w") as f:
            for example in examples[i::num_files]:
                f.write(json.dumps(example) + "\n")
    return paths


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
    return {"examples": write_examples(out_dir, specs), "frames": f"{prefix}-*-of-{num_shards:05d}.tfrecord",
            "specs": recorded, "missing_ids": [s.video_id for s in missing]}


def make_tokenizer(out_dir: str, num_temporal_tokens: int) -> tokenizer_lib.MomentorTokenizer:
    """A 300-piece sentencepiece model trained on the demo texts, with `num_temporal_tokens` temporal tokens."""
    path = tokenizer_lib.train_sentencepiece(synthetic.tokenizer_texts(), os.path.join(out_dir, "sp"), 300)
    return tokenizer_lib.MomentorTokenizer(path, num_temporal_tokens)
