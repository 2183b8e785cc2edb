"""Hugging Face <-> momentor_jax: reading/writing HF weight files and mapping LLaMA / CLIP-vision parameters.

torch, transformers and safetensors are imported inside the functions that need them, so importing this module
stays light. Mapped weights are float32 numpy arrays; every mapping is an exact
transpose/reshape, so to_hf(from_hf(w)) == w bitwise.
"""
from __future__ import annotations

import glob
import math
import os
from typing import Callable

import numpy as np
import tqdm

from momentor_jax.models.config import LlamaConfig, VisionConfig

Getter = Callable[[str], np.ndarray]


# ------------------------------------------------------------------------------------------------ weight files
def _to_numpy(tensor) -> np.ndarray:
    import torch  # noqa: PLC0415

    if tensor.is_floating_point():
        return tensor.detach().to(torch.float32).cpu().numpy()
    return tensor.detach().cpu().numpy()


def _torch_state(path: str) -> dict:
    """A torch checkpoint's state dict, memory-mapped (tensors are read when used); never unpickles objects."""
    import torch  # noqa: PLC0415

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return {key: value for key, value in state.items() if hasattr(value, "is_floating_point")}


def read_tensor_file(path: str) -> dict:
    """All tensors of one .safetensors or torch (.bin/.pt, loaded with weights_only=True) file as numpy."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open  # noqa: PLC0415

        with safe_open(path, framework="pt") as f:
            return {key: _to_numpy(f.get_tensor(key)) for key in f.keys()}
    return {key: _to_numpy(value) for key, value in _torch_state(path).items()}


class HFWeights:
    """Lazy, float32 numpy access to the weights of a HF model directory (*.safetensors, else *.bin shards)."""

    def __init__(self, directory: str):
        self.directory = directory
        self._file_of: dict[str, str] = {}
        self._torch_states: dict[str, dict] = {}
        files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
        if files:
            from safetensors import safe_open  # noqa: PLC0415

            for path in files:
                with safe_open(path, framework="pt") as f:
                    self._file_of.update({key: path for key in f.keys()})
        else:
            files = sorted(glob.glob(os.path.join(directory, "*.bin")))
            for path in files:
                self._torch_states[path] = _torch_state(path)
                self._file_of.update({key: path for key in self._torch_states[path]})
        if not files:
            raise FileNotFoundError(f"{directory}: no *.safetensors or *.bin weight files")

    def keys(self):
        return self._file_of.keys()

    def __contains__(self, key: str) -> bool:
        return key in self._file_of

    def __call__(self, key: str) -> np.ndarray:
        if key not in self._file_of:
            raise KeyError(f"{self.directory}: no weight named {key!r}")
        path = self._file_of[key]
        if path in self._torch_states:
            return _to_numpy(self._torch_states[path][key])
        from safetensors import safe_open  # noqa: PLC0415

        with safe_open(path, framework="pt") as f:
            return _to_numpy(f.get_tensor(key))


def write_safetensors(path: str, tensors: dict) -> None:
    from safetensors.numpy import save_file  # noqa: PLC0415

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata={"format": "pt"})


# ------------------------------------------------------------------------------------------- generic mapping
# An entry maps one HF tensor to one leaf of a per-layer flax tree:
#   (hf_name, flax_path, kind, flax_shape, n_in)
# kind 'kernel': torch Linear weight [prod(out), prod(in)] <-> flax kernel in_shape + out_shape (first n_in axes).
# kind 'vector': any tensor <-> the same values reshaped to flax_shape.
def _convert_in(get: Getter, entries, prefix: str) -> dict:
    tree: dict = {}
    for hf_name, path, kind, shape, n_in in entries:
        value = get(prefix + hf_name)
        if kind == "kernel":
            expected = (math.prod(shape[n_in:]), math.prod(shape[:n_in]))
            if value.shape != expected:
                raise ValueError(f"HF weight {prefix + hf_name}: shape {value.shape}, expected {expected}")
            leaf = np.ascontiguousarray(value.T).reshape(shape)
        else:
            if value.size != math.prod(shape):
                raise ValueError(f"HF weight {prefix + hf_name}: shape {value.shape}, expected {shape}")
            leaf = value.reshape(shape)
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return tree


def _convert_out(tree: dict, entries, prefix: str) -> dict:
    out = {}
    for hf_name, path, kind, shape, n_in in entries:
        leaf = tree
        for key in path:
            leaf = leaf[key]
        leaf = np.asarray(leaf)
        if kind == "kernel":
            out[prefix + hf_name] = np.ascontiguousarray(leaf.reshape(math.prod(shape[:n_in]), -1).T)
        else:
            out[prefix + hf_name] = leaf.reshape(-1)
    return out


def _layers_in(get: Getter, entries, prefix_of_layer: Callable[[int], str], num_layers: int, scan: bool) -> dict:
    """Per-layer trees as layers_0, layers_1, ... or, when `scan`, stacked on a leading axis (filled in place)."""
    import jax  # noqa: PLC0415

    layers = {}
    for i in tqdm.trange(num_layers, desc="layers", disable=num_layers < 8):
        tree = _convert_in(get, entries, prefix_of_layer(i))
        if not scan:
            layers[f"layers_{i}"] = tree
            continue
        if not layers:
            layers["layers"] = jax.tree.map(lambda a: np.empty((num_layers,) + a.shape, a.dtype), tree)
        jax.tree.map(lambda buffer, a: buffer.__setitem__(i, a), layers["layers"], tree)
    return layers


def _layers_out(params: dict, entries, prefix_of_layer, num_layers: int, scan: bool) -> dict:
    import jax  # noqa: PLC0415

    out = {}
    for i in tqdm.trange(num_layers, desc="layers", disable=num_layers < 8):
        tree = jax.tree.map(lambda a: np.asarray(a)[i], params["layers"]) if scan else params[f"layers_{i}"]
        out.update(_convert_out(tree, entries, prefix_of_layer(i)))
    return out


# ------------------------------------------------------------------------------------------------------ LLaMA
def _llama_layer_entries(cfg: LlamaConfig) -> list:
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.resolved_head_dim
    h, kv = cfg.num_heads, cfg.num_kv_heads
    return [
        ("input_layernorm.weight", ("input_layernorm", "scale"), "vector", (d,), 0),
        ("self_attn.q_proj.weight", ("self_attn", "q_proj", "kernel"), "kernel", (d, h, hd), 1),
        ("self_attn.k_proj.weight", ("self_attn", "k_proj", "kernel"), "kernel", (d, kv, hd), 1),
        ("self_attn.v_proj.weight", ("self_attn", "v_proj", "kernel"), "kernel", (d, kv, hd), 1),
        ("self_attn.o_proj.weight", ("self_attn", "o_proj", "kernel"), "kernel", (h, hd, d), 2),
        ("post_attention_layernorm.weight", ("post_attention_layernorm", "scale"), "vector", (d,), 0),
        ("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), "kernel", (d, f), 1),
        ("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), "kernel", (d, f), 1),
        ("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), "kernel", (f, d), 1),
    ]


def llama_prefix(get_keys) -> str:
    """'model.' for LlamaForCausalLM-style checkpoints, '' for bare LlamaModel ones."""
    return "model." if "model.embed_tokens.weight" in get_keys else ""


def llama_from_hf(get: Getter, cfg: LlamaConfig, prefix: str = "model.") -> dict:
    """LlamaModel params from HF tensors. The vocabulary is left as stored: embed_tokens/embedding [V_hf, D] and
    lm_head/kernel [D, V_hf] (absent when cfg.tie_word_embeddings); the caller reconciles V_hf with cfg.vocab_size."""
    params = _layers_in(get, _llama_layer_entries(cfg), lambda i: f"{prefix}layers.{i}.", cfg.num_layers,
                        cfg.scan_layers)
    embedding = get(prefix + "embed_tokens.weight")
    if embedding.ndim != 2 or embedding.shape[1] != cfg.hidden_size:
        raise ValueError(f"HF weight {prefix}embed_tokens.weight: shape {embedding.shape}, expected [V, "
                         f"{cfg.hidden_size}]")
    params["embed_tokens"] = {"embedding": embedding}
    params["norm"] = {"scale": get(prefix + "norm.weight").reshape(cfg.hidden_size)}
    if not cfg.tie_word_embeddings:
        head = get("lm_head.weight")
        if head.shape != embedding.shape:
            raise ValueError(f"HF weight lm_head.weight: shape {head.shape}, expected {embedding.shape}")
        params["lm_head"] = {"kernel": np.ascontiguousarray(head.T)}
    return params


def llama_to_hf(params: dict, cfg: LlamaConfig) -> dict:
    """HF `LlamaForCausalLM` state dict (numpy) of LlamaModel params; no lm_head.weight when tied."""
    d = cfg.hidden_size
    out = _layers_out(params, _llama_layer_entries(cfg), lambda i: f"model.layers.{i}.", cfg.num_layers,
                      cfg.scan_layers)
    out["model.embed_tokens.weight"] = np.asarray(params["embed_tokens"]["embedding"])
    out["model.norm.weight"] = np.asarray(params["norm"]["scale"]).reshape(d)
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = np.ascontiguousarray(np.asarray(params["lm_head"]["kernel"]).T)
    return out


def llama_config_from_hf(hf_config, vocab_size: int, **overrides) -> LlamaConfig:
    """Our LlamaConfig from a `transformers.LlamaConfig`; raises on features the Flax decoder does not have."""
    rope = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    legacy_scaling = getattr(hf_config, "rope_scaling", None)
    if rope_type != "default" or (legacy_scaling and legacy_scaling.get("rope_type", "default") != "default"):
        raise ValueError(f"HF LLaMA config: rope scaling {rope or legacy_scaling} is not supported")
    for name, wanted in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        value = getattr(hf_config, name, wanted)
        if value != wanted:
            raise ValueError(f"HF LLaMA config: {name}={value!r} is not supported (expected {wanted!r})")
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None)
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=hf_config.hidden_size,
        intermediate_size=hf_config.intermediate_size,
        num_layers=hf_config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
        head_dim=None if head_dim in (None, hf_config.hidden_size // heads) else head_dim,
        rms_norm_eps=hf_config.rms_norm_eps,
        rope_theta=float(rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))),
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        max_position_embeddings=hf_config.max_position_embeddings,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def llama_config_to_hf(cfg: LlamaConfig, vocab_size: int, tie_word_embeddings: bool, **extra):
    """A `transformers.LlamaConfig` for our config with `vocab_size` rows; `extra` become additional JSON keys."""
    import transformers  # noqa: PLC0415

    return transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.resolved_head_dim, rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=tie_word_embeddings,
        hidden_act="silu", attention_bias=False, mlp_bias=False, architectures=["LlamaForCausalLM"],
        dtype="float32", **extra)


# ---------------------------------------------------------------------------------------------- CLIP vision
VISION_PREFIX = "vision_model."  # CLIPModel checkpoints and CLIPVisionModel ones before transformers 5


def vision_prefix(keys) -> str:
    """'vision_model.' (CLIPModel, or CLIPVisionModel saved by transformers < 5) or '' (transformers >= 5)."""
    if VISION_PREFIX + "embeddings.class_embedding" in keys:
        return VISION_PREFIX
    if "embeddings.class_embedding" in keys:
        return ""
    raise KeyError("no CLIP vision weights (vision_model.embeddings.class_embedding or embeddings.class_embedding)")


def _vision_layer_entries(cfg: VisionConfig) -> list:
    d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads
    hd = d // h
    entries = []
    for norm in ("layer_norm1", "layer_norm2"):
        entries += [(f"{norm}.weight", (norm, "scale"), "vector", (d,), 0),
                    (f"{norm}.bias", (norm, "bias"), "vector", (d,), 0)]
    for proj in ("q_proj", "k_proj", "v_proj"):
        entries += [(f"self_attn.{proj}.weight", ("self_attn", proj, "kernel"), "kernel", (d, h, hd), 1),
                    (f"self_attn.{proj}.bias", ("self_attn", proj, "bias"), "vector", (h, hd), 0)]
    entries += [
        ("self_attn.out_proj.weight", ("self_attn", "out_proj", "kernel"), "kernel", (h, hd, d), 2),
        ("self_attn.out_proj.bias", ("self_attn", "out_proj", "bias"), "vector", (d,), 0),
        ("mlp.fc1.weight", ("mlp", "fc1", "kernel"), "kernel", (d, f), 1),
        ("mlp.fc1.bias", ("mlp", "fc1", "bias"), "vector", (f,), 0),
        ("mlp.fc2.weight", ("mlp", "fc2", "kernel"), "kernel", (f, d), 1),
        ("mlp.fc2.bias", ("mlp", "fc2", "bias"), "vector", (d,), 0),
    ]
    return entries


def vision_from_hf(get: Getter, cfg: VisionConfig, prefix: str = VISION_PREFIX) -> dict:
    """VisionTower params from the `vision_model.*` tensors of a CLIPVisionModel or CLIPModel checkpoint."""
    d, p = cfg.hidden_size, cfg.patch_size
    grid = cfg.image_size // p
    params = _layers_in(get, _vision_layer_entries(cfg), lambda i: f"{prefix}encoder.layers.{i}.", cfg.num_layers,
                        cfg.scan_layers)
    patch = get(prefix + "embeddings.patch_embedding.weight")
    if patch.shape != (d, 3, p, p):
        raise ValueError(f"HF weight {prefix}embeddings.patch_embedding.weight: shape {patch.shape}, "
                         f"expected {(d, 3, p, p)}")
    params["patch_embedding"] = {"kernel": np.ascontiguousarray(patch.transpose(2, 3, 1, 0))}
    params["class_embedding"] = get(prefix + "embeddings.class_embedding").reshape(d)
    position = get(prefix + "embeddings.position_embedding.weight")
    if position.shape != (grid * grid + 1, d):
        raise ValueError(f"HF weight {prefix}embeddings.position_embedding.weight: shape {position.shape}, "
                         f"expected {(grid * grid + 1, d)}")
    params["position_embedding"] = position
    for norm in ("pre_layrnorm", "post_layernorm"):
        params[norm] = {"scale": get(f"{prefix}{norm}.weight").reshape(d),
                        "bias": get(f"{prefix}{norm}.bias").reshape(d)}
    return params


def vision_to_hf(params: dict, cfg: VisionConfig) -> dict:
    """HF `CLIPVisionModel` state dict (numpy) of VisionTower params, keyed `vision_model.*` (loads in every
    transformers version)."""
    prefix = VISION_PREFIX
    out = _layers_out(params, _vision_layer_entries(cfg), lambda i: f"{prefix}encoder.layers.{i}.", cfg.num_layers,
                      cfg.scan_layers)
    out[prefix + "embeddings.patch_embedding.weight"] = np.ascontiguousarray(
        np.asarray(params["patch_embedding"]["kernel"]).transpose(3, 2, 0, 1))
    out[prefix + "embeddings.class_embedding"] = np.asarray(params["class_embedding"])
    out[prefix + "embeddings.position_embedding.weight"] = np.asarray(params["position_embedding"])
    for norm in ("pre_layrnorm", "post_layernorm"):
        out[f"{prefix}{norm}.weight"] = np.asarray(params[norm]["scale"])
        out[f"{prefix}{norm}.bias"] = np.asarray(params[norm]["bias"])
    return out


def vision_config_from_hf(hf_vision_config, **overrides) -> VisionConfig:
    """Our VisionConfig from a `transformers.CLIPVisionConfig`."""
    act = getattr(hf_vision_config, "hidden_act", "quick_gelu")
    if act != "quick_gelu":
        raise ValueError(f"HF CLIP vision config: hidden_act={act!r} is not supported (expected 'quick_gelu')")
    channels = getattr(hf_vision_config, "num_channels", 3)
    if channels != 3:
        raise ValueError(f"HF CLIP vision config: num_channels={channels} is not supported (expected 3)")
    fields = dict(
        image_size=hf_vision_config.image_size, patch_size=hf_vision_config.patch_size,
        hidden_size=hf_vision_config.hidden_size, intermediate_size=hf_vision_config.intermediate_size,
        num_layers=hf_vision_config.num_hidden_layers, num_heads=hf_vision_config.num_attention_heads,
        layer_norm_eps=hf_vision_config.layer_norm_eps)
    fields.update(overrides)
    return VisionConfig(**fields)


def vision_config_to_hf(cfg: VisionConfig):
    import transformers  # noqa: PLC0415

    return transformers.CLIPVisionConfig(
        image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, layer_norm_eps=cfg.layer_norm_eps, hidden_act="quick_gelu",
        num_channels=3, architectures=["CLIPVisionModel"], dtype="float32")


def load_vision_config(clip_dir: str, **overrides) -> VisionConfig:
    """VisionConfig of a CLIPVisionModel or full CLIPModel directory."""
    import transformers  # noqa: PLC0415

    return vision_config_from_hf(transformers.CLIPVisionConfig.from_pretrained(clip_dir), **overrides)

