"""A length model of Moment-10M: synthetic dialogues of the ten data types, converted and encoded as training does.

What is modelled (Moment-10M itself is not available here; paper, Table 1 and section 3):
  - the ten data types in equal shares, each item written with the template pools of the data generation engine
    (datagen/instructions.py POOLS) and its answer styles, in the raw Moment-10M format, then converted by
    data/moment10m.convert_item exactly as data/convert_data.py converts (temporal format: <TEMP-INPUT>/<TEMP-OUTPUT>);
  - multi-turn items: 1, 2, 3 or 4 turns with probabilities TURN_WEIGHTS, a follow-up turn drawn from the same type;
  - captions and free answers of 8-36 words (qa answers 6-30), built from a fixed English word list; videos of
    30-900 s (mean ~400 s, the paper's 403 s average), moments inside them. With the template's system prompt
    this puts the text of an example (everything but the 302-token video span) at ~100-250 tokens, the range
    docs/DESIGN.md section 6 gives for Moment-10M (~100-300);
  - encoded by data/encode.encode_example with the real "momentor_v1" template (Momentor's system prompt) and M
    frame slots (300 by default), cut at a turn boundary at max_length.
The tokenizer is the one given (a MomentorTokenizer directory such as data/make_tokenizer.py writes from LLaMA's
tokenizer.model), or else a BPE sentencepiece model trained here on text of the same kind (`stand_in_tokenizer`): it
splits no word LLaMA's would keep whole, but it does keep whole some words LLaMA splits, so its text counts are a
little below LLaMA's; `tokens_per_word` in the summary says by how much the text of this model is compressed.

`lengths(n, tokenizer, ...)` -> encoded lengths; `summary(lengths, ...)` -> histogram, padding fraction of unpacked
rows and the efficiency of packed ones (data/packing.py). `python -m momentor_jax.tools.length_model` prints both.
"""
from __future__ import annotations

import os
import random
from typing import Optional, Sequence

import numpy as np

from momentor_jax import constants
from momentor_jax.data import conversation, encode, moment10m
from momentor_jax.data import packing as packing_lib
from momentor_jax.data import tokenizer as tokenizer_lib

TURN_WEIGHTS = {1: 0.5, 2: 0.25, 3: 0.15, 4: 0.1}
CAPTION_WORDS = (8, 36)   # captions and free answers
ANSWER_WORDS = (6, 30)    # qa answers
MIN_DURATION, MAX_DURATION = 30.0, 900.0

_SUBJECTS = ("a man", "a woman", "the chef", "a young boy", "two girls", "the player", "a dog", "the driver",
             "an old man", "the presenter", "a group of people", "the cyclist", "a little girl", "the worker",
             "the host", "a skier", "a musician", "the crowd", "the teacher", "a cat")
_VERBS = ("is cutting", "picks up", "throws", "is holding", "puts down", "walks toward", "opens", "is cleaning",
          "is talking about", "points at", "is painting", "carries", "is playing with", "looks at", "pushes",
          "is riding", "stirs", "is fixing", "shows", "is washing")
_OBJECTS = ("a red ball", "some vegetables", "the wooden door", "a large box", "a small knife", "the car",
            "a guitar", "the bicycle", "a frying pan", "the camera", "a blue cup", "the window", "a piece of paper",
            "the kitchen table", "a plastic bag", "the lawn mower", "a basket of fruit", "the laptop",
            "a black umbrella", "the microphone")
_PLACES = ("in the kitchen", "on the street", "in a park", "on a stage", "near the river", "in a small room",
           "on the beach", "in front of a house", "inside a car", "at the gym", "in a garden", "on a snowy slope")
_TAILS = ("while smiling", "slowly", "with both hands", "and then turns around", "while another person watches",
          "as the camera zooms in", "before walking away", "and laughs", "carefully", "in the background",
          "while music plays", "and nods")
_CLASSES = ("person", "dog", "car", "bicycle", "cup", "chair", "ball", "knife", "bottle", "laptop", "horse", "bird")
_WH = ("what color is", "how many people hold", "why does the person move", "what is the person doing with",
       "where is", "what happens to")


def _caption(rng: random.Random, words: tuple[int, int] = CAPTION_WORDS) -> str:
    """One or two clauses of caption text, about `words` long."""
    target = rng.randint(*words)
    clauses = []
    while sum(len(c.split()) for c in clauses) < target:
        clause = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
        if rng.random() < 0.7:
            clause += f" {rng.choice(_PLACES)}"
        if rng.random() < 0.5:
            clause += f" {rng.choice(_TAILS)}"
        clauses.append(clause)
    words_out = " and ".join(clauses).split()[:max(target, 4)]
    text = " ".join(words_out)
    return text[0].upper() + text[1:] + "."


def _window(rng: random.Random, duration: float) -> list:
    start = rng.uniform(0.0, duration * 0.9)
    return [round(start, 2), round(min(duration, start + rng.uniform(2.0, max(3.0, duration * 0.25))), 2)]


def _turn(data_type: str, rng: random.Random, first: bool) -> tuple[str, str]:
    """(User, Assistant) templates of one turn; a first turn and follow-ups differ only in wording."""
    from momentor_jax.datagen.instructions import POOLS  # noqa: PLC0415 (the engine's template pools)

    caption = _caption(rng)
    pick = rng.choice
    if data_type == "segment_caption_data":
        return pick(POOLS[data_type]) if first else "And what happens during {moment}?", caption
    if data_type == "instance_segment_caption_data":
        return pick(POOLS[data_type]), caption
    if data_type == "instance_caption_data":
        return pick(POOLS[data_type]), pick(POOLS["instance_caption_answer"]).format(
            instance_class="{instance_class}", caption=caption)
    if data_type == "appearance_data":
        return pick(POOLS[data_type]), pick(POOLS["appearance_answer"])
    if data_type == "qa_data":
        question = f"{pick(_WH)} {pick(_OBJECTS)}?"
        user = pick(POOLS[data_type]).format(SOURCE_CLIP="{SOURCE_CLIP}", question=question)
        return user, _caption(rng, ANSWER_WORDS)
    if data_type == "instance_qa_data":
        question = f"{pick(_WH)} {pick(_OBJECTS)}?"
        return (pick(POOLS[data_type]).format(SOURCE_CLIP="{SOURCE_CLIP}", instance_class="{instance_class}",
                                              question=question), _caption(rng, ANSWER_WORDS))
    if data_type == "cross_segment_qa_data":
        user, reply = pick(POOLS[data_type])
        return user, reply.format(caption=caption, moment="{moment}")
    if data_type == "hypo_scene_data":
        return pick(POOLS[data_type]), pick(POOLS["hypo_scene_fallback"]).format(caption=caption)
    if data_type in ("comp_ret_data", "segment_locate_data"):
        user, reply = pick(POOLS[data_type])
        return user, reply
    raise ValueError(f"unknown data type {data_type}")


def raw_item(data_type: str, rng: random.Random, duration: float) -> dict:
    """One raw Moment-10M item (the format data/convert_data.py reads) of `data_type`."""
    turns = rng.choices(list(TURN_WEIGHTS), weights=list(TURN_WEIGHTS.values()))[0]
    conversations = [dict(zip(("User", "Assistant"), _turn(data_type, rng, i == 0))) for i in range(turns)]
    moments = [_window(rng, duration) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
    variables = {
        "moment": moments if len(moments) > 1 else moments[0],
        "SOURCE_CLIP": _window(rng, duration),
        "instance_class": rng.choice(_CLASSES),
        "content": _caption(rng, (6, 16)).rstrip(".").lower(),
        "click_position": [round(rng.uniform(0, duration), 2), [round(rng.random(), 3), round(rng.random(), 3)]],
    }
    return {"id": "", "data_type": data_type, "conversations": conversations, "variables": variables,
            "match_score": 2.0}


def examples(n: int, seed: int = 0) -> list[tuple[dict, float]]:
    """n converted examples (as data/convert_data.py writes them) with their video durations, types in turn."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        data_type = moment10m.DATA_TYPES[i % len(moment10m.DATA_TYPES)]
        duration = round(rng.uniform(MIN_DURATION, MAX_DURATION), 2)
        video_id = f"v{i // 160:06d}"  # ~160 instructions per video, as Moment-10M has
        item = raw_item(data_type, rng, duration)
        out.append((moment10m.convert_item(item, video_id, data_type, moment10m.TEMPORAL, rng), duration))
    return out


def corpus(n: int = 4000, seed: int = 12345) -> list[str]:
    """Text of the same kind (system prompt, rendered turns) to train the stand-in tokenizer on."""
    texts = [conversation.SYSTEM_PROMPT, "USER: ASSISTANT:"]
    for example, _ in examples(n, seed):
        for turn in example["conversations"]:
            texts += [turn["User"], turn["Assistant"]]
    return texts


def stand_in_tokenizer(directory: str, num_temporal_tokens: int = 300,
                       vocab_size: int = 1000) -> tokenizer_lib.MomentorTokenizer:
    """A BPE sentencepiece model trained on `corpus()` under `directory` (reused when already there)."""
    os.makedirs(directory, exist_ok=True)
    prefix = os.path.join(directory, f"length_model_bpe{vocab_size}")
    path = prefix + ".model"
    if not os.path.exists(path):
        path = tokenizer_lib.train_sentencepiece(corpus(), prefix, vocab_size)
    return tokenizer_lib.MomentorTokenizer(path, num_temporal_tokens)


def lengths(n: int, tokenizer: tokenizer_lib.MomentorTokenizer, num_frames: int = 300, max_length: int = 2048,
            seed: int = 0, system_prompt: str = conversation.SYSTEM_PROMPT) -> np.ndarray:
    """Encoded lengths (tokens, video span included) of `examples(n, seed)`."""
    out = np.zeros(n, np.int32)
    for i, (example, duration) in enumerate(examples(n, seed)):
        encoded = encode.encode_example(example, tokenizer, duration, num_frames, max_length, system_prompt)
        out[i] = packing_lib.real_length(encoded)
    return out


def tokens_per_word(tokenizer: tokenizer_lib.MomentorTokenizer, n: int = 200, seed: int = 0) -> float:
    """Sentencepiece tokens per whitespace-separated word over the dialogue text of `examples(n)`."""
    words = tokens = 0
    for example, _ in examples(n, seed):
        for turn in example["conversations"]:
            for text in (turn["User"], turn["Assistant"]):
                for marker in (constants.TEMP_INPUT_TOKEN, constants.TEMP_OUTPUT_TOKEN):
                    text = text.replace(marker, " ")
                words += len(text.split())
                tokens += len(tokenizer.encode(text, add_bos=False))
    return tokens / max(words, 1)


def histogram(values: Sequence[int], max_length: int, bin_width: int = 64) -> list[tuple[int, int, int]]:
    """[(low, high, count)] over [0, max_length] in bins of `bin_width`, only the non-empty ones."""
    edges = np.arange(0, max_length + bin_width, bin_width)
    counts, _ = np.histogram(values, bins=edges)
    return [(int(lo), int(hi), int(c)) for lo, hi, c in zip(edges[:-1], edges[1:], counts) if c]


def summary(values: Sequence[int], max_length: int, options: Optional[packing_lib.PackingOptions] = None) -> dict:
    """Length statistics, the padding fraction of unpacked rows and, with `options`, of packed ones."""
    values = np.asarray(values)
    result = {
        "examples": int(len(values)),
        "max_length": max_length,
        "mean": float(values.mean()), "median": float(np.median(values)),
        "p5": float(np.percentile(values, 5)), "p95": float(np.percentile(values, 95)),
        "min": int(values.min()), "max": int(values.max()),
        "unpacked_padding_fraction": float(1.0 - values.sum() / (len(values) * max_length)),
        "histogram": histogram(values, max_length),
    }
    if options is not None:
        rows = packing_lib.pack_windows(values.tolist(), options)
        eff = packing_lib.efficiency(values.tolist(), rows, max_length)
        result.update(packed_rows=len(rows), packed_efficiency=eff, packed_padding_fraction=1.0 - eff,
                      examples_per_row=len(values) / len(rows),
                      useful_token_gain=eff / (1.0 - result["unpacked_padding_fraction"]))
    return result
