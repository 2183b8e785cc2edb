"""The LLaMA sentencepiece tokenizer plus Momentor's added tokens.

Id layout (see momentor_jax/constants.py): the base sentencepiece pieces [0, B), then ADDED_TOKENS (B .. B+4),
then the N temporal tokens <TEMP-k> (V + k, V = B + 5), then <video> (V + N).

Behaviour matched (checked in tests/test_tokenizer.py against transformers 5.x, the installed version): its
sentencepiece ("slow") tokenizer `transformers.tokenization_utils_sentencepiece.SentencePieceBackend` with
`legacy=True`, the slow, legacy path the public code asks for with `use_fast=False`, with the same tokens added
through `add_tokens(..., special_tokens=True)`:
  - added tokens and `<s>`, `</s>`, `<unk>` written in the text are never split and no whitespace around them is
    stripped;
  - every stretch of text between them is encoded by sentencepiece on its own, so each stretch gets
    sentencepiece's dummy prefix "▁" (LLaMA's model has `add_dummy_prefix`).
In 5.x `LlamaTokenizer` itself is a `tokenizers` (fast) class and `use_fast=False` is ignored; it gives no prefix
after added tokens (legacy=False, its default) or no second "▁" for a stretch that starts with a space
(legacy=True).

added_token_whitespace="strip" (MomentorConfig.added_token_whitespace) gives what the public code's pin,
transformers 4.33.3, does with the same calls: its slow tokenizer strips the whitespace on both sides of every token
added through `add_tokens` (`str.rstrip` of the stretch before, `str.lstrip` of the stretch after; a stretch left
empty is dropped), but not around `<s>`, `</s>`, `<unk>` (AddedTokens with lstrip/rstrip False). So
"USER: <vid_start>" loses its space, "<vid_end>\nWhat" its newline and " <TEMP-OUTPUT> to <TEMP-OUTPUT>:" becomes
"<TEMP-OUTPUT>to<TEMP-OUTPUT>:" before sentencepiece. `<video>` strips too: the public code replaces it by
<vid_start> ... <vid_end> before tokenizing. transformers 5's slow tokenizer with the tokens added as
`AddedToken(lstrip=True, rstrip=True)` gives the same ids (tests/test_tokenizer.py compares with it).
"""
from __future__ import annotations

import collections
import functools
import json
import os
import re
from typing import Iterable, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from momentor_jax import constants, fileio
from momentor_jax.models.config import CHOICES

MODEL_FILENAME = "tokenizer.model"
WHITESPACE_MODES = CHOICES["added_token_whitespace"]
ADDED_TOKENS_FILENAME = "momentor_added_tokens.json"
_BYTE_PIECES = 256
# A special token is "<...>" without "<" or ">" inside, so at most one candidate can start at each "<".
_ANGLE_SPAN = re.compile(r"<[^<>]*>")


class MomentorTokenizer:
    """encode / decode with the Momentor vocabulary. `vocab_size` is V (rows of the model's embedding table).

    added_token_whitespace: "keep" (transformers >= 4.34) or "strip" (transformers 4.33; see the module docstring).
    """

    def __init__(self, model_path: str | os.PathLike, num_temporal_tokens: int,
                 added_token_whitespace: str = "keep"):
        if num_temporal_tokens < 1:
            raise ValueError(f"num_temporal_tokens must be >= 1, got {num_temporal_tokens}")
        if added_token_whitespace not in WHITESPACE_MODES:
            raise ValueError(f"added_token_whitespace={added_token_whitespace!r}; choose one of {WHITESPACE_MODES}")
        self.model_path = os.fspath(model_path)  # local or gs://
        if not fileio.exists(self.model_path):
            raise FileNotFoundError(f"sentencepiece model not found: {self.model_path}")
        try:
            self._setup(fileio.read_bytes(self.model_path), num_temporal_tokens, added_token_whitespace)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 (sentencepiece and protobuf raise RuntimeError / DecodeError on foreign bytes)
            raise ValueError(f"{self.model_path}: not a sentencepiece model ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None

    def _setup(self, model_bytes: bytes, num_temporal_tokens: int, added_token_whitespace: str) -> None:
        self.added_token_whitespace = added_token_whitespace
        self._model_bytes = model_bytes
        self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        self._sp_no_prefix = spm.SentencePieceProcessor(model_proto=_without_dummy_prefix(model_bytes))
        self._encode_stretch = functools.lru_cache(maxsize=4096)(self._encode_stretch_uncached)
        self.num_temporal_tokens = num_temporal_tokens
        self.base_vocab_size = self._sp.get_piece_size()
        for name, piece_id in (("bos", self._sp.bos_id()), ("eos", self._sp.eos_id())):
            if piece_id < 0:
                raise ValueError(f"{self.model_path}: the sentencepiece model has no {name} piece")
        self.added_tokens = (list(constants.ADDED_TOKENS)
                             + [constants.TEMPORAL_TOKEN_FORMAT.format(k) for k in range(num_temporal_tokens)]
                             + [constants.VIDEO_TOKEN])
        self._special_to_id = {token: self.base_vocab_size + i for i, token in enumerate(self.added_tokens)}
        self._strip_ids = (frozenset(self._special_to_id.values()) if added_token_whitespace == "strip"
                           else frozenset())
        for piece_id in (self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id()):
            if piece_id >= 0:
                self._special_to_id[self._sp.id_to_piece(piece_id)] = piece_id
        self._id_to_special = {i: token for token, i in self._special_to_id.items()}

    # Data-loader workers receive the tokenizer by pickling: ship the model bytes, rebuild the processors.
    def __getstate__(self) -> dict:
        return {"model_path": self.model_path, "model_bytes": self._model_bytes,
                "num_temporal_tokens": self.num_temporal_tokens,
                "added_token_whitespace": self.added_token_whitespace}

    def __setstate__(self, state: dict) -> None:
        self.model_path = state["model_path"]
        self._setup(state["model_bytes"], state["num_temporal_tokens"], state["added_token_whitespace"])

    # ---- sizes and ids ----
    @property
    def vocab_size(self) -> int:
        """V = base vocabulary + the 5 added tokens: rows of `embed_tokens` and of the LM head."""
        return self.base_vocab_size + constants.NUM_ADDED_TOKENS

    @property
    def total_size(self) -> int:
        """Every id this tokenizer can produce: V + N temporal tokens + <video>."""
        return self.vocab_size + self.num_temporal_tokens + 1

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def pad_id(self) -> int:
        return 0  # LLaMA has no pad piece; batches pad with 0 and mark padding with segment_ids == 0

    @property
    def special_ids(self) -> dict:
        """{'vid_patch', 'vid_start', 'vid_end', 'temp_input', 'temp_output'} -> id."""
        return constants.special_token_ids(self.vocab_size)

    @property
    def temp_input_id(self) -> int:
        return self._special_to_id[constants.TEMP_INPUT_TOKEN]

    @property
    def temp_output_id(self) -> int:
        return self._special_to_id[constants.TEMP_OUTPUT_TOKEN]

    @property
    def video_token_id(self) -> int:
        return self._special_to_id[constants.VIDEO_TOKEN]

    def temporal_token_id(self, k: int) -> int:
        if not 0 <= k < self.num_temporal_tokens:
            raise ValueError(f"temporal token index {k} outside [0, {self.num_temporal_tokens})")
        return self.vocab_size + k

    def token_to_id(self, token: str) -> int:
        if token in self._special_to_id:
            return self._special_to_id[token]
        piece_id = self._sp.piece_to_id(token)
        if self._sp.id_to_piece(piece_id) != token:
            raise KeyError(f"unknown token {token!r}")
        return piece_id

    def id_to_token(self, token_id: int) -> str:
        if token_id in self._id_to_special:
            return self._id_to_special[token_id]
        if not 0 <= token_id < self.base_vocab_size:
            raise ValueError(f"token id {token_id} outside [0, {self.total_size})")
        return self._sp.id_to_piece(token_id)

    # ---- encode / decode ----
    def encode(self, text: str, add_bos: bool = True, continues_text: bool = False) -> list[int]:
        """Token ids of `text`.

        continues_text: the text continues a stretch of text that was already encoded, right after a
        non-whitespace character (e.g. " a man" after "ASSISTANT:"), so its first stretch gets no dummy prefix.
        """
        ids = [self.bos_id] if add_bos else []
        first = True
        for piece, special_id in self._strip_around_added(list(self._split(text))):
            if special_id is not None:
                ids.append(special_id)
            elif first and continues_text:
                ids.extend(self._sp_no_prefix.encode(piece))
            else:
                ids.extend(self._encode_stretch(piece))
            first = False
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; each run of base ids is decoded by sentencepiece, added tokens are written as-is."""
        out, run = [], []
        for token_id in ids:
            token_id = int(token_id)
            if token_id in self._id_to_special and token_id != self.unk_id:
                if run:
                    out.append(self._sp.decode(run))
                    run = []
                if not skip_special_tokens:
                    out.append(self._id_to_special[token_id])
            elif 0 <= token_id < self.base_vocab_size:
                run.append(token_id)
            else:
                raise ValueError(f"token id {token_id} outside [0, {self.total_size})")
        if run:
            out.append(self._sp.decode(run))
        return "".join(out)

    def _split(self, text: str):
        """Yields (text stretch, None) and (special token, its id) in order; empty stretches are skipped."""
        start = 0
        for match in _ANGLE_SPAN.finditer(text):
            special_id = self._special_to_id.get(match.group())
            if special_id is None:
                continue
            if match.start() > start:
                yield text[start:match.start()], None
            yield match.group(), special_id
            start = match.end()
        if start < len(text):
            yield text[start:], None

    def _strip_around_added(self, parts: list) -> list:
        """added_token_whitespace="strip": the stretches next to an added token lose the whitespace on that side."""
        if not self._strip_ids:
            return parts
        for i, (_, special_id) in enumerate(parts):
            if special_id not in self._strip_ids:
                continue
            if i > 0 and parts[i - 1][1] is None:
                parts[i - 1] = (parts[i - 1][0].rstrip(), None)
            if i + 1 < len(parts) and parts[i + 1][1] is None:
                parts[i + 1] = (parts[i + 1][0].lstrip(), None)
        return [(piece, special_id) for piece, special_id in parts if special_id is not None or piece]

    def _encode_stretch_uncached(self, text: str) -> tuple[int, ...]:
        return tuple(self._sp.encode(text))

    # ---- persistence ----
    def save(self, directory: str | os.PathLike) -> None:
        """Writes tokenizer.model (byte-identical copy) and a JSON of the added tokens into `directory`."""
        directory = os.fspath(directory)
        fileio.makedirs(directory)
        fileio.write_bytes(fileio.join(directory, MODEL_FILENAME), self._model_bytes)
        info = {"base_vocab_size": self.base_vocab_size, "vocab_size": self.vocab_size,
                "num_temporal_tokens": self.num_temporal_tokens, "added_tokens": self.added_tokens}
        fileio.write_text(fileio.join(directory, ADDED_TOKENS_FILENAME), json.dumps(info, indent=1))

    @classmethod
    def load(cls, directory: str | os.PathLike, added_token_whitespace: str = "keep") -> "MomentorTokenizer":
        directory = os.fspath(directory)
        info_path = fileio.join(directory, ADDED_TOKENS_FILENAME)
        try:
            info = json.loads(fileio.read_text(info_path))
            num_temporal_tokens = int(info["num_temporal_tokens"])
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
            raise ValueError(f"{info_path}: not a Momentor added-token file ({e})") from e
        tokenizer = cls(fileio.join(directory, MODEL_FILENAME), num_temporal_tokens, added_token_whitespace)
        if info.get("added_tokens") != tokenizer.added_tokens:
            raise ValueError(f"{info_path}: added tokens differ from this code's layout (constants.ADDED_TOKENS)")
        return tokenizer


def _without_dummy_prefix(model_bytes: bytes) -> bytes:
    proto = sentencepiece_model_pb2.ModelProto.FromString(model_bytes)
    proto.normalizer_spec.add_dummy_prefix = False
    return proto.SerializeToString()


# ---- small models for tests and the demo ----

def train_sentencepiece(texts: Sequence[str], out_prefix: str, vocab_size: int = 300,
                        model_type: str = "bpe") -> str:
    """Trains a LLaMA-like sentencepiece model (unk 0, bos 1, eos 2, no pad, byte fallback, split digits,
    identity normalization, dummy prefix) and returns the path of `<out_prefix>.model`.

    The model has exactly `vocab_size` pieces. 259 of them are <unk>, <s>, </s> and the 256 byte pieces, so only the
    most frequent characters of `texts` become pieces (a third of what is left); the rest of the budget goes to
    merges (a character piece alone saves nothing over its byte piece) and other characters fall back to bytes.
    """
    free = vocab_size - 3 - _BYTE_PIECES
    if free < 2:
        raise ValueError(f"vocab_size must be at least {3 + _BYTE_PIECES + 2} with byte fallback, got {vocab_size}")
    counts = collections.Counter(c for text in texts for c in text if not c.isspace())
    kept = {c for c, _ in counts.most_common(max(1, free // 3))}
    sentences = ["".join(c if c in kept else " " for c in text) for text in texts]
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_prefix=str(out_prefix), vocab_size=vocab_size,
            model_type=model_type, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
            split_digits=True, allow_whitespace_only_pieces=True, character_coverage=1.0, num_threads=1,
            minloglevel=2)
    except RuntimeError as e:
        raise ValueError(f"sentencepiece training for {out_prefix} failed (more or more varied text is needed "
                         f"for {vocab_size} pieces): {e}") from e
    return f"{out_prefix}.model"
