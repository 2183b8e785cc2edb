"""CLIP for the engine: frame features from our Flax vision tower, image-text similarity with CLIP's projections.

`ClipModel(clip_dir)` reads a Hugging Face CLIPModel directory (vision + text towers). The vision tower is ours
(models/vit.py), its weights read exactly as `python -m momentor_jax.convert import_hf --clip` reads them; its
`pooler_output` is the frame feature Momentor itself uses (shot features, track appearance). For scores, the image
embedding is visual_projection(pooled) and the text embedding comes from transformers' CLIPTextModelWithProjection
(torch, loaded lazily); similarity is their cosine, as CLIPModel's logits_per_image / logit_scale.

    pooled(images: [uint8 RGB [H, W, 3]]) -> float32 [N, D]     (CLIP geometry: shorter side, centre crop)
    image_embeds(pooled) -> float32 [N, E], unit norm
    text_embeds(texts) -> float32 [N, E], unit norm
Images go through the tower in fixed batches of `batch_size` (the last one padded), so it compiles once.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from momentor_jax.data import video as video_lib


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


class ClipModel:
    def __init__(self, clip_dir: str, batch_size: int = 16, device: str = "cpu"):
        import jax  # noqa: PLC0415

        from momentor_jax.convert import hf  # noqa: PLC0415
        from momentor_jax.models.vit import VisionTower, clip_normalize  # noqa: PLC0415

        self.directory, self.batch_size, self.device = clip_dir, batch_size, device
        self.config = hf.load_vision_config(clip_dir, dtype="float32", param_dtype="float32", scan_layers=True)
        weights = hf.HFWeights(clip_dir)
        self.params = hf.vision_from_hf(weights, self.config, hf.vision_prefix(weights.keys()))
        if "visual_projection.weight" not in weights:
            raise ValueError(f"{clip_dir}: no visual_projection.weight; the engine needs a full CLIPModel (vision "
                             "and text towers with their projections) for image-text scores")
        self.visual_projection = weights("visual_projection.weight").T.astype(np.float32)  # [D, E]
        tower = VisionTower(self.config)
        self._apply = jax.jit(lambda params, x: tower.apply({"params": params}, clip_normalize(x)))
        self._text = self._tokenizer = None

    def pooled(self, images: list) -> np.ndarray:
        size = self.config.image_size
        if not len(images):
            return np.zeros((0, self.config.hidden_size), np.float32)
        pixels = np.stack([video_lib.clip_geometry(Image.fromarray(np.asarray(im)), size) for im in images])
        out = []
        for i in range(0, len(pixels), self.batch_size):
            batch = pixels[i:i + self.batch_size]
            padded = np.concatenate([batch, np.zeros((self.batch_size - len(batch),) + batch.shape[1:], np.uint8)])
            out.append(np.asarray(self._apply(self.params, padded))[:len(batch)])
        return np.concatenate(out).astype(np.float32)

    def image_embeds(self, pooled: np.ndarray) -> np.ndarray:
        return unit(np.asarray(pooled, np.float32) @ self.visual_projection)

    def text_embeds(self, texts: list) -> np.ndarray:
        import torch  # noqa: PLC0415
        import transformers  # noqa: PLC0415

        if self._text is None:
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(self.directory)
            full = transformers.AutoConfig.from_pretrained(self.directory)
            text_config = getattr(full, "text_config", full)
            text_config.projection_dim = getattr(full, "projection_dim", text_config.projection_dim)
            verbosity = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()  # the vision weights beside the text tower are expected
            try:
                self._text = transformers.CLIPTextModelWithProjection.from_pretrained(
                    self.directory, config=text_config).eval().to(self.device)
            finally:
                transformers.logging.set_verbosity(verbosity)
        if not texts:
            return np.zeros((0, self.visual_projection.shape[1]), np.float32)
        limit = self._text.config.max_position_embeddings
        tokens = self._tokenizer(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        with torch.no_grad():
            embeds = self._text(**{k: v.to(self.device) for k, v in tokens.items()}).text_embeds
        return unit(embeds.float().cpu().numpy())
