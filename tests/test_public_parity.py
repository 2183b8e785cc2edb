"""momentor_jax against the PyTorch reference (tests/torch_momentor.py) with the public code's behaviours switched on
and off, on a tiny fp32 model fed cached features as the public trainer is: a video per row, <TEMP-INPUT> and
<TEMP-OUTPUT> placeholders, times on tokens and between them.

Public switches on (model: text_embedding_grad="video_markers", on_token_target="zeros"; reference: also float64
positions and the sum of per-row means): logits, loss and the trainable gradients (projector, temporal tables, the
text rows of the token embeddings) agree within 1e-5. momentor_jax has no switch for the public loss reduction (a
deliberate difference); on its side the test sums compute_loss over the rows. Switches off: the same agreement, and
the differences from the public behaviour are exactly the expected ones.
"""
import dataclasses

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch_momentor  # noqa: E402

from momentor_jax import constants  # noqa: E402
from momentor_jax.models import config as config_lib  # noqa: E402
from momentor_jax.models.loss import compute_loss  # noqa: E402
from momentor_jax.models.momentor import Momentor  # noqa: E402
from momentor_jax.tools.bench import shared_weights  # noqa: E402

# N - 1 = 16: every k / 16 is exact in float32 and float64, so "on a token" means the same on both sides.
N = 17
TOLERANCE = 1e-5
# Per row: <TEMP-INPUT> times, <TEMP-OUTPUT> times, answer text length (the rows supervise different token counts).
ROWS = (((0.0, 0.37), (0.0, 0.5, 0.618), 12),
        ((1.0, 0.25), (0.3, 1.0, 0.8125), 7))


def _config():
    base = config_lib.tiny()
    return dataclasses.replace(base, num_frames=N, num_temporal_tokens=N, use_cached_features=True)


def _batch(cfg, seed=0) -> dict:
    """Rows '<s> text <vid_start> M x <vid_patch> <vid_end> text <TEMP-INPUT> text <TEMP-INPUT> text ASSISTANT-part'
    with answer '<TEMP-OUTPUT> text <TEMP-OUTPUT> text <TEMP-OUTPUT> text </s>', of equal length (no padding)."""
    special = constants.special_token_ids(cfg.llm.vocab_size)
    rng = np.random.default_rng(seed)

    def text(count):
        return list(rng.integers(3, cfg.llm.vocab_size - constants.NUM_ADDED_TOKENS, count))

    rows, length = [], 0
    for input_times, output_times, answer_text in ROWS:
        question = ([1] + text(4) + [special["vid_start"]] + [special["vid_patch"]] * N + [special["vid_end"]]
                    + text(3) + [special["temp_input"]] + text(1) + [special["temp_input"]] + text(2))
        answer = ([special["temp_output"]] + text(1) + [special["temp_output"]] + text(2) + [special["temp_output"]]
                  + text(answer_text) + [2])
        rows.append((question, answer, input_times, output_times))
        length = max(length, len(question) + len(answer))
    batch = {key: np.zeros((len(rows), length), dtype) for key, dtype in (
        ("input_ids", np.int32), ("targets", np.int32), ("loss_mask", np.float32), ("placeholder_times", np.float32),
        ("target_times", np.float32))}
    for r, (question, answer, input_times, output_times) in enumerate(rows):
        question = question[:1] + text(length - len(question) - len(answer)) + question[1:]
        ids = np.array(question + answer, np.int32)
        times = np.zeros(length, np.float32)
        times[ids == special["temp_input"]] = input_times
        times[ids == special["temp_output"]] = output_times
        supervised = np.arange(length) >= len(question)
        batch["input_ids"][r] = ids
        batch["placeholder_times"][r] = times
        batch["loss_mask"][r, :-1] = supervised[1:]
        batch["targets"][r, :-1] = np.where(supervised[1:], ids[1:], 0)
        batch["target_times"][r, :-1] = np.where(ids[1:] == special["temp_output"], times[1:], 0.0) * supervised[1:]
    batch["segment_ids"] = np.ones_like(batch["input_ids"])
    batch["positions"] = np.broadcast_to(np.arange(length, dtype=np.int32), batch["input_ids"].shape).copy()
    batch["features"] = rng.standard_normal((len(rows), N, cfg.vision_feature_dim)).astype(np.float32)
    batch["durations"] = np.ones(len(rows), np.float32)
    return batch


def _jax_side(params, batch, cfg, row_sums: bool):
    """(logits, loss, gradients of the trainable groups): token-mean loss, or the public sum of per-row means."""
    model = Momentor(cfg)

    def loss_fn(p):
        logits = model.apply({"params": p}, batch)[0]
        if not row_sums:
            return compute_loss(logits, batch, cfg)[0], logits
        rows = [{k: v[r:r + 1] for k, v in batch.items()} for r in range(len(batch["input_ids"]))]
        return sum(compute_loss(logits[r:r + 1], row, cfg)[0] for r, row in enumerate(rows)), logits

    (loss, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    trainable = {"projector": grads["projector"], "tpm": grads["tpm"],
                 "llm": {"embed_tokens": grads["llm"]["embed_tokens"]}}
    return np.asarray(logits), float(loss), jax.tree.map(np.asarray, trainable)


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    cfg = _config()
    params = shared_weights.random_params(cfg, seed=3)
    export = shared_weights.export_weights(params, cfg, str(tmp_path_factory.mktemp("weights")))
    batch = _batch(cfg)
    out = {"batch": batch, "config": cfg}
    for name, model_cfg, options in (("ours", cfg, {}),
                                     ("public", torch_momentor.public_config(cfg), torch_momentor.PUBLIC_OPTIONS)):
        reference = torch_momentor.TorchMomentor(export, model_cfg, attn_implementation="eager", **options)
        logits, loss = reference.logits_and_loss(torch_momentor.torch_batch(batch))
        loss.backward()
        out[name] = {"torch": (logits.detach().numpy(), loss.item(), reference.trainable_gradients()),
                     "jax": _jax_side(params, batch, model_cfg, row_sums=name == "public")}
    return out


def _assert_same(jax_side, torch_side):
    (jax_logits, jax_loss, jax_grads), (torch_logits, torch_loss, torch_grads) = jax_side, torch_side
    np.testing.assert_allclose(jax_logits, torch_logits, rtol=0, atol=TOLERANCE)
    assert abs(jax_loss - torch_loss) <= TOLERANCE * abs(torch_loss)
    flat_jax = jax.tree_util.tree_leaves_with_path(jax_grads)
    flat_torch = jax.tree.leaves(torch_grads)
    assert len(flat_jax) == len(flat_torch) == 5
    for (path, ours), theirs in zip(flat_jax, flat_torch):
        scale = float(np.max(np.abs(theirs)))
        assert scale > 0, path
        assert float(np.max(np.abs(ours - theirs))) <= TOLERANCE * scale, jax.tree_util.keystr(path)


@pytest.mark.parametrize("mode", ["public", "ours"])
def test_logits_loss_and_trainable_gradients_agree(sides, mode):
    _assert_same(sides[mode]["jax"], sides[mode]["torch"])


def test_the_forward_pass_is_the_same_with_and_without_the_public_switches(sides):
    np.testing.assert_array_equal(sides["ours"]["jax"][0], sides["public"]["jax"][0])
    np.testing.assert_allclose(sides["ours"]["torch"][0], sides["public"]["torch"][0], rtol=0, atol=TOLERANCE)


def test_loss_difference_is_the_on_token_targets_and_the_reduction(sides):
    cfg, batch = sides["config"], sides["batch"]
    logits = sides["ours"]["jax"][0]
    special = constants.special_token_ids(cfg.llm.vocab_size)
    log_p = np.asarray(jax.nn.log_softmax(logits.astype(np.float64), axis=-1))
    on_token = (batch["targets"] == special["temp_output"]) & (batch["loss_mask"] > 0)
    positions = batch["target_times"] * (N - 1)
    on_token &= positions == np.round(positions)
    assert on_token.sum() == 4  # 0 s, the video's end, and two token times in between
    # Public rows there are all zero: those targets drop out of the sum, not out of the count.
    token = np.round(positions).astype(int)
    on_token_nll = -log_p[on_token, cfg.llm.vocab_size + token[on_token]]
    zeros_cfg = dataclasses.replace(cfg, on_token_target="zeros")
    ours, _ = compute_loss(logits, batch, cfg)
    zeros, _ = compute_loss(logits, batch, zeros_cfg)
    np.testing.assert_allclose(float(ours) - float(zeros), on_token_nll.sum() / batch["loss_mask"].sum(),
                               rtol=1e-5)
    assert float(ours) == pytest.approx(sides["ours"]["jax"][1], rel=1e-6)
    # The public reduction: each row's token mean, summed.
    rows = [compute_loss(logits[r:r + 1], {k: v[r:r + 1] for k, v in batch.items()}, zeros_cfg)[0]
            for r in range(len(ROWS))]
    counts = batch["loss_mask"].sum(axis=1)
    assert counts[0] != counts[1]
    np.testing.assert_allclose(sides["public"]["jax"][1], float(sum(rows)), rtol=1e-6)
    np.testing.assert_allclose(float(zeros), float(np.dot(rows, counts) / counts.sum()), rtol=1e-6)


def test_public_detach_leaves_only_the_video_markers_learning(sides):
    cfg, batch = sides["config"], sides["batch"]
    special = constants.special_token_ids(cfg.llm.vocab_size)
    for side in ("jax", "torch"):
        public = sides["public"][side][2]["llm"]["embed_tokens"]["embedding"]
        ours = sides["ours"][side][2]["llm"]["embed_tokens"]["embedding"]
        assert set(np.flatnonzero(np.any(public != 0, axis=1))) == {special["vid_start"], special["vid_end"]}
        # Every id read before the last position (whose output nothing supervises), but the replaced slots.
        read = set(batch["input_ids"][:, :-1].ravel())
        text_ids = read - {special[k] for k in ("vid_patch", "temp_input", "temp_output")}
        assert set(np.flatnonzero(np.any(ours != 0, axis=1))) == text_ids


def test_reference_label_rows_public_writes_and_ours():
    cfg = dataclasses.replace(config_lib.tiny(), num_temporal_tokens=N)
    vocab_size = cfg.llm.vocab_size
    temp_output = constants.special_token_ids(vocab_size)["temp_output"]
    targets = torch.tensor([7, temp_output, temp_output])
    times = torch.tensor([0.0, 0.5, 0.3])   # 0.5: token 8 exactly; 0.3: 4.8 between tokens 4 and 5
    public = torch_momentor.label_rows(targets, times, torch_momentor.public_config(cfg), positions="public")
    ours = torch_momentor.label_rows(targets, times, cfg)
    for labels in (public, ours):
        assert labels[0].tolist() == torch.nn.functional.one_hot(torch.tensor(7), vocab_size + N).float().tolist()
        assert labels[2, temp_output] == 0 and labels[2].sum() == pytest.approx(1.0)
        assert labels[2, vocab_size + 4] == pytest.approx(0.2) and labels[2, vocab_size + 5] == pytest.approx(0.8)
    assert float(public[1].abs().sum()) == 0.0
    assert ours[1, vocab_size + 8] == 1.0 and float(ours[1].sum()) == 1.0
