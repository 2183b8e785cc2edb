"""Model hyper-parameters as frozen dataclasses (hashable, so modules and jitted functions can close over them).

`configs/*.py` hold ml_collections configs with a `model` section; `MomentorConfig.from_dict` turns it into these.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """CLIP vision tower (Hugging Face `CLIPVisionModel`). Defaults: ViT-L/14 at 224 px."""
    image_size: int = 224
    patch_size: int = 14
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    layer_norm_eps: float = 1e-5
    dtype: str = "bfloat16"        # compute dtype
    param_dtype: str = "float32"
    remat_policy: str = "none"     # frozen tower: nothing to save for backward
    scan_layers: bool = True


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """LLaMA decoder (Hugging Face `LlamaForCausalLM`). Defaults: LLaMA-7B plus Momentor's 5 added tokens."""
    vocab_size: int = 32005        # V: sentencepiece vocabulary + constants.ADDED_TOKENS
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: Optional[int] = None  # None: hidden_size // num_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    remat_policy: str = "nothing_saveable"  # see models/llama.py for the accepted names
    scan_layers: bool = True
    attention: str = "xla"         # jax.nn.dot_product_attention implementation ("xla", "cudnn") or "splash" on TPU
    # > 0: forwards without a KV cache (training, scoring) run the "xla" attention one block of this many queries at
    # a time, each block against the keys up to its last query only, so the masked upper triangle of the score
    # matrix is never computed (models/llama.py, blocked_causal_attention). 0: one [L, L] score matrix per head.
    attention_block: int = 0

    def __post_init__(self):
        block = self.attention_block
        if isinstance(block, bool) or not isinstance(block, int) or block < 0:
            raise ValueError(f"LlamaConfig.attention_block={self.attention_block!r}; expected an int >= 0 (0: off)")
        if self.attention_block and self.attention != "xla":
            raise ValueError(f"LlamaConfig.attention_block={self.attention_block} blocks the 'xla' attention only; "
                             f"attention={self.attention!r} (use attention_block=0)")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


# Fields of MomentorConfig that take one of a few names (the first is the default).
CHOICES = {
    "temporal_init": ("torch_default", "public"),
    "on_token_target": ("one", "zeros"),
    "added_token_whitespace": ("keep", "strip"),
}


@dataclasses.dataclass(frozen=True)
class MomentorConfig:
    vision: VisionConfig = VisionConfig()
    llm: LlamaConfig = LlamaConfig()
    num_frames: int = 300            # M frames per video, sampled uniformly including both ends
    num_temporal_tokens: int = 300   # N temporal tokens <TEMP-000>..<TEMP-(N-1)>
    tpm_enabled: bool = True         # False: ablation with times as plain text, no temporal tables
    neighbor_propagation: bool = True  # NTP: W' = W + RW - stop_gradient(RW), R_ij = 2^-|i-j|
    use_cached_features: bool = False  # batches carry pooled ViT features instead of frames
    # Which text-embedding positions pass gradient to the LLaMA token table: "all", or "video_markers" as in the
    # public code (rows holding a video pass gradient only through <vid_start>/<vid_end>).
    text_embedding_grad: str = "all"
    # New temporal tables (models/tpm.py): "torch_default" E_in ~ N(0, 1), E_out ~ U(+-1/sqrt(D)) (torch's
    # nn.Embedding / nn.Linear defaults), or "public" N(0, 0.02) for both (the public trainer's _init_weights).
    temporal_init: str = "torch_default"
    # Target row where a <TEMP-OUTPUT> time falls exactly on a token (floor == ceil): "one" (1 on that token), or
    # "zeros" (the public code's all-zero row: the position counts in the token mean but teaches nothing).
    on_token_target: str = "one"
    # Whitespace next to added tokens when tokenizing (data/tokenizer.py): "keep" (transformers >= 4.34), or
    # "strip" (the public pin, transformers 4.33, strips it on both sides of every added token).
    added_token_whitespace: str = "keep"
    # Training only: 0 runs the LM head and the loss at every position; K > 0 at each row's supervised positions
    # (loss_mask > 0), gathered into K slots per row, so the head's matmuls and the cross-entropy over V + N columns
    # skip the prompt and video positions that no loss reads. The loss and gradients are the same (summation order
    # aside); a batch with a row of more than K supervised tokens takes the every-position path (lax.cond).
    loss_positions: int = 0

    def __post_init__(self):
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"MomentorConfig.{name}={getattr(self, name)!r}; choose one of {choices}")
        if isinstance(self.loss_positions, bool) or not isinstance(self.loss_positions, int) \
                or self.loss_positions < 0:
            raise ValueError(f"MomentorConfig.loss_positions={self.loss_positions!r}; expected an int >= 0 (0: every "
                             "position)")

    @property
    def vision_feature_dim(self) -> int:
        return self.vision.hidden_size

    @classmethod
    def from_dict(cls, d: Any) -> "MomentorConfig":
        d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
        vision = VisionConfig(**dict(d.pop("vision", {})))
        llm = LlamaConfig(**dict(d.pop("llm", {})))
        return cls(vision=vision, llm=llm, **d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def momentor_7b() -> MomentorConfig:
    """The paper's model: CLIP ViT-L/14 224 px, LLaMA-7B, 300 frames, 300 temporal tokens."""
    return MomentorConfig()


def tiny(**overrides) -> MomentorConfig:
    """A few-thousand-parameter model for tests (fp32 so numerics can be compared exactly)."""
    vision = VisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=2,
                          num_heads=4, dtype="float32")
    llm = LlamaConfig(vocab_size=300 + 5, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2, max_position_embeddings=256, dtype="float32", remat_policy="none")
    cfg = MomentorConfig(vision=vision, llm=llm, num_frames=8, num_temporal_tokens=16)
    return dataclasses.replace(cfg, **overrides)
