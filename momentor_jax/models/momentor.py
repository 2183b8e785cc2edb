"""Momentor: CLIP frames -> linear projector (+ frame temporal embeddings) -> spliced into LLaMA -> logits V + N.

Submodules (their names are the parameter tree that `convert/` builds):
    vision     VisionTower (absent from the tree in cached-features mode: it is never called)
    projector  Dense F -> D with bias, kernel axes ('vision_embed', 'embed')
    tpm        TemporalPerception: {'input_embedding', 'output_embedding'} [N, D]
    llm        LlamaModel

Token ids (constants.py): ids < V are text rows of the LLaMA table; <TEMP-INPUT>/<TEMP-OUTPUT> placeholders are
replaced by the interpolated E_in' at `placeholder_times`; an id V + k (a generated temporal token fed back) takes
E_in'[k]; the j-th <vid_patch> of a row takes the j-th projected frame of that row's video. Every shape is fixed, so a
forward jits once per configuration and batch shape.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from momentor_jax import constants
from momentor_jax.models import tpm as tpm_lib
from momentor_jax.models.config import MomentorConfig
from momentor_jax.models.layers import to_dtype, torch_linear_init
from momentor_jax.models.llama import LlamaModel
from momentor_jax.models.vit import VisionTower, clip_normalize

TEXT_EMBEDDING_GRAD_MODES = ("all", "video_markers")


class Momentor(nn.Module):
    config: MomentorConfig

    def setup(self):
        cfg = self.config
        llm_dtype, param_dtype = to_dtype(cfg.llm.dtype), to_dtype(cfg.llm.param_dtype)
        if cfg.num_temporal_tokens < 2:
            raise ValueError(f"MomentorConfig.num_temporal_tokens must be >= 2, got {cfg.num_temporal_tokens}")
        if cfg.text_embedding_grad not in TEXT_EMBEDDING_GRAD_MODES:
            raise ValueError(f"MomentorConfig.text_embedding_grad={cfg.text_embedding_grad!r}; "
                             f"choose one of {TEXT_EMBEDDING_GRAD_MODES}")
        # The tower sees the B * M frames of the batch as one leading axis, sharded like the batch.
        self.vision = VisionTower(cfg.vision, batch_axis="batch")
        self.projector = nn.Dense(
            cfg.llm.hidden_size, use_bias=True, dtype=llm_dtype, param_dtype=param_dtype,
            kernel_init=nn.with_logical_partitioning(torch_linear_init(), ("vision_embed", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))
        if cfg.tpm_enabled:
            self.tpm = tpm_lib.TemporalPerception(
                num_tokens=cfg.num_temporal_tokens, embed_dim=cfg.llm.hidden_size,
                neighbor_propagation=cfg.neighbor_propagation, param_dtype=param_dtype,
                temporal_init=cfg.temporal_init)
        self.llm = LlamaModel(cfg.llm)

    # ----------------------------------------------------------------------------------------------- video
    def encode_video(self, video: jax.Array) -> jax.Array:
        """uint8 frames [B, M, H, W, 3] or pooled features [B, M, F] -> frame embeddings [B, M, D] (LLM dtype).

        Packed rows carry a video axis: frames [B, V, M, H, W, 3] or features [B, V, M, F] -> [B, V * M, D], video
        v's frames at [v * M, (v + 1) * M). Every slot is encoded, empty ones (zeros) too: their cost is the
        tower's forward on V - num_videos videos per row, and no <vid_patch> ever reads them."""
        if video.ndim in (4, 6):
            batch_size, num_videos = video.shape[:2]
            embeds = self.encode_video(video.reshape((batch_size * num_videos,) + video.shape[2:]))
            embeds = embeds.reshape(batch_size, num_videos * embeds.shape[1], embeds.shape[2])
            return nn.with_logical_constraint(embeds, ("batch", None, "embed"))
        cfg = self.config
        if video.ndim == 5:
            batch_size, num_frames = video.shape[:2]
            pixels = clip_normalize(video.reshape((batch_size * num_frames,) + video.shape[2:]))
            features = self.vision(pixels).reshape(batch_size, num_frames, -1)
        elif video.ndim == 3:
            num_frames = video.shape[1]
            features = video
        else:
            raise ValueError(f"encode_video expects frames [B, (V,) M, H, W, 3] or features [B, (V,) M, F], got "
                             f"{video.shape}")
        if features.shape[-1] != cfg.vision_feature_dim:
            raise ValueError(f"video features have width {features.shape[-1]}; "
                             f"the projector expects vision_feature_dim={cfg.vision_feature_dim}")
        features = nn.with_logical_constraint(features, ("batch", None, "vision_embed"))
        embeds = self.projector(features).astype(jnp.float32)
        if cfg.tpm_enabled:
            embeds = embeds + self.tpm.frame_embeddings(num_frames)[None]
        embeds = embeds.astype(to_dtype(cfg.llm.dtype))
        return nn.with_logical_constraint(embeds, ("batch", None, "embed"))

    # ------------------------------------------------------------------------------------------ embeddings
    def _embed(self, input_ids, placeholder_times, temporal_token_times, video_embeds, segment_ids=None):
        """Embeddings [B, L, D] of `input_ids` (see the module docstring).

        placeholder_times: times at <TEMP-INPUT>/<TEMP-OUTPUT> positions (None: none expected).
        temporal_token_times: times for ids V + k (None: exactly E_in'[k]).
        segment_ids: [B, L] of packed rows (None: one dialogue per row); "video_markers" then detaches the text of
        each dialogue that holds a video, as it would its own row.
        """
        cfg = self.config
        vocab_size = cfg.llm.vocab_size
        special = constants.special_token_ids(vocab_size)
        embeds = self.llm.embed(jnp.where(input_ids < vocab_size, input_ids, 0))
        is_patch = input_ids == special["vid_patch"]

        if cfg.text_embedding_grad == "video_markers":
            # The public code detaches the text embeddings of rows holding a video, except <vid_start>/<vid_end>,
            # so of the embedding table only those two rows learn from such rows.
            has_video = jnp.any(is_patch, axis=1, keepdims=True)
            if segment_ids is not None:
                has_video = _segment_has_video(is_patch, segment_ids, has_video)
            keeps_grad = (input_ids == special["vid_start"]) | (input_ids == special["vid_end"]) | ~has_video
            embeds = jnp.where(keeps_grad[..., None], embeds, jax.lax.stop_gradient(embeds))

        if cfg.tpm_enabled:
            num_tokens = cfg.num_temporal_tokens
            is_placeholder = (input_ids == special["temp_input"]) | (input_ids == special["temp_output"])
            is_temporal_id = input_ids >= vocab_size
            token_index = jnp.clip(input_ids - vocab_size, 0, num_tokens - 1)
            # p = k / (N - 1) interpolates to exactly E_in'[k] (tpm.time_to_position snaps onto tokens).
            id_times = tpm_lib.token_to_time(token_index, num_tokens)
            if temporal_token_times is not None:
                id_times = temporal_token_times
            if placeholder_times is None:
                placeholder_times = jnp.zeros(input_ids.shape, jnp.float32)
            times = jnp.where(is_placeholder, placeholder_times, jnp.where(is_temporal_id, id_times, 0.0))
            temporal = self.tpm.embed_times(times).astype(embeds.dtype)
            embeds = jnp.where((is_placeholder | is_temporal_id)[..., None], temporal, embeds)

        if video_embeds is not None:
            num_frames = video_embeds.shape[1]
            slot = jnp.clip(jnp.cumsum(is_patch, axis=1) - 1, 0, num_frames - 1)
            spliced = jnp.take_along_axis(video_embeds, slot[..., None], axis=1).astype(embeds.dtype)
            embeds = jnp.where(is_patch[..., None], spliced, embeds)
        return nn.with_logical_constraint(embeds, ("batch", "length", "embed"))

    def embed_inputs(self, input_ids, placeholder_times=None, video_embeds=None, segment_ids=None) -> jax.Array:
        """Input embeddings [B, L, D]: text rows, temporal placeholders at `placeholder_times`, frames at <vid_patch>
        (the k-th <vid_patch> of a row takes video_embeds[:, k]: with packed rows, the j-th video's M frames)."""
        return self._embed(input_ids, placeholder_times, None, video_embeds, segment_ids)

    def embed_generated(self, token_ids, times=None) -> jax.Array:
        """Embedding of generated tokens [B, T] (id < V, or temporal id V + k) -> [B, T, D].

        `times` [B, T] (optional): refined normalized times; where given, a temporal id is fed back as the
        interpolated E_in' at that time instead of E_in'[k].
        """
        return self._embed(token_ids, None, times, None)

    # ------------------------------------------------------------------------------------------- forward
    def forward_embeds(self, inputs_embeds, positions, segment_ids, cache=None):
        """LLaMA over input embeddings -> (logits [B, L, V + N] float32, new cache or None)."""
        hidden, new_cache = self.llm(inputs_embeds, positions, segment_ids, cache)
        return self.output_logits(hidden), new_cache

    def output_logits(self, hidden) -> jax.Array:
        """[B, L, D] -> [B, L, V + N] float32: LM head columns, then hidden @ E_out'^T (V only without TPM)."""
        text, temporal = self.output_logit_parts(hidden)
        logits = text if temporal is None else jnp.concatenate([text, temporal], axis=-1)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))

    def output_logit_parts(self, hidden):
        """[B, L, D] -> (LM head logits [B, L, V], temporal logits [B, L, N] or None without TPM), float32: what
        `output_logits` concatenates, for a loss that need not (loss.compute_loss_parts)."""
        text = self.llm.logits(hidden)
        return text, (self.tpm.logits(hidden) if self.config.tpm_enabled else None)

    def video_from_batch(self, batch: dict) -> Optional[jax.Array]:
        """The batch's frames (or cached features, per config), or None for a text-only batch."""
        key, other = ("features", "frames") if self.config.use_cached_features else ("frames", "features")
        if key not in batch and other in batch:
            raise ValueError(f"batch carries '{other}' but MomentorConfig.use_cached_features="
                             f"{self.config.use_cached_features} expects '{key}'")
        return batch.get(key)

    def batch_embeds(self, batch: dict) -> jax.Array:
        """batch per constants.BATCH_KEYS -> the LLaMA's input embeddings [B, L, D] (video spliced in)."""
        video = self.video_from_batch(batch)
        video_embeds = None if video is None else self.encode_video(video)
        packed = video is not None and video.ndim in (4, 6)
        return self.embed_inputs(batch["input_ids"], batch.get("placeholder_times"), video_embeds,
                                 batch["segment_ids"] if packed else None)

    def __call__(self, batch: dict, cache=None):
        """batch per constants.BATCH_KEYS -> (logits [B, L, V + N] float32, new cache or None)."""
        return self.forward_embeds(self.batch_embeds(batch), batch["positions"], batch["segment_ids"], cache)

    def hidden_states(self, batch: dict) -> jax.Array:
        """batch -> the LLaMA's final hidden states [B, L, D] (what `output_logits` takes), no cache."""
        return self.llm(self.batch_embeds(batch), batch["positions"], batch["segment_ids"])[0]


def head_positions(loss_mask: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """loss_mask [B, L] -> (indices [B, count] int32: each row's supervised positions in order, then unsupervised ones
    as filler; overflow: scalar bool, True when a row has more than `count` supervised positions)."""
    supervised = loss_mask > 0
    indices = jnp.argsort(~supervised, axis=1, stable=True)[:, :count].astype(jnp.int32)
    return indices, jnp.any(jnp.sum(supervised, axis=1) > count)


def _segment_has_video(is_patch, segment_ids, row_has_video):
    """[B, L] bool: the position's segment holds a <vid_patch>; padding (segment 0) follows its row."""
    batch_size, length = segment_ids.shape
    rows = jnp.arange(batch_size)[:, None]
    per_segment = jnp.zeros((batch_size, length + 1), bool).at[rows, segment_ids].max(is_patch)
    has_video = jnp.take_along_axis(per_segment, segment_ids, axis=1)
    return jnp.where(segment_ids == 0, row_has_video, has_video)


def example_batch(config: MomentorConfig, batch_size: int, seq_len: int, with_video: bool = True,
                  videos_per_row: int = 0) -> dict:
    """All-zero numpy batch with the BATCH_KEYS shapes (for init, eval_shape and AOT compilation).

    videos_per_row > 0: the packed layout (data/packing.py), a video axis of that size plus `num_videos`."""
    batch = {
        "input_ids": np.zeros((batch_size, seq_len), np.int32),
        "targets": np.zeros((batch_size, seq_len), np.int32),
        "loss_mask": np.zeros((batch_size, seq_len), np.float32),
        "segment_ids": np.ones((batch_size, seq_len), np.int32),
        "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len)).copy(),
        "placeholder_times": np.zeros((batch_size, seq_len), np.float32),
        "target_times": np.zeros((batch_size, seq_len), np.float32),
        "durations": np.ones((batch_size,), np.float32),
    }
    if with_video:
        m = config.num_frames
        rows = (batch_size, videos_per_row) if videos_per_row else (batch_size,)
        if config.use_cached_features:
            batch["features"] = np.zeros(rows + (m, config.vision_feature_dim), np.float32)
        else:
            size = config.vision.image_size
            batch["frames"] = np.zeros(rows + (m, size, size, 3), np.uint8)
    if videos_per_row:
        batch["durations"] = np.ones((batch_size, videos_per_row), np.float32)
        batch["num_videos"] = np.zeros((batch_size,), np.int32)
    return batch


def check_batch(batch: dict, config: MomentorConfig, name: str = "batch") -> None:
    """Host-side checks the jitted forward cannot make; raises ValueError naming the field and row.

    Each row holds either no <vid_patch> or exactly M of them; ids lie in [0, V + N) (or [0, V) without TPM);
    placeholder times lie in [0, 1].
    """
    input_ids = np.asarray(batch["input_ids"])
    vocab_size = config.llm.vocab_size
    limit = vocab_size + (config.num_temporal_tokens if config.tpm_enabled else 0)
    bad = np.argwhere((input_ids < 0) | (input_ids >= limit))
    if bad.size:
        row, pos = bad[0]
        raise ValueError(f"{name}: input_ids[{row}, {pos}] = {input_ids[row, pos]} outside [0, {limit})")
    patches = np.sum(input_ids == constants.special_token_ids(vocab_size)["vid_patch"], axis=1)
    if "num_videos" in batch:  # packed rows: M slots per real video
        videos = np.asarray(batch["num_videos"]).reshape(-1)
        for row, (count, num_videos) in enumerate(zip(patches, videos)):
            if count != num_videos * config.num_frames:
                raise ValueError(f"{name}: row {row} has {count} <vid_patch> tokens; expected num_videos "
                                 f"{num_videos} x num_frames {config.num_frames}")
        return _check_times(batch, name)
    for row, count in enumerate(patches):
        if count not in (0, config.num_frames):
            raise ValueError(f"{name}: row {row} has {count} <vid_patch> tokens; expected 0 or "
                             f"num_frames={config.num_frames}")
    _check_times(batch, name)


def _check_times(batch: dict, name: str) -> None:
    for field in ("placeholder_times", "target_times"):
        if field in batch:
            times = np.asarray(batch[field])
            if np.any(~np.isfinite(times)) or np.any((times < 0) | (times > 1)):
                raise ValueError(f"{name}: {field} must be finite normalized times in [0, 1]")
