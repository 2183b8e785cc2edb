"""Ask a trained Momentor about one video; times in the answer are seconds.

    python -m momentor_jax.predict --checkpoint CKPT --video FILE.mp4 --question "When does the red circle appear?"
        [--json] [--max_new_tokens 128] [--temperature 0] [--top_p 1]

CKPT: a training workdir (latest step), one of its step directories, or a converted checkpoint. Frames are sampled
as in training: the model's num_frames, uniformly over the whole video including both ends, at its image size.
Exit code 2 when the video is missing or cannot be decoded.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional

from absl import app, flags

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "training workdir, step directory or converted checkpoint")
_VIDEO = flags.DEFINE_string("video", None, "video file")
_QUESTION = flags.DEFINE_string("question", None, "question about the video")
_JSON = flags.DEFINE_bool("json", False, "print one JSON object instead of the answer text")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 128, "longest answer in tokens")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0: greedy decoding")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass (with temperature > 0)")
_SYSTEM_PROMPT = flags.DEFINE_string("system_prompt", None, "override the checkpoint's system prompt")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")

EXIT_BAD_VIDEO = 2


def load_video(path: str, config) -> tuple:
    """(frames uint8 [M, S, S, 3], duration) sampled like training; raises VideoDecodeError naming the file."""
    from momentor_jax.data.video import VideoDecodeError, decode_frames  # noqa: PLC0415
    if not os.path.isfile(path):
        raise VideoDecodeError(f"{path}: no such video file")
    if config.use_cached_features:
        raise ValueError("this checkpoint reads cached ViT features (use_cached_features=True); predict needs a "
                         "model with its vision tower")
    decoded = decode_frames(path, config.num_frames, config.vision.image_size)
    return decoded.frames, float(decoded.duration)


def predict(checkpoint: str, video: str, question: str, max_new_tokens: int = 128, temperature: float = 0.0,
            top_p: float = 1.0, seed: int = 0, system_prompt: Optional[str] = None) -> dict:
    """{'video', 'duration', 'question', 'answer', 'times', 'windows'} with times in seconds."""
    from momentor_jax.data.video import VideoDecodeError  # noqa: PLC0415
    from momentor_jax.inference import generate, load  # noqa: PLC0415
    if not os.path.isfile(video):  # before the (slow) model load
        raise VideoDecodeError(f"{video}: no such video file")
    params, config, tokenizer = load.load_model(checkpoint)
    params = load.shard_params(params, config)
    try:
        frames, duration = load_video(video, config)
    except VideoDecodeError:
        raise
    except Exception as e:  # PyAV and PIL raise many types on damaged input
        raise VideoDecodeError(f"{video}: cannot decode ({type(e).__name__}: {e})") from e
    sampling = generate.SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    generator = generate.Generator(params, config, tokenizer, system_prompt or load.load_system_prompt(checkpoint),
                                   sampling, seed)
    answer = generator.answer([question], frames[None], [duration])[0]
    return {"video": video, "duration": duration, "question": question, **answer.to_json()}


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for flag in (_CHECKPOINT, _VIDEO, _QUESTION):
        if not flag.value:
            raise app.UsageError(f"--{flag.name} is required")
    from momentor_jax.data.video import VideoDecodeError  # noqa: PLC0415
    try:
        result = predict(_CHECKPOINT.value, _VIDEO.value, _QUESTION.value, _MAX_NEW_TOKENS.value, _TEMPERATURE.value,
                         _TOP_P.value, _SEED.value, _SYSTEM_PROMPT.value)
    except VideoDecodeError as e:
        print(f"error: video {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_VIDEO)
    if _JSON.value:
        print(json.dumps(result))
    else:
        print(result["answer"])


if __name__ == "__main__":
    app.run(main)
