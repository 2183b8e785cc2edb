"""Tiny hand-built inputs for the bad-input tests: frame records, shards, JSONL examples, a tokenizer."""
import json
import os
import struct

import numpy as np

from momentor_jax.data import frames as frames_lib
from momentor_jax.data import tfrecord
from momentor_jax.tools.bench import loader_data

NUM_FRAMES, SIZE, DURATION, MAX_LENGTH = 4, 16, 10.0, 128


def frame_record(video_id, num_frames=NUM_FRAMES, size=SIZE, duration=DURATION, times=None, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (num_frames, size, size, 3), dtype=np.uint8)
    times = np.linspace(0, duration, num_frames) if times is None else times
    return frames_lib.make_frame_record(video_id, duration, times, pixels, jpeg_quality=50)


def example_record(video_id, input_times=(1.0, 4.0), output_times=(5.0, 8.0)):
    """One two-window dialogue: "<TEMP-INPUT> to <TEMP-INPUT>" asked, "<TEMP-OUTPUT> to <TEMP-OUTPUT>" answered."""
    return {"id": video_id, "data_type": "qa_data",
            "conversations": [{"User": "What happens in <TEMP-INPUT> to <TEMP-INPUT>?",
                               "Assistant": "Later, <TEMP-OUTPUT> to <TEMP-OUTPUT>."}],
            "temporal_input_times": list(input_times), "temporal_output_times": list(output_times)}


def write_shard(path, payloads, keys=None, index=True):
    """A shard of these payloads (raw bytes), with a sidecar index (keys given or None) unless index=False."""
    with tfrecord.TFRecordWriter(path, write_index=index) as writer:
        for i, payload in enumerate(payloads):
            writer.write(payload, key=None if keys is None else keys[i])
    return str(path)


def write_examples(path, records):
    with open(path, "w") as f:
        for record in records:
            f.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return str(path)


def huge_length_header(length):
    """A record header claiming `length` bytes, with a valid length CRC."""
    raw = struct.pack("<Q", length)
    return raw + struct.pack("<I", tfrecord.masked_crc32c(raw))


def flip_bit(path, position):
    with open(path, "r+b") as f:
        f.seek(position)
        value = f.read(1)[0]
        f.seek(position)
        f.write(bytes([value ^ 0x10]))


def tokenizer(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    return loader_data.make_tokenizer(out_dir, 16)


def data_config(examples, frames):
    return {"examples": examples, "frames": frames, "read_threads": 1,
            "system_prompt": loader_data.SHORT_SYSTEM_PROMPT}
