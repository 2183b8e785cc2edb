"""The three conversion commands: import_hf, export_hf, check_logits (see convert/__main__.py for the CLI).

export_hf and check_logits read any checkpoint layout (momentor_jax/checkpoints.py: a training workdir, one of its
step directories, or a converted checkpoint); import_hf writes the converted layout.

Vocabulary (constants.py): the HF LLaMA has B sentencepiece rows; Momentor's model has V = B + 5 (ADDED_TOKENS) and
N temporal tokens kept in the TPM tables. An exported LLaMA has V + N rows (embed rows [embed_tokens; E_in'], head rows
[lm_head; E_out']) and records V, N and the tie flag in its config.json (`momentor_*` keys) so import splits it back.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from momentor_jax import checkpoints, constants, fileio
from momentor_jax.checkpoints import TOKENIZER_FILE
from momentor_jax.convert import hf
from momentor_jax.models import tpm as tpm_lib
from momentor_jax.models.config import MomentorConfig, VisionConfig

EXTRAS_FILE = "momentor_extras.safetensors"
PROJECTOR_WEIGHT, PROJECTOR_BIAS = "model.mm_projector.weight", "model.mm_projector.bias"
TEMPORAL_INPUT, TEMPORAL_OUTPUT = "model.temporal_input_embeddings.weight", "model.temporal_output_embeddings.weight"
EMBED_TOKENS = "model.embed_tokens.weight"


def _torch_linear_uniform(rng: np.random.Generator, fan_in: int, shape: tuple) -> np.ndarray:
    """torch.nn.Linear's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as float32."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(np.float32)


class _Tensors:
    """Looks tensors up by name suffix (any wrapper prefix) in a reference-weights file, then in the LLaMA dir."""

    def __init__(self, reference_path: Optional[str], llama_weights: hf.HFWeights):
        self.reference = hf.read_tensor_file(reference_path) if reference_path else {}
        self.reference_path = reference_path
        self.llama = llama_weights

    def find(self, name: str, reference_only: bool = False):
        """(array, source description) or (None, None); `name` like 'model.mm_projector.weight'."""
        suffix = name.split(".", 1)[1]  # drop 'model.'
        matches = [k for k in self.reference if k == suffix or k.endswith("." + suffix)]
        if len(matches) > 1:
            raise ValueError(f"{self.reference_path}: several tensors end with {suffix!r}: {matches}")
        if matches:
            return self.reference[matches[0]], f"{self.reference_path}:{matches[0]}"
        for key in () if reference_only else (name, suffix):
            if key in self.llama:
                return self.llama(key), f"{self.llama.directory}:{key}"
        return None, None


def _base_vocab_size(llama_dir: str, base_vocab_size: Optional[int]) -> int:
    """B: --base_vocab_size, else the pieces of the dir's tokenizer.model. Without either the rows cannot tell B
    (a LLaMA with B rows and one that already holds the 5 added rows look alike)."""
    if base_vocab_size:
        return base_vocab_size
    tokenizer_path = os.path.join(llama_dir, TOKENIZER_FILE)
    if not os.path.exists(tokenizer_path):
        raise ValueError(f"{llama_dir} has no {TOKENIZER_FILE}, so its base vocabulary size is unknown: pass "
                         "--base_vocab_size B (the sentencepiece vocabulary; 32000 for LLaMA-7B)")
    import sentencepiece as spm  # noqa: PLC0415

    return spm.SentencePieceProcessor(model_file=tokenizer_path).get_piece_size()


def _extend_rows(table: np.ndarray, count: int) -> np.ndarray:
    """Appends `count` rows equal to the mean of the existing rows (as the public code initialises new tokens)."""
    mean = table.mean(axis=0, keepdims=True, dtype=np.float64).astype(table.dtype)
    return np.concatenate([table, np.repeat(mean, count, axis=0)], axis=0)


def import_hf(llama_dir: str, out: str, clip_dir: Optional[str] = None, reference_weights: Optional[str] = None,
              num_temporal_tokens: Optional[int] = None, num_frames: Optional[int] = None,
              base_vocab_size: Optional[int] = None, scan_layers: bool = True, dtype: str = "bfloat16",
              seed: int = 0, temporal_init: str = "public",
              log: Callable[[str], None] = print) -> MomentorConfig:
    """Builds a Momentor parameter checkpoint at `out` from HF LLaMA (+ CLIP) dirs; returns its config.

    Temporal tables not found in the inputs start as `temporal_init` says (MomentorConfig.temporal_init)."""
    for flag, directory in (("--llama", llama_dir), ("--clip", clip_dir)):
        if directory is not None and not os.path.isdir(directory):  # transformers would take it for a Hub id
            raise FileNotFoundError(f"{flag} {directory}: no such directory (a local Hugging Face model directory; "
                                    "nothing is downloaded)")
    import transformers  # noqa: PLC0415

    hf_config = transformers.LlamaConfig.from_pretrained(llama_dir)
    exported_vocab = getattr(hf_config, "momentor_vocab_size", None)
    base = None if exported_vocab else _base_vocab_size(llama_dir, base_vocab_size)
    weights = hf.HFWeights(llama_dir)
    prefix = hf.llama_prefix(weights.keys())
    hf_vocab = weights(prefix + "embed_tokens.weight").shape[0]
    exported_tokens = getattr(hf_config, "momentor_num_temporal_tokens", 0) if exported_vocab else 0

    if exported_vocab:  # an export_hf dir: V + N rows
        vocab_size, tie = exported_vocab, bool(getattr(hf_config, "momentor_tie_word_embeddings", False))
        added_rows = 0
        if hf_vocab != vocab_size + exported_tokens:
            raise ValueError(f"{llama_dir}: {hf_vocab} embedding rows, but config.json says momentor_vocab_size="
                             f"{vocab_size} + momentor_num_temporal_tokens={exported_tokens}")
    else:
        tie = bool(getattr(hf_config, "tie_word_embeddings", False))
        if hf_vocab == base + constants.NUM_ADDED_TOKENS:
            added_rows = 0
        elif hf_vocab == base:
            added_rows = constants.NUM_ADDED_TOKENS
        else:
            raise ValueError(f"{llama_dir}: {hf_vocab} embedding rows; expected the base vocabulary {base} or "
                             f"{base} + {constants.NUM_ADDED_TOKENS} (set --base_vocab_size)")
        vocab_size = base + constants.NUM_ADDED_TOKENS
    stored_tie = tie and not exported_tokens  # an export with temporal rows always has an untied lm_head
    read_cfg = hf.llama_config_from_hf(hf_config, vocab_size=hf_vocab, tie_word_embeddings=stored_tie,
                                       scan_layers=scan_layers, dtype=dtype)
    llm = hf.llama_from_hf(weights, read_cfg, prefix)
    llm_cfg = dataclasses.replace(read_cfg, vocab_size=vocab_size, tie_word_embeddings=tie)
    log(f"LLaMA {llama_dir}: {hf_vocab} rows -> V = {vocab_size}"
        + (f" ({added_rows} added rows = mean of the others)" if added_rows else ""))

    embedding = llm["embed_tokens"]["embedding"]
    head = llm.pop("lm_head")["kernel"].T if "lm_head" in llm else None
    tpm = {}
    if exported_tokens:
        tpm = {"input_embedding": embedding[vocab_size:], "output_embedding": np.ascontiguousarray(head[vocab_size:])}
        embedding, head = embedding[:vocab_size], head[:vocab_size]
    elif added_rows:
        embedding = _extend_rows(embedding, added_rows)
        head = None if head is None else _extend_rows(head, added_rows)

    tensors = _Tensors(reference_weights, weights)
    ref_embedding, source = tensors.find(EMBED_TOKENS, reference_only=True)
    if ref_embedding is not None:
        if ref_embedding.shape == embedding.shape:
            embedding = ref_embedding
        elif ref_embedding.shape == (constants.NUM_ADDED_TOKENS, embedding.shape[1]):
            embedding = np.concatenate([embedding[:-constants.NUM_ADDED_TOKENS], ref_embedding])
        else:
            raise ValueError(f"{source}: shape {ref_embedding.shape}; expected {embedding.shape} or "
                             f"({constants.NUM_ADDED_TOKENS}, {embedding.shape[1]})")
        log(f"embed_tokens rows from {source}")
    llm["embed_tokens"]["embedding"] = np.ascontiguousarray(embedding)
    if not tie:
        llm["lm_head"] = {"kernel": np.ascontiguousarray(head.T)}

    rng = np.random.default_rng(seed)
    table_keys = dict(zip(("input_embedding", "output_embedding"), jax.random.split(jax.random.PRNGKey(seed))))
    d = llm_cfg.hidden_size
    for key, name in (("input_embedding", TEMPORAL_INPUT), ("output_embedding", TEMPORAL_OUTPUT)):
        table, source = tensors.find(name)
        if table is not None:
            tpm[key] = table
            log(f"tpm/{key} from {source}")
        elif key in tpm:
            log(f"tpm/{key} from the temporal rows of {llama_dir}")
    sizes = {t.shape[0] for t in tpm.values()}
    if len(sizes) > 1 or any(t.ndim != 2 or t.shape[1] != d for t in tpm.values()):
        raise ValueError(f"temporal tables have shapes {[t.shape for t in tpm.values()]}; expected [N, {d}] each")
    num_tokens = sizes.pop() if sizes else (num_temporal_tokens or 300)
    if num_temporal_tokens and num_temporal_tokens != num_tokens:
        raise ValueError(f"--num_temporal_tokens={num_temporal_tokens}, but the imported temporal tables have "
                         f"{num_tokens} rows")
    for key, init in zip(("input_embedding", "output_embedding"), tpm_lib.table_initializers(temporal_init)):
        if key not in tpm:
            tpm[key] = np.asarray(init(table_keys[key], (num_tokens, d), jnp.float32))
            log(f"tpm/{key}: random, temporal_init={temporal_init} [{num_tokens}, {d}]")

    params = {}
    vision_cfg = VisionConfig(dtype=dtype, scan_layers=scan_layers)
    if clip_dir:
        vision_cfg = hf.load_vision_config(clip_dir, dtype=dtype, scan_layers=scan_layers)
        vision_weights = hf.HFWeights(clip_dir)
        params["vision"] = hf.vision_from_hf(vision_weights, vision_cfg, hf.vision_prefix(vision_weights.keys()))
        log(f"vision tower from {clip_dir}")
    features = vision_cfg.hidden_size
    weight, source = tensors.find(PROJECTOR_WEIGHT)
    bias, bias_source = tensors.find(PROJECTOR_BIAS)
    if weight is not None:
        if weight.shape != (d, features) or bias is None or bias.shape != (d,):
            raise ValueError(f"{source}: projector weight {weight.shape} / bias "
                             f"{None if bias is None else bias.shape}; expected ({d}, {features}) / ({d},)")
        projector = {"kernel": np.ascontiguousarray(weight.T), "bias": bias}
        log(f"projector from {source} and {bias_source}")
    else:
        projector = {"kernel": _torch_linear_uniform(rng, features, (features, d)),
                     "bias": _torch_linear_uniform(rng, features, (d,))}
        log(f"projector: random (torch Linear default) [{features}, {d}]")
    params.update(projector=projector, tpm=tpm, llm=llm)

    frames = num_frames or getattr(hf_config, "momentor_num_frames", None) or 300
    config = MomentorConfig(vision=vision_cfg, llm=llm_cfg, num_frames=frames, num_temporal_tokens=num_tokens,
                            temporal_init=temporal_init)
    checkpoints.save_params(out, params, config)  # local or gs://
    tokenizer_path = os.path.join(llama_dir, TOKENIZER_FILE)
    if os.path.exists(tokenizer_path):
        fileio.copy(tokenizer_path, fileio.join(out, TOKENIZER_FILE))
    log(f"wrote {out}")
    return config


def _export_tokenizer(model_path: str, out_dir: str, vocab_size: int, num_tokens: int) -> None:
    """HF tokenizer files: the sentencepiece model + ADDED_TOKENS (ids B..V-1) + <TEMP-k> (ids V + k)."""
    import sentencepiece as spm  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    base = spm.SentencePieceProcessor(model_file=model_path).get_piece_size()
    if base + constants.NUM_ADDED_TOKENS != vocab_size:
        raise ValueError(f"{model_path}: {base} pieces + {constants.NUM_ADDED_TOKENS} added tokens != "
                         f"model vocabulary {vocab_size}")
    staging = os.path.join(out_dir, ".tokenizer_source")
    os.makedirs(staging, exist_ok=True)
    shutil.copy(model_path, os.path.join(staging, TOKENIZER_FILE))
    with open(os.path.join(staging, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True,
                   "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, f)
    tokenizer = transformers.AutoTokenizer.from_pretrained(staging)
    shutil.rmtree(staging)
    tokenizer.add_tokens(list(constants.ADDED_TOKENS), special_tokens=True)
    tokenizer.add_tokens([constants.TEMPORAL_TOKEN_FORMAT.format(k) for k in range(num_tokens)], special_tokens=True)
    tokenizer.save_pretrained(out_dir)
    shutil.copy(model_path, os.path.join(out_dir, TOKENIZER_FILE))
    wanted, expected = [constants.ADDED_TOKENS[0], constants.ADDED_TOKENS[-1]], [base, vocab_size - 1]
    if num_tokens:  # none when the TPM is ablated
        wanted.append(constants.TEMPORAL_TOKEN_FORMAT.format(num_tokens - 1))
        expected.append(vocab_size + num_tokens - 1)
    got = tokenizer.convert_tokens_to_ids(wanted)
    if got != expected:
        raise ValueError(f"exported tokenizer gives ids {got} to {wanted}; expected {expected}")


def export_hf(checkpoint: str, out: str, log: Callable[[str], None] = print) -> None:
    """Writes OUT/llm (LlamaForCausalLM, vocabulary V + N, with tokenizer files when the checkpoint has a
    sentencepiece tokenizer), OUT/vision (CLIPVisionModel) and OUT/momentor_extras. `checkpoint`: any layout
    (momentor_jax/checkpoints.py: a training workdir's latest step, a step directory, a converted checkpoint), local
    or gs://. A gs:// OUT is written to a local temporary directory first (transformers and safetensors write local
    files), then uploaded file by file."""
    if fileio.is_remote(out):
        fileio.check_bucket(out)
        with tempfile.TemporaryDirectory(prefix="momentor-export-") as staging:
            export_hf(checkpoint, staging, log=log)
            for written in fileio.put_tree(staging, out):
                log(f"uploaded {written}")
        return
    from momentor_jax.inference import load  # noqa: PLC0415

    started = time.perf_counter()
    located = checkpoints.locate(checkpoint)
    config = checkpoints.load_config(checkpoint)
    log(f"reading {located.params_dir}" + (f" (step {located.step} of {located.workdir})" if located.step else ""))
    params = checkpoints.load_params(checkpoint)
    log(f"read the parameters in {time.perf_counter() - started:.1f} s; writing the LLM in Hugging Face layout "
        "(loads transformers) ...")
    llm_cfg = config.llm
    vocab_size, tie = llm_cfg.vocab_size, llm_cfg.tie_word_embeddings
    tensors = hf.llama_to_hf(params["llm"], llm_cfg)
    tpm = params.get("tpm") if config.tpm_enabled else None
    num_tokens = 0 if tpm is None else tpm["input_embedding"].shape[0]
    if num_tokens:
        embedding = tensors[EMBED_TOKENS]
        head = embedding if tie else tensors["lm_head.weight"]
        tensors[EMBED_TOKENS] = np.concatenate([embedding, tpm["input_embedding"]])
        tensors["lm_head.weight"] = np.concatenate([head, tpm["output_embedding"]])
    hf_config = hf.llama_config_to_hf(
        llm_cfg, vocab_size + num_tokens, tie_word_embeddings=tie and not num_tokens,
        momentor_vocab_size=vocab_size, momentor_num_temporal_tokens=num_tokens, momentor_tie_word_embeddings=tie,
        momentor_num_frames=config.num_frames)
    llm_dir = os.path.join(out, "llm")
    os.makedirs(llm_dir, exist_ok=True)
    hf_config.save_pretrained(llm_dir)
    hf.write_safetensors(os.path.join(llm_dir, "model.safetensors"), tensors)
    log(f"wrote {llm_dir} (vocabulary {vocab_size} + {num_tokens} temporal tokens)")
    tokenizer_path = load.sentencepiece_model(checkpoint)
    if tokenizer_path:
        log(f"writing tokenizer files from {tokenizer_path}")
        with tempfile.TemporaryDirectory(prefix="momentor-tokenizer-") as local:
            if fileio.is_remote(tokenizer_path):  # sentencepiece and transformers read local files
                fileio.copy(tokenizer_path, os.path.join(local, TOKENIZER_FILE))
                tokenizer_path = os.path.join(local, TOKENIZER_FILE)
            _export_tokenizer(tokenizer_path, llm_dir, vocab_size, num_tokens)
        log(f"wrote tokenizer files to {llm_dir}")
    else:
        log(f"{checkpoint}: no sentencepiece tokenizer found; {llm_dir} has no tokenizer files")

    if "vision" in params:
        vision_dir = os.path.join(out, "vision")
        os.makedirs(vision_dir, exist_ok=True)
        hf.vision_config_to_hf(config.vision).save_pretrained(vision_dir)
        hf.write_safetensors(os.path.join(vision_dir, "model.safetensors"), hf.vision_to_hf(params["vision"],
                                                                                            config.vision))
        log(f"wrote {vision_dir}")

    extras = {PROJECTOR_WEIGHT: np.ascontiguousarray(np.asarray(params["projector"]["kernel"]).T),
              PROJECTOR_BIAS: np.asarray(params["projector"]["bias"])}
    if tpm is not None:
        extras[TEMPORAL_INPUT] = np.asarray(tpm["input_embedding"])
        extras[TEMPORAL_OUTPUT] = np.asarray(tpm["output_embedding"])
    hf.write_safetensors(os.path.join(out, EXTRAS_FILE), extras)
    log(f"wrote {os.path.join(out, EXTRAS_FILE)}; export took {time.perf_counter() - started:.1f} s")


def check_logits(checkpoint: str, hf_llama: str, hf_clip: Optional[str] = None, batch_size: int = 2,
                 length: int = 32, seed: int = 0, log: Callable[[str], None] = print) -> dict:
    """Max |diff| between our fp32 forward and HF's on the same random inputs: {'logits': x[, 'pooler_output': y]}.

    Logits are compared on the columns both models have (the HF model's vocabulary, or V + N against an export).
    """
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    from momentor_jax.models.llama import LlamaModel  # noqa: PLC0415
    from momentor_jax.models.vit import VisionTower  # noqa: PLC0415

    params, config = checkpoints.load_params(checkpoint), checkpoints.load_config(checkpoint)
    rng = np.random.default_rng(seed)
    llm_cfg = dataclasses.replace(config.llm, dtype="float32")
    model = transformers.LlamaForCausalLM.from_pretrained(hf_llama, dtype=torch.float32,
                                                          attn_implementation="eager").eval()
    ids = rng.integers(0, min(model.config.vocab_size, llm_cfg.vocab_size), (batch_size, length)).astype(np.int32)
    with torch.no_grad():
        theirs = model(input_ids=torch.from_numpy(ids).long()).logits.numpy()
    del model

    def forward(module, input_ids):
        positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        hidden, _ = module(module.embed(input_ids), positions, jnp.ones_like(input_ids))
        return module.logits(hidden), hidden

    logits, hidden = jax.jit(lambda p, i: LlamaModel(llm_cfg).apply({"params": p}, i, method=forward))(
        params["llm"], jnp.asarray(ids))
    ours = np.asarray(logits)
    if config.tpm_enabled and "tpm" in params:
        temporal = np.einsum("bld,nd->bln", np.asarray(hidden), np.asarray(params["tpm"]["output_embedding"]))
        ours = np.concatenate([ours, temporal], axis=-1)
    columns = min(ours.shape[-1], theirs.shape[-1])
    result = {"logits": float(np.max(np.abs(ours[..., :columns] - theirs[..., :columns])))}
    log(f"logits: max |diff| = {result['logits']:.3g} over {columns} columns, {batch_size} x {length} tokens")

    if hf_clip:
        if "vision" not in params:
            raise ValueError(f"{checkpoint}: no vision tower params to compare with {hf_clip}")
        vision_cfg = dataclasses.replace(config.vision, dtype="float32")
        vision = transformers.CLIPVisionModel.from_pretrained(hf_clip, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
        size = vision_cfg.image_size
        pixels = rng.standard_normal((batch_size, size, size, 3)).astype(np.float32)
        with torch.no_grad():
            theirs = vision(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())).pooler_output.numpy()
        ours = jax.jit(lambda p, x: VisionTower(vision_cfg).apply({"params": p}, x))(params["vision"],
                                                                                    jnp.asarray(pixels))
        result["pooler_output"] = float(np.max(np.abs(np.asarray(ours) - theirs)))
        log(f"pooler_output: max |diff| = {result['pooler_output']:.3g}")
    return result
