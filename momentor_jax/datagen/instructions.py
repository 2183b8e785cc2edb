"""Instructions: the ten Moment-10M data types and GESM, built from one video's segments and instances.

Pure: it takes the facts the earlier stages measured (spans, captions, CLIP scores) and returns raw Moment-10M
items `{id, data_type, conversations: [{User, Assistant}], variables, <score key>: float}` whose templates use only
the converter's variables ({moment}, {SOURCE_CLIP}, {instance_class}, {content}, {click_position}), and the GESM
entry `{timestamps, captions}`. Templates are drawn from the pools below with a seeded `random.Random`. Free text
(captions, LLM output) is cleaned of braces before it enters a template.

With a writer (writer.LLMWriter or anything with `complete(prompt) -> str`), the question and/or answer of qa,
instance_qa, cross_segment_qa and hypo_scene are written by it from the captions; an empty completion falls back to
the templates and is counted (`stats["llm_fallbacks"]`).

Scores (the public converter keeps an item when its score is above the type's threshold, see
data/moment10m.THRESHOLDS). The public code does not say how its scores were made; ours, each on the scale its
threshold suggests:
    data type                  key              score
    segment_caption            clip_similarity  cos(caption, segment's frames)
    instance_segment_caption   clip_similarity  cos(caption, the instance's crop in that segment)
    instance_caption           clip_similarity  cos(caption, the instance's crop)
    appearance                 clip_similarity  cos("a photo of a <class>", the instance's crop)
    qa                         match_score      the source segment's caption score
    instance_qa                match_score      the instance's caption score
    cross_segment_qa           match_score      the mean of the two segments' caption scores
    hypo_scene                 match_score      cos(segment's frames, next segment's frames)   (image-image)
    comp_ret                   match_score      cos(content, frames of the moment)
    segment_locate             match_score      cos(caption, its segment) / max cos(caption, any other segment)
(cos: CLIP cosine of projected embeddings; "frames": the mean embedding of the sampled frames.)
"""
from __future__ import annotations

import dataclasses
import random
from typing import Optional

from momentor_jax.datagen.captions import clean_text

SCORE_KEYS = {
    "segment_caption_data": "clip_similarity", "instance_segment_caption_data": "clip_similarity",
    "instance_caption_data": "clip_similarity", "appearance_data": "clip_similarity", "qa_data": "match_score",
    "instance_qa_data": "match_score", "cross_segment_qa_data": "match_score", "hypo_scene_data": "match_score",
    "comp_ret_data": "match_score", "segment_locate_data": "match_score",
}
DATA_TYPES = tuple(SCORE_KEYS)

POOLS = {
    "segment_caption_data": (
        "Describe what happens in {SOURCE_CLIP}.", "What is going on during {SOURCE_CLIP}?",
        "Give a short description of the video from {SOURCE_CLIP}.", "What can be seen in {SOURCE_CLIP}?"),
    "instance_segment_caption_data": (
        "What is the {instance_class} doing during {moment}?", "Describe the {instance_class} in {moment}.",
        "During {moment}, what does the {instance_class} look like?"),
    "instance_caption_data": (
        "Describe the object at {click_position}.", "What is at {click_position}?",
        "Tell me about the object located at {click_position}."),
    "instance_caption_answer": ("It is a {instance_class}. {caption}", "A {instance_class}. {caption}"),
    "appearance_data": (
        "When does the object at {click_position} appear in the video?",
        "During which moments is the object at {click_position} visible?",
        "Find every moment in which the object at {click_position} can be seen."),
    "appearance_answer": ("It appears at {moment}.", "It is visible at {moment}.", "{moment}."),
    "qa_data": ("In {SOURCE_CLIP}, {question}",),
    "qa_fallback": (("What happens in {SOURCE_CLIP}?", "{caption}"),
                    ("What is shown in {SOURCE_CLIP}?", "{caption}")),
    "instance_qa_data": ("In {SOURCE_CLIP}, about the {instance_class}: {question}",),
    "instance_qa_fallback": (("What does the {instance_class} look like in {SOURCE_CLIP}?", "{caption}"),
                             ("Describe the {instance_class} seen in {SOURCE_CLIP}.", "{caption}")),
    "cross_segment_qa_data": (("What happens right after {SOURCE_CLIP}?", "At {moment}: {caption}"),
                              ("After {SOURCE_CLIP}, what comes next and when?", "{caption} This is at {moment}.")),
    "hypo_scene_data": ("If the scene in {SOURCE_CLIP} went on, what would happen next?",
                        "Imagine the video continues after {SOURCE_CLIP}. What is likely to happen?"),
    "hypo_scene_fallback": ("It would likely continue like this: {caption}", "Probably this: {caption}"),
    "comp_ret_data": (("Find the moment when {content}.", "{moment}."),
                      ("When does this happen: {content}?", "It happens at {moment}."),
                      ("Locate the part of the video where {content}.", "From {moment}.")),
    "segment_locate_data": (("When does this happen in the video: {content}", "{moment}."),
                            ("Locate the segment described as: {content}", "It is at {moment}."),
                            ("Find the moment that matches this description: {content}", "From {moment}.")),
}

PROMPTS = {
    "question": "A video clip shows: {context}\nWrite one question about the clip that this description answers.\n"
                "Question:",
    "answer": "A video clip shows: {context}\nQuestion: {question}\nAnswer in one sentence.\nAnswer:",
    "cross": "Scene 1: {first}\nScene 2 (right after): {second}\nWrite one question about how scene 2 follows "
             "scene 1.\nQuestion:",
    "hypo": "A video clip shows: {context}\nIn one sentence, what is likely to happen next?\nAnswer:",
}


@dataclasses.dataclass
class Segment:
    span: list                      # [start, end] seconds
    caption: str
    caption_score: float
    locate_score: Optional[float] = None    # None: the video has one segment
    next_similarity: Optional[float] = None  # None: the last segment


@dataclasses.dataclass
class Instance:
    label: str
    span: list
    click: list                     # [t, [x, y]]
    caption: str
    caption_score: float
    class_score: float
    segment_captions: list = dataclasses.field(default_factory=list)  # [(segment, [s, e], caption, score)]
    composites: list = dataclasses.field(default_factory=list)        # [(segment, [s, e], content, score)]


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text else text


def _clause(caption: str) -> str:
    """"A man opens a door." -> "a man opens a door" (for {content} and composites)."""
    return _lower_first(clean_text(caption, sentence=False).rstrip(".!? "))


class _Builder:
    def __init__(self, video_id: str, rng: random.Random, writer):
        self.video_id, self.rng, self.writer = video_id, rng, writer
        self.items: dict = {t: [] for t in DATA_TYPES}
        self.stats = {"llm_calls": 0, "llm_fallbacks": 0, "skipped_empty_caption": 0}

    def add(self, data_type: str, user: str, assistant: str, variables: dict, score: float) -> None:
        self.items[data_type].append({
            "id": self.video_id, "data_type": data_type, "conversations": [{"User": user, "Assistant": assistant}],
            "variables": variables, SCORE_KEYS[data_type]: round(float(score), 4)})

    def pick(self, pool: str):
        return self.rng.choice(POOLS[pool])

    def write(self, prompt: str, **fields) -> str:
        if self.writer is None:
            return ""
        self.stats["llm_calls"] += 1
        text = clean_text(self.writer.complete(PROMPTS[prompt].format(**fields)), sentence=False)
        if not text:
            self.stats["llm_fallbacks"] += 1
        return text


def _question(text: str) -> str:
    text = clean_text(text)
    return text[:-1] + "?" if text.endswith(".") else text


def build(video_id: str, segments: list, instances: list, seed: int = 0, writer=None) -> tuple:
    """-> ({data_type: [items]} with every type present (possibly empty), GESM entry, stats)."""
    b = _Builder(video_id, random.Random(f"{seed}:{video_id}"), writer)
    segments = [dataclasses.replace(s, caption=clean_text(s.caption)) for s in segments]
    instances = [dataclasses.replace(i, caption=clean_text(i.caption), segment_captions=[
        (j, span, clean_text(c), score) for j, span, c, score in i.segment_captions]) for i in instances]
    captioned = [s for s in segments if s.caption]
    b.stats["skipped_empty_caption"] += len(segments) - len(captioned)
    for i, seg in enumerate(segments):
        if not seg.caption:
            continue
        clip = {"SOURCE_CLIP": seg.span}
        b.add("segment_caption_data", b.pick("segment_caption_data"), seg.caption, clip, seg.caption_score)

        question = b.write("question", context=seg.caption)
        answer = b.write("answer", context=seg.caption, question=question) if question else ""
        if question and answer:
            b.add("qa_data", b.pick("qa_data").format(SOURCE_CLIP="{SOURCE_CLIP}", question=_lower_first(
                _question(question))), clean_text(answer), clip, seg.caption_score)
        else:
            user, reply = b.pick("qa_fallback")
            b.add("qa_data", user, reply.format(caption=seg.caption), clip, seg.caption_score)

        if seg.locate_score is not None:
            user, reply = b.pick("segment_locate_data")
            b.add("segment_locate_data", user, reply, {"content": _clause(seg.caption), "moment": seg.span},
                  seg.locate_score)

        following = next((s for s in segments[i + 1:i + 2] if s.caption), None)
        if following is not None and seg.next_similarity is not None:
            hypo = b.write("hypo", context=seg.caption)
            reply = clean_text(hypo) if hypo else b.pick("hypo_scene_fallback").format(caption=following.caption)
            b.add("hypo_scene_data", b.pick("hypo_scene_data"), reply, clip, seg.next_similarity)

            question = b.write("cross", first=seg.caption, second=following.caption)
            answer = b.write("answer", context=f"{seg.caption} Then: {following.caption}",
                             question=question) if question else ""
            variables = {"SOURCE_CLIP": seg.span, "moment": following.span}
            score = (seg.caption_score + following.caption_score) / 2
            if question and answer:
                b.add("cross_segment_qa_data", "Consider {SOURCE_CLIP}. " + _question(question),
                      clean_text(answer) + " It happens at {moment}.", variables, score)
            else:
                user, reply = b.pick("cross_segment_qa_data")
                b.add("cross_segment_qa_data", user, reply.format(caption=following.caption, moment="{moment}"),
                      variables, score)

    for inst in instances:
        label = clean_text(inst.label, sentence=False)
        if not inst.caption:
            b.stats["skipped_empty_caption"] += 1
        else:
            answer = b.pick("instance_caption_answer").format(instance_class="{instance_class}", caption=inst.caption)
            b.add("instance_caption_data", b.pick("instance_caption_data"), answer,
                  {"click_position": inst.click, "instance_class": label}, inst.caption_score)
            question = b.write("question", context=f"A {label}. {inst.caption}")
            reply = b.write("answer", context=f"A {label}. {inst.caption}", question=question) if question else ""
            variables = {"SOURCE_CLIP": inst.span, "instance_class": label}
            if question and reply:
                b.add("instance_qa_data", b.pick("instance_qa_data").format(
                    SOURCE_CLIP="{SOURCE_CLIP}", instance_class="{instance_class}",
                    question=_lower_first(_question(question))), clean_text(reply), variables, inst.caption_score)
            else:
                user, reply = b.pick("instance_qa_fallback")
                b.add("instance_qa_data", user, reply.format(caption=inst.caption), variables, inst.caption_score)
        b.add("appearance_data", b.pick("appearance_data"), b.pick("appearance_answer"),
              {"click_position": inst.click, "moment": [inst.span]}, inst.class_score)
        for _, span, caption, score in inst.segment_captions:
            if caption:
                b.add("instance_segment_caption_data", b.pick("instance_segment_caption_data"), caption,
                      {"instance_class": label, "moment": span}, score)
        for _, span, content, score in inst.composites:
            user, reply = b.pick("comp_ret_data")
            b.add("comp_ret_data", user, reply, {"content": content, "moment": span}, score)

    gesm = {"timestamps": [s.span for s in captioned], "captions": [s.caption for s in captioned]}
    return b.items, gesm, b.stats


def composite_content(label: str, caption: str) -> str:
    """The {content} of a composite retrieval item: an instance and the event it is seen in."""
    label = clean_text(label, sentence=False)
    article = "an" if label[:1].lower() in "aeiou" else "a"
    return f"{article} {label} is visible while {_clause(caption)}"
