"""Momentor in PyTorch the way the public code runs it, on the weights of a `convert export_hf` directory.

transformers `CLIPVisionModel` (pooler_output per frame) -> `mm_projector` (nn.Linear) + frame temporal embeddings
-> spliced per row into the token embeddings (torch.cat around <vid_start> ... <vid_end>, as
MomentorLlamaModel.forward does) -> placeholders replaced by interpolated temporal embeddings -> `LlamaForCausalLM`'s
decoder on inputs_embeds -> per-row logits F.linear(hidden, cat([lm_head, E_out'])) -> cross-entropy against dense
label rows with soft temporal labels. The temporal tables pass through the public `reparam` (W + RW - (RW).detach()).

Two departures from the public code, so that this computes exactly what momentor_jax computes (same loss, same
gradients): the soft labels are written into the label tensor itself (the public code writes them into a copy), and
the loss is the token mean over the batch (the public code sums per-row means). With M != N frames, frame i gets
the temporal embedding interpolated at i / (M - 1) (docs/DESIGN.md, section 1), as in models/tpm.py.

Only the torch / transformers imports of this package live here; import it only where torch is wanted.
"""
from __future__ import annotations

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


def reparam(weight: torch.Tensor, reparam_mat: torch.Tensor) -> torch.Tensor:
    """The public code's neighboring token propagation: identity forward, gradient g + R^T g."""
    spread = reparam_mat.to(weight.dtype) @ weight
    return weight + spread - spread.detach()


def position_transfer(p: torch.Tensor, num_tokens: int):
    """Times p -> (floor index, ceil index, ratio) on the N-token axis (the public function, vectorised, with
    models/tpm.py's snapping so that p = k / (N - 1) lands exactly on token k)."""
    position = p.clamp(0.0, 1.0).float() * (num_tokens - 1)
    nearest = torch.round(position)
    position = torch.where((position - nearest).abs() < SNAP_TOLERANCE, nearest, position)
    floor = torch.floor(position)
    ratio = position - floor
    return (floor.long().clamp(0, num_tokens - 1), torch.ceil(position).long().clamp(0, num_tokens - 1), ratio)


def token_transfer(p: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Interpolated table rows at times p [K] -> [K, D]."""
    floor, ceil, ratio = position_transfer(p, table.shape[0])
    ratio = ratio[:, None]
    return table[floor] * (1.0 - ratio) + table[ceil] * ratio


class TorchMomentor(torch.nn.Module):
    """`llm` (LlamaForCausalLM with the export's V + N rows), `vision` (CLIPVisionModel), `mm_projector`,
    `temporal_input_embeddings` / `temporal_output_embeddings` ([N, D] parameters), `reparam_mat` (buffer)."""

    def __init__(self, export_dir: str, config: MomentorConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        self.vocab_size = config.llm.vocab_size
        self.num_temporal_tokens = config.num_temporal_tokens
        self.special = constants.special_token_ids(self.vocab_size)
        load = dict(dtype=torch.float32, attn_implementation=attn_implementation)
        self.llm = transformers.LlamaForCausalLM.from_pretrained(os.path.join(export_dir, "llm"), **load)
        self.vision = transformers.CLIPVisionModel.from_pretrained(os.path.join(export_dir, "vision"), **load)
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

    def encode_video(self, frames: torch.Tensor, tables) -> torch.Tensor:
        """uint8 frames [B, M, H, W, 3] -> video features [B, M, D] (projector + frame temporal embeddings)."""
        batch_size, num_frames = frames.shape[:2]
        pixels = frames.reshape((-1,) + tuple(frames.shape[2:])).permute(0, 3, 1, 2).float() / 255.0
        pixels = (pixels - self.clip_mean) / self.clip_std
        features = self.vision(pixel_values=pixels).pooler_output.view(batch_size, num_frames, -1)
        temporal_in, temporal_out = tables
        if num_frames == self.num_temporal_tokens:
            frame_temporal = (temporal_in + temporal_out) / 2
        else:
            times = torch.arange(num_frames, dtype=torch.float32) / max(num_frames - 1, 1)
            frame_temporal = (token_transfer(times, temporal_in) + token_transfer(times, temporal_out)) / 2
        return self.mm_projector(features) + frame_temporal

    def embed_inputs(self, input_ids: torch.Tensor, token_times: torch.Tensor, video_features: torch.Tensor,
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
                embeds[placeholders] = token_transfer(token_times[row][placeholders], temporal_in)
            rows.append(embeds)
        return torch.stack(rows, 0)

    def prompt_embeds(self, input_ids, token_times, frames) -> torch.Tensor:
        """inputs_embeds [B, L, D] of a prompt with its video (for `generate`)."""
        tables = self.temporal_tables()
        return self.embed_inputs(input_ids, token_times, self.encode_video(frames, tables), tables)

    def loss(self, batch: dict) -> torch.Tensor:
        """Token-mean loss of a batch of torch tensors (constants.BATCH_KEYS, no padding)."""
        tables = self.temporal_tables()
        inputs_embeds = self.embed_inputs(batch["input_ids"], batch["token_times"],
                                          self.encode_video(batch["frames"], tables), tables)
        hidden = self.llm.model(inputs_embeds=inputs_embeds, use_cache=False).last_hidden_state
        head = torch.cat([self.llm.lm_head.weight[:self.vocab_size], tables[1]], 0)
        width = self.vocab_size + self.num_temporal_tokens
        total = hidden.new_zeros(())
        for row in range(hidden.shape[0]):
            logits = F.linear(hidden[row], head)
            targets, mask = batch["targets"][row], batch["loss_mask"][row]
            temporal = targets == self.special["temp_output"]
            if temporal.any():
                labels = F.one_hot(targets.long(), width).float()
                floor, ceil, ratio = position_transfer(batch["target_times"][row][temporal], self.num_temporal_tokens)
                positions = torch.where(temporal)[0]
                labels[positions] = 0.0
                labels.index_put_((positions, self.vocab_size + floor), 1.0 - ratio, accumulate=True)
                labels.index_put_((positions, self.vocab_size + ceil), ratio, accumulate=True)
                nll = F.cross_entropy(logits, labels, reduction="none")
            else:
                nll = F.cross_entropy(logits, targets.long(), reduction="none")
            total = total + (nll * mask).sum()
        return total / batch["loss_mask"].sum().clamp(min=1.0)


def torch_batch(batch: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
