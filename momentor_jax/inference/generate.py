"""Autoregressive decoding with the KV cache, and answers with times in seconds.

`encode_videos` turns frames (or cached features) into the LLM's frame embeddings [B, M, D]; `generate_from_embeds`
is one jitted program per (model config, batch shape, sampling settings): the right-padded prompts fill a fresh cache
in one prefill call, then a `lax.while_loop` decodes up to `max_new_tokens` tokens (stopping early once every row has
written </s>), with no host round trip per token. `generate_tokens` is the two in one program. Keeping them apart
lets a caller encode a video once and ask it many questions (`Generator.encode` + `Generator.answer_encoded`).

The LLM decodes with its layers unrolled (`decoding_layout`) on every backend. Under nn.scan the loop body slices
each layer's weights out of the stacked arrays at every token: on the CPU a copy of all LLM weights per token, and
on accelerators a layer loop across which the compiler does not prefetch the next layer's weights (MaxText decodes
unscanned checkpoints for this reason; figures in the README's Performance section). The cost is compile time,
which grows with the number of layers. `Generator` converts its params once; `generate_tokens` given stacked params
unstacks them inside the program (one copy per call, before the loop), and with unrolled layers the KV cache is one
buffer per layer (llama.init_cache).

A generated temporal token V + k is turned into a sub-token time p with `tpm.decode_time` on the N temporal
logits (restricted to k and its neighbours, which for greedy decoding is exactly decode_time of all N), and fed
back as the interpolated E_in' at p. `Generator` wraps this for host callers: prompts -> padded batch -> answer
text ("12.3s to 15.0s: ...") plus the times in seconds and the windows the answer states (evaluation/parsing.py,
the parser `evaluate` reads answers with).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from momentor_jax import constants
from momentor_jax.data import conversation
from momentor_jax.data.encode import build_prompt
from momentor_jax.data.tokenizer import MomentorTokenizer
from momentor_jax.models import tpm as tpm_lib
from momentor_jax.models.config import MomentorConfig
from momentor_jax.models.layers import to_dtype
from momentor_jax.models import llama
from momentor_jax.models.momentor import Momentor

PROMPT_BUCKET = 64  # prompts are right-padded to a multiple of this, so similar prompts share one compilation


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature 0: greedy. top_p < 1: nucleus sampling over the smallest set with that much probability.

    Checks itself: max_new_tokens >= 1, temperature a finite number >= 0, top_p in (0, 1] (ValueError naming the
    field)."""
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self):
        if (isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int)
                or self.max_new_tokens < 1):
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not (isinstance(self.temperature, (int, float)) and 0.0 <= self.temperature < float("inf")):
            raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (1: no nucleus cut), got {self.top_p!r}")


def _banned_ids(config: MomentorConfig) -> list[int]:
    """Ids the model must never write: the video span tokens and the temporal placeholders (inputs only)."""
    special = constants.special_token_ids(config.llm.vocab_size)
    return [special[name] for name in ("vid_patch", "vid_start", "vid_end", "temp_input", "temp_output")]


def _pick_tokens(logits, rng, sampling: SamplingConfig):
    """[B, V + N] float32 logits -> [B] int32 token ids."""
    if sampling.temperature <= 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        sorted_logits = jnp.where(mass_before < sampling.top_p, sorted_logits, -jnp.inf)
        choice = jax.random.categorical(rng, sorted_logits, axis=-1)
        return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _refined_times(logits, tokens, vocab_size: int):
    """Sub-token normalized time [B] for a temporal token V + k: decode_time over k and its neighbours."""
    temporal = logits[:, vocab_size:]
    index = jnp.arange(temporal.shape[-1])
    k = jnp.clip(tokens - vocab_size, 0, temporal.shape[-1] - 1)
    near = jnp.abs(index[None, :] - k[:, None]) <= 1
    return tpm_lib.decode_time(jnp.where(near, temporal, -jnp.inf))


def decoding_layout(params: Any, config: MomentorConfig) -> tuple[Any, MomentorConfig]:
    """(params, config) with the LLM's layers unrolled, the layout `generate_tokens` decodes in; the vision tower,
    run once per answer, keeps its layout. Host (numpy) params become views, so convert before placing them on
    devices: converting device arrays holds a second copy of the LLM weights while the stacked ones live."""
    llm_params, llm_config = llama.unrolled(params["llm"], config.llm)
    if llm_config is config.llm:
        return params, config
    return {**params, "llm": llm_params}, dataclasses.replace(config, llm=llm_config)


@functools.partial(jax.jit, static_argnames=("config",))
def encode_videos(params, video, *, config: MomentorConfig):
    """Frames [B, M, H, W, 3] uint8 or features [B, M, F] -> frame embeddings [B, M, D] as the prompt takes them."""
    return Momentor(config).apply({"params": params}, video, method=Momentor.encode_video)


@functools.partial(jax.jit, static_argnames=("config", "sampling", "eos_id"))
def generate_tokens(params, input_ids, placeholder_times, prompt_lengths, video, rng, *, config: MomentorConfig,
                    sampling: SamplingConfig, eos_id: int) -> dict:
    """`encode_videos` then `generate_from_embeds` in one program; video frames [B, M, H, W, 3] or features
    [B, M, F]. See `generate_from_embeds` for the rest."""
    video_embeds = encode_videos(params, video, config=config)
    return generate_from_embeds(params, input_ids, placeholder_times, prompt_lengths, video_embeds, rng, config=config,
                                sampling=sampling, eos_id=eos_id)


@functools.partial(jax.jit, static_argnames=("config", "sampling", "eos_id"))
def generate_from_embeds(params, input_ids, placeholder_times, prompt_lengths, video_embeds, rng, *,
                         config: MomentorConfig, sampling: SamplingConfig, eos_id: int) -> dict:
    """Decode after right-padded prompts.

    input_ids/placeholder_times [B, L] (real tokens first, `prompt_lengths` [B] of them), video_embeds [B, M, D] from
    `encode_videos`; params in the config's layout (decode faster: pass `decoding_layout`'s params and config,
    converted once). Returns {'tokens' [B, T] int32 (after </s>: 0), 'times' [B, T] float32 normalized time of
    each temporal token (0 elsewhere), 'num_tokens' [B] int32 generated tokens up to and including </s>}.
    """
    params, config = decoding_layout(params, config)
    model = Momentor(config)
    variables = {"params": params}
    batch_size, prompt_len = input_ids.shape
    steps = sampling.max_new_tokens
    vocab_size = config.llm.vocab_size
    has_temporal = config.tpm_enabled

    embeds = model.apply(variables, input_ids, placeholder_times, video_embeds, method=Momentor.embed_inputs)
    cache = llama.init_cache(config.llm, batch_size, prompt_len + steps, to_dtype(config.llm.dtype))
    positions = jnp.broadcast_to(jnp.arange(prompt_len, dtype=jnp.int32), (batch_size, prompt_len))
    segment_ids = (positions < prompt_lengths[:, None]).astype(jnp.int32)
    logits, cache = model.apply(variables, embeds, positions, segment_ids, cache, method=Momentor.forward_embeds)
    last = jnp.take_along_axis(logits, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0]
    banned = jnp.zeros((logits.shape[-1],), bool).at[jnp.asarray(_banned_ids(config))].set(True)

    def cond(state):
        step, _, _, done, _, _, _ = state
        return (step < steps) & ~jnp.all(done)

    def body(state):
        step, cache, last, done, rng, tokens, times = state
        rng, step_rng = jax.random.split(rng)
        scores = jnp.where(banned[None, :], -jnp.inf, last)
        token = _pick_tokens(scores, step_rng, sampling)
        is_temporal = token >= vocab_size
        time = _refined_times(scores, token, vocab_size) if has_temporal else jnp.zeros((batch_size,))
        time = jnp.where(is_temporal, time, 0.0)
        tokens = tokens.at[:, step].set(jnp.where(done, 0, token))
        times = times.at[:, step].set(jnp.where(done, 0.0, time))
        done = done | (token == eos_id)
        fed = model.apply(variables, token[:, None], time[:, None], method=Momentor.embed_generated)
        step_logits, cache = model.apply(variables, fed, cache["lengths"][:, None],
                                         jnp.ones((batch_size, 1), jnp.int32), cache,
                                         method=Momentor.forward_embeds)
        return step + 1, cache, step_logits[:, 0], done, rng, tokens, times

    state = (jnp.int32(0), cache, last, jnp.zeros((batch_size,), bool), rng,
             jnp.zeros((batch_size, steps), jnp.int32), jnp.zeros((batch_size, steps), jnp.float32))
    steps_run, _, _, _, _, tokens, times = jax.lax.while_loop(cond, body, state)
    is_eos = tokens == eos_id
    num_tokens = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, steps_run)
    return {"tokens": tokens, "times": times, "num_tokens": num_tokens.astype(jnp.int32)}


# ----------------------------------------------------------------------------------------------- host side
@dataclasses.dataclass
class Answer:
    """One generated answer: text with times in seconds, the times in order, and the windows the text states
    (evaluation/parsing.py: times joined by "to", "-", "~", "between .. and"; loose times are not windows)."""
    text: str
    times: list
    windows: list
    token_ids: list

    @property
    def parsed(self) -> bool:
        """Whether the answer states a window (what evaluate calls parsable)."""
        return bool(self.windows)

    def to_json(self) -> dict:
        return {"answer": self.text, "times": self.times, "windows": [list(w) for w in self.windows],
                "parsed": self.parsed}


def _answer_pieces(token_ids: Sequence[int], tokenizer: MomentorTokenizer, time_text) -> tuple[str, list]:
    """(text, kept ids): text runs decoded, temporal token i written as time_text(i, token_id); stops at </s>."""
    vocab_size = tokenizer.vocab_size
    pieces, run, kept = [], [], []

    def flush():
        if run:
            # The tokenizer gives text after an added token a dummy-prefix space, which decode strips again.
            pieces.append(tokenizer.decode(run, skip_special_tokens=True))
            run.clear()

    for index, token_id in enumerate(token_ids):
        token_id = int(token_id)
        if token_id == tokenizer.eos_id:
            break
        kept.append(token_id)
        if token_id >= vocab_size:
            flush()
            if pieces and pieces[-1][-1:].isalnum():  # "from12.0s" when the model skipped the space
                pieces.append(" ")
            pieces.append(time_text(index))
        else:
            run.append(token_id)
    flush()
    return "".join(pieces).strip(), kept


def render_answer(token_ids: Sequence[int], times: Sequence[float], duration: float,
                  tokenizer: MomentorTokenizer) -> Answer:
    """Token ids (up to </s>) and normalized times -> Answer with each temporal token written as "12.3s"."""
    from momentor_jax.evaluation import parsing  # noqa: PLC0415 (keeps the decoding module free of evaluation)

    seconds = []

    def time_text(index: int) -> str:
        value = round(float(np.clip(times[index], 0.0, 1.0)) * duration, 1)
        seconds.append(value)
        return f"{value:.1f}s"

    text, kept = _answer_pieces(token_ids, tokenizer, time_text)
    return Answer(text=text, times=seconds, windows=parsing.parse_windows(text, duration), token_ids=kept)


def history_reply(answer: Answer, tokenizer: MomentorTokenizer) -> tuple[str, list]:
    """An earlier answer as a dialogue's assistant turn: (text with <TEMP-OUTPUT> where the model wrote a temporal
    token, those times in seconds), the form training dialogues give replies in (build_prompt's
    temporal_output_times). An answer with times as plain text comes back as its text and no times."""
    text, _ = _answer_pieces(answer.token_ids, tokenizer, lambda index: constants.TEMP_OUTPUT_TOKEN)
    return text, list(answer.times)


def _bucket(length: int, bucket: int = PROMPT_BUCKET) -> int:
    return -(-length // bucket) * bucket


def question_prompt(question: str, tokenizer: MomentorTokenizer, num_frames: int,
                    system_prompt: str = conversation.SYSTEM_PROMPT, duration: float = 1.0,
                    input_times: Sequence[float] = ()) -> dict:
    """{'input_ids', 'placeholder_times'} of the generation prompt for one question about one video."""
    return build_prompt([{"User": question, "Assistant": None}], tokenizer, num_frames, for_generation=True,
                        duration=duration, temporal_input_times=input_times, system_prompt=system_prompt)


def max_prompt_length(config: MomentorConfig, sampling: SamplingConfig) -> int:
    """The longest prompt (tokens) that leaves room for `max_new_tokens` in the model's positions."""
    return config.llm.max_position_embeddings - sampling.max_new_tokens


class Generator:
    """Answers questions about videos with a loaded model (params, config, tokenizer).

    encode(videos) -> frame embeddings, once per video; answer_encoded(questions, embeddings[rows], durations) ->
    answers, in fixed-shape batches; answer(questions, videos, durations) is the two together; answer_prompts takes
    prompts built by the caller (a multi-turn dialogue, whose earlier replies `history_reply` writes).
    """

    def __init__(self, params: Any, config: MomentorConfig, tokenizer: MomentorTokenizer,
                 system_prompt: str = conversation.SYSTEM_PROMPT, sampling: SamplingConfig = SamplingConfig(),
                 seed: int = 0):
        if tokenizer.vocab_size != config.llm.vocab_size or tokenizer.num_temporal_tokens != config.num_temporal_tokens:
            raise ValueError(f"tokenizer (V={tokenizer.vocab_size}, N={tokenizer.num_temporal_tokens}) does not match "
                             f"the model (V={config.llm.vocab_size}, N={config.num_temporal_tokens})")
        self.params, self.config = decoding_layout(params, config)
        self.tokenizer = tokenizer
        self.system_prompt, self.sampling = system_prompt, sampling
        self._rng = jax.random.PRNGKey(seed)

    def prompt(self, question: str, duration: float, input_times: Sequence[float] = ()) -> dict:
        return question_prompt(question, self.tokenizer, self.config.num_frames, self.system_prompt, duration,
                               input_times)

    def encode(self, videos: np.ndarray) -> jax.Array:
        """Frames [B, M, H, W, 3] uint8 (or cached features [B, M, F]) -> frame embeddings [B, M, D] on device."""
        return encode_videos(self.params, np.asarray(videos), config=self.config)

    def answer(self, questions: Sequence[str], videos: np.ndarray, durations: Sequence[float],
               input_times: Optional[Sequence[Sequence[float]]] = None, batch_size: Optional[int] = None
               ) -> list[Answer]:
        """One answer per question; videos [B, M, ...] (frames or cached features, one per question); durations in
        seconds. batch_size: pad the batch to this many rows (fixed shapes across calls); default len(questions)."""
        return self.answer_encoded(questions, self.encode(videos), durations, input_times, batch_size)

    def answer_encoded(self, questions: Sequence[str], video_embeds, durations: Sequence[float],
                       input_times: Optional[Sequence[Sequence[float]]] = None, batch_size: Optional[int] = None
                       ) -> list[Answer]:
        """As `answer`, with the videos already encoded: video_embeds [B, M, D], one row per question."""
        if len(durations) != len(questions):
            raise ValueError(f"{len(questions)} questions and {len(durations)} durations")
        input_times = input_times or [()] * len(questions)
        prompts = [self.prompt(q, float(d), t) for q, d, t in zip(questions, durations, input_times)]
        return self.answer_prompts(prompts, video_embeds, durations, batch_size)

    def answer_prompts(self, prompts: Sequence[dict], video_embeds, durations: Sequence[float],
                       batch_size: Optional[int] = None) -> list[Answer]:
        """As `answer_encoded`, for prompts already built ({'input_ids', 'placeholder_times'}, e.g. a whole dialogue by
        encode.build_prompt(..., for_generation=True))."""
        count = len(prompts)
        if count == 0:
            return []
        batch_size = batch_size or count
        if count > batch_size:
            raise ValueError(f"{count} questions for a batch of {batch_size}")
        if len(video_embeds) != count or len(durations) != count:
            raise ValueError(f"{count} questions, {len(video_embeds)} videos and {len(durations)} durations")
        lengths = np.array([len(p["input_ids"]) for p in prompts] + [1] * (batch_size - count), np.int32)
        max_positions = self.config.llm.max_position_embeddings
        width = _bucket(int(lengths.max()))
        if width + self.sampling.max_new_tokens > max_positions:
            width = int(lengths.max())
        if width > max_prompt_length(self.config, self.sampling):
            raise ValueError(f"prompt of {width} tokens + max_new_tokens {self.sampling.max_new_tokens} exceeds "
                             f"max_position_embeddings {max_positions}")
        input_ids = np.zeros((batch_size, width), np.int32)
        placeholder_times = np.zeros((batch_size, width), np.float32)
        input_ids[:, 0] = self.tokenizer.bos_id
        for row, p in enumerate(prompts):
            input_ids[row, :len(p["input_ids"])] = p["input_ids"]
            placeholder_times[row, :len(p["placeholder_times"])] = p["placeholder_times"]
        if count < batch_size:  # padding rows repeat the last video; their answers are dropped
            video_embeds = jnp.concatenate([video_embeds, jnp.repeat(video_embeds[-1:], batch_size - count, 0)])
        self._rng, rng = jax.random.split(self._rng)
        out = generate_from_embeds(self.params, input_ids, placeholder_times, lengths, video_embeds, rng,
                                   config=self.config, sampling=self.sampling, eos_id=self.tokenizer.eos_id)
        tokens, times = np.asarray(out["tokens"]), np.asarray(out["times"])
        return [render_answer(tokens[i], times[i], float(durations[i]), self.tokenizer) for i in range(count)]
