"""Momentor in PyTorch the way the public code runs it, on the weights of a `convert export_hf` directory: the
reference that tests/test_public_parity.py and the `torch` / `decode` benchmarks compare momentor_jax with.

transformers `CLIPVisionModel` (pooler_output per frame), or cached pooled features as the public trainer reads them
-> `mm_projector` (nn.Linear) + frame temporal embeddings -> spliced per row into the token embeddings (torch.cat
around <vid_start> ... <vid_end>, as MomentorLlamaModel.forward does) -> placeholders replaced by interpolated
temporal embeddings -> `LlamaForCausalLM`'s decoder on inputs_embeds -> per-row logits
F.linear(hidden, cat([lm_head, E_out'])) -> cross-entropy against dense label rows with soft temporal labels. The
temporal tables pass through the public `reparam` (W + RW - (RW).detach()).

By default it computes what momentor_jax computes (same loss, same gradients). The public code's choices where
momentor_jax differs are switches (PUBLIC_OPTIONS and `public_config`, see the README's faithfulness section):
  positions="public"             p (N - 1) floored / ceiled in float64 as its position_transfer, instead of snapping
                                 positions within 1e-4 of a token onto it (models/tpm.py)
  on_token_target="zeros"        (config) the label row gets 1 - r and then r written into it, as the public in-place
                                 writes `labels[[t]][col] = value`: where floor == ceil the second write leaves 0
  text_embedding_grad="video_markers"  (config) the public `orig_embeds_params` detach
  reduction="sum_of_row_means"   the public loss: one token mean per row, summed over the rows
With M != N frames (the public code needs M == N), frame i gets the temporal embedding interpolated at i / (M - 1)
(docs/DESIGN.md, section 1), as in models/tpm.py.

It imports torch and transformers at the top: import it only where torch is wanted.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from safetensors.numpy import load_file

from momentor_jax import constants
from momentor_jax.convert import commands as convert_commands
from momentor_jax.models.config import MomentorConfig
from momentor_jax.models.vit import CLIP_MEAN, CLIP_STD

SNAP_TOLERANCE = 1e-4  # models/tpm.py: positions this close to a token index land on it
POSITIONS = ("snapped", "public")
REDUCTIONS = ("token_mean", "sum_of_row_means")
PUBLIC_OPTIONS = {"positions": "public", "reduction": "sum_of_row_means"}


def public_config(config: MomentorConfig) -> MomentorConfig:
    """`config` with the model switches set to the public code's behaviour."""
    return dataclasses.replace(config, text_embedding_grad="video_markers", on_token_target="zeros")


def reparam(weight: torch.Tensor, reparam_mat: torch.Tensor) -> torch.Tensor:
    """The public code's neighboring token propagation: identity forward, gradient g + R^T g."""
    spread = reparam_mat.to(weight.dtype) @ weight
    return weight + spread - spread.detach()


def position_transfer(p: torch.Tensor, num_tokens: int, positions: str = "snapped"):
    """Times p -> (floor index, ceil index, ratio) on the N-token axis, vectorised. "public": the public function's
    float64 arithmetic; "snapped": models/tpm.py's (float32, snapped onto tokens within SNAP_TOLERANCE)."""
    if positions == "public":
        position = p.double().clamp(0.0, 1.0) * (num_tokens - 1)
    else:
        position = p.clamp(0.0, 1.0).float() * (num_tokens - 1)
        nearest = torch.round(position)
        position = torch.where((position - nearest).abs() < SNAP_TOLERANCE, nearest, position)
    floor = torch.floor(position)
    ratio = position - floor
    return (floor.long().clamp(0, num_tokens - 1), torch.ceil(position).long().clamp(0, num_tokens - 1), ratio)


def token_transfer(p: torch.Tensor, table: torch.Tensor, positions: str = "snapped") -> torch.Tensor:
    """Interpolated table rows at times p [K] -> [K, D] (the public code mixes with a float64 ratio cast to the
    table's dtype)."""
    floor, ceil, ratio = position_transfer(p, table.shape[0], positions)
    ratio = ratio[:, None]
    return table[floor] * (1.0 - ratio).to(table.dtype) + table[ceil] * ratio.to(table.dtype)


def label_rows(targets: torch.Tensor, target_times: torch.Tensor, config: MomentorConfig,
               positions: str = "snapped") -> torch.Tensor:
    """Dense target rows [L, V + N] of one row of targets: one-hot, with soft temporal labels at <TEMP-OUTPUT>."""
    vocab_size, num_tokens = config.llm.vocab_size, config.num_temporal_tokens
    temp_output = constants.special_token_ids(vocab_size)["temp_output"]
    labels = F.one_hot(targets.long(), vocab_size + num_tokens).float()
    rows = torch.where(targets == temp_output)[0]
    floor, ceil, ratio = position_transfer(target_times[rows], num_tokens, positions)
    ratio = ratio.float()
    if config.on_token_target == "zeros":  # the public writes, one after the other, into the row
        labels[rows, temp_output] = 0.0
        labels[rows, vocab_size + floor] = 1.0 - ratio
        labels[rows, vocab_size + ceil] = ratio
    else:
        labels[rows] = 0.0
        labels.index_put_((rows, vocab_size + floor), 1.0 - ratio, accumulate=True)
        labels.index_put_((rows, vocab_size + ceil), ratio, accumulate=True)
    return labels


class TorchMomentor(torch.nn.Module):
    """`llm` (LlamaForCausalLM with the export's V + N rows), `vision` (CLIPVisionModel; None for an export without
    one, fed cached features), `mm_projector`, `temporal_input_embeddings` / `temporal_output_embeddings` ([N, D]
    parameters), `reparam_mat` (buffer). `positions` / `reduction`: see the module docstring."""

    def __init__(self, export_dir: str, config: MomentorConfig, attn_implementation: str = "sdpa",
                 positions: str = "snapped", reduction: str = "token_mean"):
        super().__init__()
        if positions not in POSITIONS or reduction not in REDUCTIONS:
            raise ValueError(f"positions={positions!r} (one of {POSITIONS}), reduction={reduction!r} "
                             f"(one of {REDUCTIONS})")
        self.config, self.positions, self.reduction = config, positions, reduction
        self.vocab_size = config.llm.vocab_size
        self.num_temporal_tokens = config.num_temporal_tokens
        self.special = constants.special_token_ids(self.vocab_size)
        load = dict(dtype=torch.float32, attn_implementation=attn_implementation)
        self.llm = transformers.LlamaForCausalLM.from_pretrained(os.path.join(export_dir, "llm"), **load)
        vision_dir = os.path.join(export_dir, "vision")
        self.vision = (transformers.CLIPVisionModel.from_pretrained(vision_dir, **load)
                       if os.path.isdir(vision_dir) else None)
        extras = {k: torch.from_numpy(np.ascontiguousarray(v))
                  for k, v in load_file(os.path.join(export_dir, convert_commands.EXTRAS_FILE)).items()}
        weight = extras[convert_commands.PROJECTOR_WEIGHT]
        self.mm_projector = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.mm_projector.weight.copy_(weight)
            self.mm_projector.bias.copy_(extras[convert_commands.PROJECTOR_BIAS])
        self.temporal_input_embeddings = torch.nn.Parameter(extras[convert_commands.TEMPORAL_INPUT])
        self.temporal_output_embeddings = torch.nn.Parameter(extras[convert_commands.TEMPORAL_OUTPUT])
        index = torch.arange(self.num_temporal_tokens)
        self.register_buffer("reparam_mat", 2.0 ** (-(index[:, None] - index[None]).abs().float()))
        self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer("clip_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1))

    def temporal_tables(self):
        if not self.config.neighbor_propagation:
            return self.temporal_input_embeddings, self.temporal_output_embeddings
        return (reparam(self.temporal_input_embeddings, self.reparam_mat),
                reparam(self.temporal_output_embeddings, self.reparam_mat))

    def encode_video(self, video: torch.Tensor, tables) -> torch.Tensor:
        """uint8 frames [B, M, H, W, 3] or pooled features [B, M, F] -> video features [B, M, D] (projector + frame
        temporal embeddings)."""
        batch_size, num_frames = video.shape[:2]
        if video.ndim == 3:
            features = video.float()
        else:
            pixels = video.reshape((-1,) + tuple(video.shape[2:])).permute(0, 3, 1, 2).float() / 255.0
            pixels = (pixels - self.clip_mean) / self.clip_std
            features = self.vision(pixel_values=pixels).pooler_output.view(batch_size, num_frames, -1)
        temporal_in, temporal_out = tables
        if num_frames == self.num_temporal_tokens:
            frame_temporal = (temporal_in + temporal_out) / 2
        else:
            times = torch.arange(num_frames, dtype=torch.float32) / max(num_frames - 1, 1)
            frame_temporal = (token_transfer(times, temporal_in) + token_transfer(times, temporal_out)) / 2
        return self.mm_projector(features) + frame_temporal

    def embed_inputs(self, input_ids: torch.Tensor, placeholder_times: torch.Tensor, video_features: torch.Tensor,
                     tables) -> torch.Tensor:
        """Token embeddings with each row's video spliced in after <vid_start> and its placeholders replaced."""
        temporal_in = tables[0]
        table = torch.cat([self.llm.model.embed_tokens.weight[:self.vocab_size], temporal_in], 0)
        inputs_embeds = F.embedding(input_ids, table)
        detach_text = self.config.text_embedding_grad == "video_markers"
        rows = []
        for row, (ids, embeds) in enumerate(zip(input_ids, inputs_embeds)):
            starts = torch.where(ids == self.special["vid_start"])[0]
            if len(starts):
                start, video = int(starts[0]), video_features[row]
                end = start + video.shape[0] + 1
                if ids[end] != self.special["vid_end"]:
                    raise ValueError("The video end token should follow the video start token.")
                if detach_text:  # the public code's orig_embeds_params: only the video markers learn
                    embeds = torch.cat((embeds[:start].detach(), embeds[start:start + 1], video,
                                        embeds[end:end + 1], embeds[end + 1:].detach()), 0)
                else:
                    embeds = torch.cat((embeds[:start + 1], video, embeds[end:]), 0)
            placeholders = (ids == self.special["temp_input"]) | (ids == self.special["temp_output"])
            if placeholders.any():
                embeds = embeds.clone()
                embeds[placeholders] = token_transfer(placeholder_times[row][placeholders], temporal_in, self.positions)
            rows.append(embeds)
        return torch.stack(rows, 0)

    def prompt_embeds(self, input_ids, placeholder_times, frames) -> torch.Tensor:
        """inputs_embeds [B, L, D] of a prompt with its video (for `generate`)."""
        tables = self.temporal_tables()
        return self.embed_inputs(input_ids, placeholder_times, self.encode_video(frames, tables), tables)

    def _video(self, batch: dict) -> torch.Tensor:
        return batch["features"] if self.config.use_cached_features else batch["frames"]

    def logits_and_loss(self, batch: dict):
        """(logits [B, L, V + N], loss) of a batch of torch tensors (constants.BATCH_KEYS, one dialogue per row, right
        padding only)."""
        tables = self.temporal_tables()
        inputs_embeds = self.embed_inputs(batch["input_ids"], batch["placeholder_times"],
                                          self.encode_video(self._video(batch), tables), tables)
        # `attention_mask` [B, L] (optional): the real tokens of right-padded rows, as the public collator passes it.
        hidden = self.llm.model(inputs_embeds=inputs_embeds, attention_mask=batch.get("attention_mask"),
                                use_cache=False).last_hidden_state
        head = torch.cat([self.llm.lm_head.weight[:self.vocab_size], tables[1]], 0)
        all_logits, row_sums = [], []
        for row in range(hidden.shape[0]):
            logits = F.linear(hidden[row], head)
            labels = label_rows(batch["targets"][row], batch["target_times"][row], self.config, self.positions)
            nll = F.cross_entropy(logits, labels, reduction="none")
            mask = batch["loss_mask"][row]
            row_sums.append(((nll * mask).sum(), mask.sum()))
            all_logits.append(logits)
        if self.reduction == "sum_of_row_means":
            loss = sum(total / count.clamp(min=1.0) for total, count in row_sums)
        else:
            loss = sum(total for total, _ in row_sums) / batch["loss_mask"].sum().clamp(min=1.0)
        return torch.stack(all_logits, 0), loss

    def loss(self, batch: dict) -> torch.Tensor:
        return self.logits_and_loss(batch)[1]

    def trainable_gradients(self) -> dict:
        """The gradients of the public code's trainable parameters (projector, temporal tables, the V text rows of
        the token embeddings) as numpy arrays in momentor_jax's parameter tree."""
        def grad(parameter):
            return parameter.grad.numpy().copy()
        return {"projector": {"kernel": grad(self.mm_projector.weight).T, "bias": grad(self.mm_projector.bias)},
                "tpm": {"input_embedding": grad(self.temporal_input_embeddings),
                        "output_embedding": grad(self.temporal_output_embeddings)},
                "llm": {"embed_tokens": {"embedding": grad(self.llm.model.embed_tokens.weight)[:self.vocab_size]}}}


def torch_batch(batch: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
