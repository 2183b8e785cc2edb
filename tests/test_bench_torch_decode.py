"""tools.bench `torch` and `decode` suites end to end on the tiny config: the JSON they write, the agreement checks
they make before timing (losses, gradients, greedy tokens). No timing thresholds."""
import json
import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from momentor_jax.tools.bench.__main__ import main  # noqa: E402


def _run(tmp_path, suite, *options) -> dict:
    assert main([suite, "--config", "configs/tiny.py", "--out", str(tmp_path), *options]) == 0
    with open(tmp_path / f"{suite}.json") as f:
        return json.load(f)


def _assert_timed(side: dict):
    assert side["median_s"] > 0 and math.isfinite(side["tokens_per_s"]) and side["tokens_per_s"] > 0


def test_torch_suite_same_loss_and_gradients_then_ratio(tmp_path):
    # Unrolled layers on the JAX side also checks that unroll_layers keeps every weight in place; the blocked
    # attention side (blocks of 16 of 64 tokens) is checked against PyTorch the same way.
    result = _run(tmp_path, "torch", "--batch_size", "2", "--length", "64", "--steps", "1", "--warmup", "0",
                  "--unroll_layers", "--compare_attention_block", "16")
    assert result["suite"] == "torch" and result["tokens_per_step"] == 2 * 64
    assert result["jax_layers"].startswith("unrolled")
    loss = result["loss"]
    assert math.isfinite(loss["jax"]) and loss["relative_difference"] <= 1e-5
    assert set(result["grad_relative_max_diff"]) == {"llm", "vision", "projector", "tpm"}
    assert all(diff <= 1e-4 for diff in result["grad_relative_max_diff"].values())
    _assert_timed(result["jax"])
    _assert_timed(result["torch"])
    assert math.isfinite(result["ratio"]) and result["ratio"] > 0
    assert result["torch_threads"] >= 1
    blocked = result["jax_attention_block"]
    assert blocked["attention_block"] == 16 and blocked["loss"]["relative_difference"] <= 1e-5
    assert abs(blocked["loss"]["jax"] - loss["jax"]) <= 1e-5 * abs(loss["jax"])
    assert all(diff <= 1e-4 for diff in blocked["grad_relative_max_diff"].values())
    _assert_timed(blocked)
    assert math.isfinite(blocked["ratio"]) and blocked["ratio"] > 0


def test_decode_suite_same_greedy_tokens_then_ratio(tmp_path):
    result = _run(tmp_path, "decode", "--batch_sizes", "1,2", "--new_tokens", "6", "--repeats", "1",
                  "--warmup", "0")
    assert result["suite"] == "decode" and result["batch_sizes"] == [1, 2] and result["ratio_batch"] == 1
    assert result["jax_layers"].startswith("unrolled")  # generate.decoding_layout, as Generator converts
    for batch_size in ("1", "2"):
        entry = result["batches"][batch_size]
        assert entry["agreement"]["text_part_agrees"]
        assert all(length >= 1 for length in entry["agreement"]["text_part_lengths"])
        _assert_timed(entry["jax"])
        _assert_timed(entry["torch"])
        assert math.isfinite(entry["ratio"]) and entry["ratio"] > 0
        assert all(math.isfinite(entry[side]["decode_ms_per_step"]) for side in ("jax", "torch"))
    assert result["tokens_agree"] and result["ratio"] == result["batches"]["1"]["ratio"]
    # The floor reads every LLM kernel, the LM head and E_out once: the tiny config's 2 layers of
    # 4 x 64 x 64 (q, k, v, o; 4 heads, 2 kv heads of 16: k, v are 64 x 32) + 3 x 64 x 128, then 64 x 305 and 16 x 64.
    layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128
    assert result["weight_floor"]["bytes"] == 4 * (2 * layer + 64 * 305 + 16 * 64)
    assert result["weight_floor"]["ms"] > 0
    # Tiny steps are below what two noisy answers' difference resolves: a ratio or nothing, never a negative one.
    assert all(r is None or r > 0 for r in (result["decode_ratio"], result["decode_ratio_ceiling"]))


def test_torch_suite_length_model_packed_against_padded_batches(tmp_path):
    # The same window of 14 dialogues on both sides: JAX's first step of packed rows must give PyTorch's loss and
    # gradients over the same dialogues' padded batches (right padding under an attention mask, gradients
    # accumulated with token-mean weights); then every row against every padded batch.
    result = _run(tmp_path, "torch", "--length_model", "--window", "14", "--torch_batch_size", "3", "--steps", "1",
                  "--warmup", "0", "--config.data.packing=True", "--config.data.max_segments=3",
                  "--config.data.max_videos_per_row=3", "--config.max_length=512", "--config.batch_size=2")
    assert result["length_model"] and result["window"] == 14 and result["max_length"] == 512
    assert result["loss"]["relative_difference"] <= 1e-5
    assert set(result["grad_relative_max_diff"]) == {"llm", "projector", "tpm"}  # features: no vision tower
    assert all(diff <= 1e-4 for diff in result["grad_relative_max_diff"].values())
    rows, useful, lengths = result["rows"], result["useful_tokens"], result["padded_lengths"]
    assert rows >= 5  # at most 3 dialogues a row
    assert len(lengths) == 5 and all(length <= 512 for length in lengths)  # 14 dialogues in batches of <= 3
    assert result["jax"]["slots"] == rows * 512 and useful <= rows * 512
    assert result["torch"]["slots"] == 3 * sum(lengths[:4]) + 2 * lengths[4]
    for side in ("jax", "torch"):
        assert result[side]["median_s"] > 0 and result[side]["slot_efficiency"] == useful / result[side]["slots"]
        assert result[side]["useful_tokens_per_s"] == useful / result[side]["median_s"]
    assert result["ratio"] == pytest.approx(result["torch"]["median_s"] / result["jax"]["median_s"])
    assert math.isfinite(result["ratio"]) and result["ratio"] > 0


def test_torch_suite_length_model_window_too_small_for_the_batch(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["torch", "--config", "configs/tiny.py", "--out", str(tmp_path), "--length_model", "--window", "1",
              "--config.data.packing=True", "--config.batch_size=2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --window 1: ") and "fewer than the batch 2" in err
