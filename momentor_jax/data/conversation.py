"""Conversation template "momentor_v1": Vicuna v1.1 style with Momentor's system prompt.

    SYSTEM USER: <video>\\n{user 1} ASSISTANT: {reply 1}</s>USER: {user 2} ASSISTANT: {reply 2}</s>

`prompt_pieces` cuts that text into pieces to tokenize one by one, each marked supervised or not. The cuts sit
either at an added token (</s>) or between "ASSISTANT:" and the reply's leading space: sentencepiece pieces never
hold a non-space character followed by "▁", so no token can straddle either cut and encoding the pieces one by one
gives the ids of encoding the whole prompt (tests/test_conversation.py checks it).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from momentor_jax import constants

# Byte-for-byte the public template, including the missing space after "natural language.".
SYSTEM_PROMPT = (
    "You are Momentor, a large vision-language assistant. "
    "You are able to understand the video content that the user provides, and assist the user with a variety of "
    "tasks with segment-level comprehension and localization using natural language."
    "Follow the instructions carefully and explain your answers in detail based on the provided video."
)
USER_ROLE = "USER"
ASSISTANT_ROLE = "ASSISTANT"
SEP = " "
SEP2 = "</s>"


@dataclasses.dataclass(frozen=True)
class Piece:
    """A stretch of prompt text. `continues_text`: it directly follows text ending in a non-space character."""
    text: str
    supervised: bool
    continues_text: bool
    turn: int


def get_prompt(turns: Sequence[tuple[str, Optional[str]]], system_prompt: str = SYSTEM_PROMPT) -> str:
    """The prompt of (user, reply) turns; a reply of None (or "") ends the prompt with "ASSISTANT:"."""
    return "".join(piece.text for piece in prompt_pieces(turns, system_prompt))


def prompt_pieces(turns: Sequence[tuple[str, Optional[str]]], system_prompt: str = SYSTEM_PROMPT) -> list[Piece]:
    """Supervised pieces are exactly the replies (with the leading space the template puts before them) and
    their closing </s>. Only the last turn may have no reply. A different `system_prompt` is for tiny test
    models whose context cannot hold the real one."""
    pieces = []
    for i, (user, reply) in enumerate(turns):
        opening = system_prompt + SEP if i == 0 else ""
        pieces.append(Piece(f"{opening}{USER_ROLE}: {user}{SEP}{ASSISTANT_ROLE}:", False, False, i))
        if reply:
            pieces.append(Piece(" " + reply, True, True, i))
            pieces.append(Piece(SEP2, True, False, i))
        elif i != len(turns) - 1:
            raise ValueError(f"turn {i} has no assistant reply; only the last turn may leave it open")
    return pieces


def with_video_marker(first_user_text: str) -> str:
    """The public code prepends "<video>\\n" to the first user turn; <video> is expanded into frame slots."""
    return constants.VIDEO_TOKEN + "\n" + first_user_text


def expand_video_marker(text: str, num_frames: int) -> str:
    """<video> -> <vid_start> + M x <vid_patch> + <vid_end> (the text the model's tokenizer really sees)."""
    span = constants.VID_START_TOKEN + constants.VID_PATCH_TOKEN * num_frames + constants.VID_END_TOKEN
    return text.replace(constants.VIDEO_TOKEN, span)
