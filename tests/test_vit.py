"""Flax CLIP vision tower vs Hugging Face CLIPVisionModel (pooler_output) in fp32."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

import hf_tiny_models as tiny  # noqa: E402
import torch  # noqa: E402
from momentor_jax.convert import hf  # noqa: E402
from momentor_jax.models.vit import CLIP_MEAN, CLIP_STD, VisionTower, clip_normalize  # noqa: E402


def _pooled(cfg, params, pixels):
    return np.asarray(jax.jit(lambda p, x: VisionTower(cfg).apply({"params": p}, x))(params, jnp.asarray(pixels)))


@pytest.mark.parametrize("scan_layers,remat_policy", [(True, "none"), (False, "nothing_saveable")])
def test_pooler_output_matches_hf(scan_layers, remat_policy):
    model = tiny.tiny_clip_vision()
    cfg = hf.vision_config_from_hf(model.config, dtype="float32", scan_layers=scan_layers, remat_policy=remat_policy)
    weights = tiny.state_dict_numpy(model)
    params = hf.vision_from_hf(weights.__getitem__, cfg, prefix=hf.vision_prefix(weights.keys()))
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    pixels = np.asarray(clip_normalize(frames))
    np.testing.assert_allclose(_pooled(cfg, params, pixels), tiny.hf_pooled(model, pixels), atol=1e-4, rtol=0)


def test_clip_normalize_statistics():
    frames = np.array([[[[0, 128, 255]]]], np.uint8)
    expected = (np.array([0, 128, 255]) / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(np.asarray(clip_normalize(frames))[0, 0, 0], expected, rtol=1e-6)


def test_wrong_image_size_is_rejected():
    cfg = dataclasses.replace(hf.vision_config_from_hf(tiny.tiny_clip_vision().config), dtype="float32")
    with pytest.raises(ValueError, match="pixel_values"):
        VisionTower(cfg).init(jax.random.key(0), jnp.zeros((1, 40, 40, 3)))


def test_new_tower_starts_like_hf_clip():
    """A fresh VisionTower draws every parameter at the scale a fresh HF CLIPVisionModel does (from-scratch runs)."""
    torch.manual_seed(0)
    hf_config = transformers.CLIPVisionConfig(image_size=64, patch_size=16, hidden_size=128, intermediate_size=512,
                                              num_hidden_layers=2, num_attention_heads=4)
    weights = tiny.state_dict_numpy(transformers.CLIPVisionModel(hf_config))
    cfg = dataclasses.replace(hf.vision_config_from_hf(hf_config), dtype="float32")
    hf_params = hf.vision_from_hf(weights.__getitem__, cfg, prefix=hf.vision_prefix(weights.keys()))
    ours = nn.meta.unbox(VisionTower(cfg).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"])
    hf_flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(hf_params)}
    for path, value in jax.tree_util.tree_leaves_with_path(ours):
        name, value = jax.tree_util.keystr(path), np.asarray(value)
        expected = np.asarray(hf_flat[name])
        assert value.shape == expected.shape, name
        np.testing.assert_allclose(value.mean(), expected.mean(), atol=0.02, err_msg=name)
        np.testing.assert_allclose(value.std(), expected.std(), rtol=0.15, atol=1e-6, err_msg=name)
