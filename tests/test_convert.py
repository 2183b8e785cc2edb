"""python -m momentor_jax.convert: import_hf / export_hf / check_logits on tiny random HF models."""
import dataclasses
import os
import re
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_tiny_models as tiny  # noqa: E402
from momentor_jax import constants  # noqa: E402
from momentor_jax.checkpoints import TOKENIZER_FILE, load_config, load_params, save_params  # noqa: E402
from momentor_jax.convert import commands  # noqa: E402
from momentor_jax.convert.__main__ import main  # noqa: E402
from momentor_jax.data import synthetic  # noqa: E402
from momentor_jax.data import tokenizer as tokenizer_lib  # noqa: E402

N_TEMPORAL = 16
V = tiny.VOCAB + constants.NUM_ADDED_TOKENS


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    llama, clip = tiny.tiny_llama(num_kv_heads=2), tiny.tiny_clip_vision()
    llama.save_pretrained(root / "llama")
    clip.save_pretrained(root / "clip")
    model_path = tokenizer_lib.train_sentencepiece(synthetic.tokenizer_texts(), str(root / "sp"), tiny.VOCAB)
    os.replace(model_path, root / "llama" / "tokenizer.model")
    return {"llama": str(root / "llama"), "clip": str(root / "clip"), "llama_model": llama, "clip_model": clip}


@pytest.fixture(scope="module")
def imported(hf_dirs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ckpt") / "momentor")
    assert main(["import_hf", "--llama", hf_dirs["llama"], "--clip", hf_dirs["clip"], "--out", out,
                 "--num_temporal_tokens", str(N_TEMPORAL), "--num_frames", "8"]) == 0
    return out


def test_import_builds_the_momentor_tree(imported, hf_dirs):
    params, config = load_params(imported), load_config(imported)
    assert set(params) == {"vision", "projector", "tpm", "llm"}
    assert (config.llm.vocab_size, config.num_temporal_tokens, config.num_frames) == (V, N_TEMPORAL, 8)
    assert config.llm.num_kv_heads == 2 and config.llm.scan_layers
    assert params["projector"]["kernel"].shape == (config.vision.hidden_size, config.llm.hidden_size)
    assert params["tpm"]["input_embedding"].shape == (N_TEMPORAL, config.llm.hidden_size)
    # New tables, initialised as the public trainer leaves them: N(0, 0.02) (--temporal_init public, the default).
    assert config.temporal_init == "public"
    for name in ("input_embedding", "output_embedding"):
        assert abs(float(np.std(params["tpm"][name])) - 0.02) < 0.005
    embedding = params["llm"]["embed_tokens"]["embedding"]
    original = tiny.state_dict_numpy(hf_dirs["llama_model"])["model.embed_tokens.weight"]
    np.testing.assert_array_equal(embedding[:tiny.VOCAB], original)
    np.testing.assert_allclose(embedding[tiny.VOCAB:], np.broadcast_to(original.mean(0), (5, original.shape[1])),
                               rtol=0, atol=1e-7)
    assert params["llm"]["lm_head"]["kernel"].shape == (config.llm.hidden_size, V)
    assert os.path.exists(os.path.join(imported, "tokenizer.model"))


def test_check_logits_passes_on_a_good_checkpoint_and_fails_on_a_corrupted_one(imported, hf_dirs, tmp_path):
    args = ["check_logits", "--hf_llama", hf_dirs["llama"], "--hf_clip", hf_dirs["clip"], "--length", "8"]
    assert main(args + ["--checkpoint", imported]) == 0
    params, config = load_params(imported), load_config(imported)
    params["llm"]["layers"]["mlp"]["down_proj"]["kernel"][1, 3, 5] += 0.5
    save_params(str(tmp_path / "bad_llm"), params, config)
    assert main(args + ["--checkpoint", str(tmp_path / "bad_llm")]) == 1
    params, config = load_params(imported), load_config(imported)
    params["vision"]["post_layernorm"]["bias"][0] += 0.01
    save_params(str(tmp_path / "bad_vision"), params, config)
    assert main(args + ["--checkpoint", str(tmp_path / "bad_vision")]) == 1


@pytest.fixture(scope="module")
def exported(imported, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export"))
    assert main(["export_hf", "--checkpoint", imported, "--out", out]) == 0
    return out


def test_export_loads_in_transformers_and_reproduces_logits(exported, imported, hf_dirs):
    params = load_params(imported)
    model = transformers.LlamaForCausalLM.from_pretrained(os.path.join(exported, "llm"), dtype=torch.float32,
                                                          attn_implementation="eager").eval()
    assert model.config.vocab_size == V + N_TEMPORAL
    ids = np.random.default_rng(0).integers(0, tiny.VOCAB, (2, 9)).astype(np.int32)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids).long(), output_hidden_states=True)
    logits, hidden = out.logits.numpy(), out.hidden_states[-1].numpy()
    np.testing.assert_allclose(logits[..., :tiny.VOCAB], tiny.hf_logits(hf_dirs["llama_model"], ids), atol=1e-4)
    np.testing.assert_allclose(logits[..., V:], hidden @ params["tpm"]["output_embedding"].T, atol=1e-4)
    generated = model.generate(torch.from_numpy(ids[:1]).long(), max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 12)

    vision = transformers.CLIPVisionModel.from_pretrained(os.path.join(exported, "vision"),
                                                          attn_implementation="eager").eval()
    _assert_trees_equal(tiny.state_dict_numpy(vision), tiny.state_dict_numpy(hf_dirs["clip_model"]))
    pixels = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(tiny.hf_pooled(vision, pixels), tiny.hf_pooled(hf_dirs["clip_model"], pixels))

    tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.join(exported, "llm"))
    assert tokenizer.convert_tokens_to_ids(list(constants.ADDED_TOKENS)) == list(range(tiny.VOCAB, V))
    assert tokenizer.convert_tokens_to_ids("<TEMP-015>") == V + 15


def test_export_without_the_tpm_has_no_temporal_tokens(imported, tmp_path):
    params, config = load_params(imported), load_config(imported)
    del params["tpm"]
    ablated = str(tmp_path / "ablated")
    save_params(ablated, params, dataclasses.replace(config, tpm_enabled=False))
    shutil.copy(os.path.join(imported, TOKENIZER_FILE), os.path.join(ablated, TOKENIZER_FILE))
    out = str(tmp_path / "export")
    assert main(["export_hf", "--checkpoint", ablated, "--out", out]) == 0
    assert transformers.AutoConfig.from_pretrained(os.path.join(out, "llm")).vocab_size == V
    tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.join(out, "llm"))
    assert tokenizer.convert_tokens_to_ids(list(constants.ADDED_TOKENS)) == list(range(tiny.VOCAB, V))
    assert len(tokenizer) == V


def test_import_of_export_gives_back_the_same_params(exported, imported, tmp_path):
    out = str(tmp_path / "again")
    assert main(["import_hf", "--llama", os.path.join(exported, "llm"), "--clip", os.path.join(exported, "vision"),
                 "--reference_weights", os.path.join(exported, commands.EXTRAS_FILE), "--out", out]) == 0
    original, original_config = load_params(imported), load_config(imported)
    again, again_config = load_params(out), load_config(out)
    _assert_trees_equal(original, again)
    assert original_config == again_config


def test_tied_head_preextended_vocab_bin_weights_and_loop_layers_round_trip(tmp_path):
    model = tiny.tiny_llama(num_kv_heads=4, tie=True, vocab=V, seed=3)
    model.config.save_pretrained(tmp_path / "llama")  # weights as a torch .bin file, the older HF format
    torch.save(model.state_dict(), tmp_path / "llama" / "pytorch_model.bin")
    ckpt, export, again = (str(tmp_path / name) for name in ("ckpt", "export", "again"))
    assert main(["import_hf", "--llama", str(tmp_path / "llama"), "--out", ckpt, "--base_vocab_size",
                 str(tiny.VOCAB), "--num_temporal_tokens", "8", "--no_scan_layers"]) == 0
    params, config = load_params(ckpt), load_config(ckpt)
    assert config.llm.tie_word_embeddings and "lm_head" not in params["llm"] and "layers_1" in params["llm"]
    assert "vision" not in params
    np.testing.assert_array_equal(params["llm"]["embed_tokens"]["embedding"],
                                  tiny.state_dict_numpy(model)["model.embed_tokens.weight"])  # V rows: kept
    assert main(["check_logits", "--checkpoint", ckpt, "--hf_llama", str(tmp_path / "llama")]) == 0
    assert main(["export_hf", "--checkpoint", ckpt, "--out", export]) == 0
    assert main(["import_hf", "--llama", os.path.join(export, "llm"), "--out", again, "--no_scan_layers",
                 "--reference_weights", os.path.join(export, commands.EXTRAS_FILE)]) == 0
    _assert_trees_equal(params, load_params(again))
    assert main(["check_logits", "--checkpoint", ckpt, "--hf_llama", os.path.join(export, "llm")]) == 0


def test_torch_default_temporal_init_and_a_llama_without_tokenizer_model(hf_dirs, tmp_path, capsys):
    out = str(tmp_path / "wide")
    assert main(["import_hf", "--llama", hf_dirs["llama"], "--out", out, "--num_temporal_tokens", "64",
                 "--temporal_init", "torch_default"]) == 0
    params, config = load_params(out), load_config(out)
    assert config.temporal_init == "torch_default"
    assert abs(float(np.std(params["tpm"]["input_embedding"])) - 1.0) < 0.1                 # N(0, 1)
    bound = 1.0 / np.sqrt(config.llm.hidden_size)                                          # U(+-1/sqrt(D))
    assert np.abs(params["tpm"]["output_embedding"]).max() <= bound
    assert abs(float(np.std(params["tpm"]["output_embedding"])) - bound / np.sqrt(3.0)) < 0.1 * bound
    # Without tokenizer.model the rows cannot tell B: refused before any weight is read, unless B is given.
    bare = tmp_path / "bare"
    shutil.copytree(hf_dirs["llama"], bare, ignore=shutil.ignore_patterns("tokenizer.model"))
    capsys.readouterr()
    assert main(["import_hf", "--llama", str(bare), "--out", str(tmp_path / "x")]) != 0
    assert re.search("no tokenizer.model.*--base_vocab_size", capsys.readouterr().err)
    assert not os.path.exists(tmp_path / "x")
    assert main(["import_hf", "--llama", str(bare), "--out", str(tmp_path / "y"), "--base_vocab_size",
                 str(tiny.VOCAB)]) == 0
    assert load_config(str(tmp_path / "y")).llm.vocab_size == V


def test_public_reference_weights_are_used(hf_dirs, tmp_path, capsys):
    rng = np.random.default_rng(5)
    d, f = 64, 32
    reference = {
        "model.mm_projector.weight": rng.standard_normal((d, f)).astype(np.float32),
        "model.mm_projector.bias": rng.standard_normal(d).astype(np.float32),
        "model.embed_tokens.weight": rng.standard_normal((V, d)).astype(np.float32),
        "model.temporal_input_embeddings.weight": rng.standard_normal((12, d)).astype(np.float32),
        "model.temporal_output_embeddings.weight": rng.standard_normal((12, d)).astype(np.float32),
    }
    torch.save({k: torch.from_numpy(v) for k, v in reference.items()}, tmp_path / "mm_projector.bin")
    out = str(tmp_path / "ckpt")
    assert main(["import_hf", "--llama", hf_dirs["llama"], "--clip", hf_dirs["clip"], "--out", out,
                 "--reference_weights", str(tmp_path / "mm_projector.bin")]) == 0
    params, config = load_params(out), load_config(out)
    assert config.num_temporal_tokens == 12
    np.testing.assert_array_equal(params["projector"]["kernel"], reference["model.mm_projector.weight"].T)
    np.testing.assert_array_equal(params["projector"]["bias"], reference["model.mm_projector.bias"])
    np.testing.assert_array_equal(params["llm"]["embed_tokens"]["embedding"], reference["model.embed_tokens.weight"])
    np.testing.assert_array_equal(params["tpm"]["input_embedding"], reference["model.temporal_input_embeddings.weight"])
    np.testing.assert_array_equal(params["tpm"]["output_embedding"],
                                  reference["model.temporal_output_embeddings.weight"])
    assert main(["import_hf", "--llama", hf_dirs["llama"], "--out", str(tmp_path / "x"), "--num_temporal_tokens", "5",
                 "--reference_weights", str(tmp_path / "mm_projector.bin")]) == 2
    assert "num_temporal_tokens" in capsys.readouterr().err


def test_full_clip_model_dir_gives_its_vision_tower(hf_dirs, tmp_path):
    clip = hf_dirs["clip_model"]
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=64,
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    full = transformers.CLIPModel(transformers.CLIPConfig(vision_config=clip.config.to_dict(), text_config=text))
    full.vision_model.load_state_dict(clip.state_dict())
    full.save_pretrained(tmp_path / "clip_full")
    out = str(tmp_path / "ckpt")
    assert main(["import_hf", "--llama", hf_dirs["llama"], "--clip", str(tmp_path / "clip_full"), "--out", out]) == 0
    assert main(["check_logits", "--checkpoint", out, "--hf_llama", hf_dirs["llama"], "--hf_clip",
                 hf_dirs["clip"], "--length", "4"]) == 0


def test_import_to_gcs_then_export_from_it_round_trips_bit_identically(hf_dirs, imported, exported, gcs_bucket,
                                                                        capsys):
    """import_hf --out gs://... then export_hf from it (to gs:// too): the same parameters and the same bytes as
    the local import and export."""
    from momentor_jax import fileio
    remote = f"{gcs_bucket}/momentor"
    assert main(["import_hf", "--llama", hf_dirs["llama"], "--clip", hf_dirs["clip"], "--out", remote,
                 "--num_temporal_tokens", str(N_TEMPORAL), "--num_frames", "8"]) == 0
    local_params, local_config = load_params(imported), load_config(imported)
    remote_params, remote_config = load_params(remote), load_config(remote)
    _assert_trees_equal(local_params, remote_params)
    assert local_config == remote_config
    assert fileio.read_bytes(fileio.join(remote, TOKENIZER_FILE)) == fileio.read_bytes(
        os.path.join(imported, TOKENIZER_FILE))
    assert main(["export_hf", "--checkpoint", remote, "--out", f"{gcs_bucket}/export"]) == 0
    files = sorted(os.path.relpath(os.path.join(root, name), exported)
                   for root, _, names in os.walk(exported) for name in names)
    assert files and fileio.glob(f"{gcs_bucket}/export/llm/*")
    for relative in files:
        with open(os.path.join(exported, relative), "rb") as f:
            assert fileio.read_bytes(f"{gcs_bucket}/export/{relative}") == f.read(), relative
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["export_hf", "--checkpoint", remote, "--out", "gs://no-such-bucket-for-export/out"])
    assert info.value.code == 4
    assert capsys.readouterr().err.strip() == ("error: gs://no-such-bucket-for-export/out: bucket "
                                               "gs://no-such-bucket-for-export does not exist (check the name, or "
                                               "create it: gcloud storage buckets create "
                                               "gs://no-such-bucket-for-export)")
