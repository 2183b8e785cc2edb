"""Trainer pieces without the real model or data: mesh rules, schedule, FLOPs, configs, the step, the loop's
non-finite stop and SIGTERM save, checkpoints (damage, mismatches, the three layouts). A toy two-matrix model keeps
compiles small."""
import glob
import math
import os
import re
import signal

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo, momentor_7b, tiny
from momentor_jax import checkpoints
from momentor_jax.models.config import MomentorConfig
from momentor_jax.models import config as model_configs
from momentor_jax.training import flops, metrics_writer, optim, sharding, trainer

VOCAB, EMBED, B, L = 32, 16, 8, 12


# ------------------------------------------------------------------------------------------------- toy model
class Toy(nn.Module):
    @nn.compact
    def __call__(self, batch):
        table = self.param("embed_tokens", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                         ("vocab", "embed")), (VOCAB, EMBED))
        x = nn.with_logical_constraint(table[batch["input_ids"]], ("batch", "length", "embed"))
        kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(0.3), ("embed", "mlp")),
                            (EMBED, VOCAB))
        return jnp.tanh(x) @ kernel


def toy_loss(logits, batch):
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["targets"][..., None], -1)[..., 0]
    mask = batch["loss_mask"]
    n = jnp.sum(mask)
    mean = jnp.sum(nll * mask) / jnp.maximum(n, 1.0)
    return mean, {"num_text_tokens": n, "num_temporal_tokens": jnp.float32(0), "text_loss": mean,
                  "temporal_loss": jnp.float32(0)}


def toy_fns():
    toy = Toy()
    # 'projector' trains in 'momentor' mode, 'vision' stays frozen (names from models/partition.py).
    return trainer.ModelFns(
        init=lambda rng, b: {"projector": toy.init(rng, b)["params"],
                             "vision": {"w": nn.with_logical_partitioning(nn.initializers.ones,
                                                                          ("embed",))(rng, (EMBED,))}},
        apply=lambda p, b, rng: toy.apply({"params": p["projector"]}, b) * p["vision"]["w"][0],
        loss=toy_loss)


def toy_batch(seed, nan=False):
    rng = np.random.default_rng(seed)
    mask = (rng.random((B, L)) > 0.3).astype(np.float32)
    if nan:
        mask[0, 0] = np.nan
    return {"input_ids": rng.integers(0, VOCAB, (B, L)).astype(np.int32),
            "targets": rng.integers(0, VOCAB, (B, L)).astype(np.int32),
            "loss_mask": mask, "segment_ids": np.ones((B, L), np.int32)}


class ToyIterator(grain.DatasetIterator):
    """Deterministic batches with get_state/set_state; `on_batch(i)` runs before batch i (1-based) is returned."""

    def __init__(self, nan_at=None, on_batch=None):
        super().__init__()
        self.position, self.nan_at, self.on_batch = 0, nan_at, on_batch

    def __next__(self):
        self.position += 1
        if self.on_batch:
            self.on_batch(self.position)
        return toy_batch(self.position, nan=self.position == self.nan_at)

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def toy_config(**overrides):
    c = tiny.get_config()
    c.batch_size, c.learning_rate, c.warmup_steps, c.total_steps = B, 1e-2, 1, 6
    c.checkpoint_every_steps, c.log_every_steps, c.mesh = 2, 1, (2, 2, 2)
    c.async_checkpointing = False
    for key, value in overrides.items():
        c[key] = value
    return c


def run_toy(tmp_path, iterator, **overrides):
    config = toy_config(**overrides)
    mesh = sharding.make_mesh(config.mesh)
    return trainer.run_loop(config=config, workdir=str(tmp_path), fns=toy_fns(), model_config=model_configs.tiny(),
                            mesh=mesh, data_iterator=iterator, total_steps=config.total_steps,
                            init_batch=toy_batch(0))


# ------------------------------------------------------------------------------------------------- mesh, rules
def test_resolve_mesh_shape_fills_and_rejects():
    assert sharding.resolve_mesh_shape((1, -1, 1), 8) == (1, 8, 1)
    assert sharding.resolve_mesh_shape((2, 2, -1), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="does not divide"):
        sharding.resolve_mesh_shape((3, -1, 1), 8)
    with pytest.raises(ValueError, match="at most one -1"):
        sharding.resolve_mesh_shape((-1, -1, 1), 8)


def test_logical_rules_map_shared_names():
    rules = sharding.LOGICAL_AXIS_RULES
    assert nn.logical_to_mesh_axes(("vocab", "embed"), rules) == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert nn.logical_to_mesh_axes(("layers", "embed", "heads", "head_dim"), rules) == \
        jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    # Activations: batch takes (data, fsdp), so embed stays replicated there.
    assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules) == \
        jax.sharding.PartitionSpec(("data", "fsdp"), None, None)
    overridden = sharding.axis_rules([("embed", None)])
    assert nn.logical_to_mesh_axes(("vocab", "embed"), overridden) == jax.sharding.PartitionSpec("tensor", None)


# ------------------------------------------------------------------------------------------------- optimizer
def test_warmup_cosine_schedule():
    schedule = optim.learning_rate_schedule(2e-5, total_steps=100, warmup_steps=optim.resolve_warmup_steps(100, -1,
                                                                                                           0.01))
    assert float(schedule(0)) == 0.0
    assert math.isclose(float(schedule(1)), 2e-5, rel_tol=1e-6)
    assert math.isclose(float(schedule(50)), 2e-5 * 0.5 * (1 + math.cos(math.pi * 49 / 99)), rel_tol=1e-5)
    assert float(schedule(100)) < 1e-12
    assert optim.resolve_warmup_steps(1000, 5, 0.5) == 5


# ------------------------------------------------------------------------------------------------- FLOPs
def test_training_flops_match_maxtext_when_all_train():
    cfg = model_configs.tiny(use_cached_features=True)
    llm, L_ = cfg.llm, 64
    hd = llm.resolved_head_dim
    params = llm.num_layers * (llm.hidden_size * hd * (2 * llm.num_heads + 2 * llm.num_kv_heads)
                               + 3 * llm.hidden_size * llm.intermediate_size)
    params += llm.hidden_size * (llm.vocab_size + cfg.num_temporal_tokens)
    attention = 3 * llm.num_layers * 2 * L_ * L_ * llm.num_heads * hd
    projector = 6 * cfg.num_frames * cfg.vision.hidden_size * llm.hidden_size
    expected = 6 * params * L_ + attention + projector
    assert flops.training_flops_per_example(cfg, L_, "all") == pytest.approx(expected)
    # Frozen LLM body: no weight gradients there, so strictly less work.
    assert flops.training_flops_per_example(cfg, L_, "momentor") < expected


def test_training_flops_of_a_frozen_vision_tower_are_its_forward_only():
    frames, features = model_configs.tiny(), model_configs.tiny(use_cached_features=True)
    tower_forward_and_backward = (flops.training_flops_per_example(frames, 64, "all")
                                  - flops.training_flops_per_example(features, 64, "all"))
    assert tower_forward_and_backward > 0
    assert flops.training_flops_per_example(frames, 64, "all_but_vision") == pytest.approx(
        flops.training_flops_per_example(features, 64, "all") + tower_forward_and_backward / 3)


def test_progress_line():
    line = metrics_writer.format_progress(10, 40, {"loss": 1.5, "learning_rate": 2e-5, "mfu": 0.41}, 75.0)
    assert line.startswith("step 10/40 (25.0%)") and "loss 1.5" in line and "mfu 41.00%" in line
    assert line.endswith("eta 0:01:15")
    packing_scalars = {"loss": 1.5, "examples_per_step": 9.0, "packing_efficiency": 0.93}
    unpacked = metrics_writer.format_progress(10, 40, packing_scalars, 75.0)
    assert "ex/step" not in unpacked and "packed" not in unpacked
    packed = metrics_writer.format_progress(10, 40, packing_scalars, 75.0, packing=True)
    assert "ex/step 9.0" in packed and "packed 93.0%" in packed


# ------------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("module", [tiny, demo, momentor_7b])
@pytest.mark.parametrize("variant", [None, "gesm", "instruct", "stage2"])
def test_configs_build_model_and_tie_values(module, variant):
    c = module.get_config(variant)
    model = MomentorConfig.from_dict(c.model)
    assert model.num_frames == c.num_frames
    assert model.llm.remat_policy == c.remat_policy
    assert c.max_length <= model.llm.max_position_embeddings
    c.num_frames = 4
    assert c.model.num_frames == 4
    assert isinstance(module.sweep(), list) and all(isinstance(run, dict) for run in module.sweep())
    for key in ("total_steps", "batch_size", "seed", "mesh", "checkpoint_every_steps", "log_every_steps",
                "init_from", "trainable", "learning_rate", "warmup_steps", "weight_decay", "grad_clip_norm",
                "grad_accum_steps", "remat_policy", "keep_checkpoints", "peak_flops_per_device", "tokenizer"):
        assert key in c


def test_paper_config_values():
    c = momentor_7b.get_config("gesm")
    assert (c.batch_size, c.learning_rate, c.warmup_fraction, c.weight_decay, c.num_epochs, c.max_length) == \
        (32, 2e-5, 0.01, 0.0, 2, 2048)
    assert c.model.llm.dtype == "bfloat16" and c.model.llm.param_dtype == "float32"
    assert c.trainable == "momentor" and momentor_7b.get_config("instruct").variant == "instruct"
    model = model_configs.MomentorConfig.from_dict(c.model)  # the public code's behaviours, except on-token targets
    assert (model.text_embedding_grad, model.added_token_whitespace, model.temporal_init, model.on_token_target) == \
        ("video_markers", "strip", "public", "one")
    with pytest.raises(ValueError, match="unknown config variant"):
        momentor_7b.get_config("stage3")


def test_model_config_names_are_checked():
    for field in ("temporal_init", "on_token_target", "added_token_whitespace"):
        with pytest.raises(ValueError, match=field):
            MomentorConfig(**{field: "nope"})


def test_tokenizer_follows_the_model_configs_whitespace_mode(tmp_path):
    from momentor_jax.data import synthetic
    from momentor_jax.data import tokenizer as tokenizer_lib
    model_path = tokenizer_lib.train_sentencepiece(synthetic.tokenizer_texts(), str(tmp_path / "sp"), 300)
    tokenizer_lib.MomentorTokenizer(model_path, 16).save(tmp_path / "tok")
    config = model_configs.tiny(added_token_whitespace="strip")
    for path in (model_path, str(tmp_path / "tok")):
        assert trainer.load_tokenizer(path, config).added_token_whitespace == "strip"
        assert trainer.load_tokenizer(path, model_configs.tiny()).added_token_whitespace == "keep"


# ------------------------------------------------------------------------------------------------- the step
def _toy_losses(mesh_shape, accum, steps=3):
    config = toy_config(grad_accum_steps=accum)
    mesh = sharding.make_mesh(mesh_shape)
    step = trainer.build_train_step(config, model_configs.tiny(), mesh, 10, toy_fns(), toy_batch(0))
    state = step.factory.random_init(0)
    losses = []
    for i in range(steps):
        state, metrics = step(state, sharding.global_batch(toy_batch(i + 1), mesh))
        losses.append(float(metrics["loss"]))
    return np.array(losses), state


def test_gradient_accumulation_matches_one_big_batch():
    whole, state = _toy_losses((2, 2, 2), accum=1)
    accumulated, state_accum = _toy_losses((2, 2, 2), accum=2)
    np.testing.assert_allclose(accumulated, whole, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(state_accum.trainable["projector"]["kernel"]),
                               np.asarray(state.trainable["projector"]["kernel"]), rtol=1e-4, atol=1e-6)
    # Frozen: no optimizer state at all.
    assert "vision" not in jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(state.opt_state)[0])
    assert state.trainable["projector"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_non_finite_step_stops_and_keeps_last_checkpoint(tmp_path):
    with pytest.raises(trainer.NonFiniteError, match="step 3: non-finite"):
        run_toy(tmp_path, ToyIterator(nan_at=3))
    ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), save_every_steps=2)
    try:
        assert ckpt.all_steps() == [2]
    finally:
        ckpt.close()


def test_sigterm_saves_and_exits(tmp_path):
    handler_before = signal.getsignal(signal.SIGTERM)
    result = run_toy(tmp_path, ToyIterator(on_batch=lambda i: i == 3 and os.kill(os.getpid(), signal.SIGTERM)))
    assert result.stopped_early and result.step == 3
    assert signal.getsignal(signal.SIGTERM) is handler_before
    ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), save_every_steps=2)
    try:
        assert ckpt.all_steps() == [2, 3]
    finally:
        ckpt.close()
    # Resuming finishes the run from step 3 with the data iterator where it was.
    iterator = ToyIterator()
    resumed = run_toy(tmp_path, iterator)
    assert [s for s, _ in resumed.history] == [4, 5, 6] and iterator.position == 6


def test_fresh_run_that_needs_pretrained_weights_refuses_random_init(tmp_path):
    with pytest.raises(ValueError, match="init_from to the GESM run's workdir"):
        run_toy(tmp_path, ToyIterator(), requires_init_from=True, variant="instruct")


def _damage(step_dir, how):
    """Deletes or truncates the files of a step's params item (what a preemption or a full disk leaves)."""
    files = sorted(p for p in glob.glob(os.path.join(step_dir, "params", "**", "*"), recursive=True)
                   if os.path.isfile(p) and "/d/" in p)
    assert files, step_dir
    if how == "metadata":
        os.remove(os.path.join(step_dir, "params", "_METADATA"))
    for path in files:
        if how == "deleted":
            os.remove(path)
        elif how == "truncated":
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)


@pytest.fixture(scope="module")
def clean_toy_run(tmp_path_factory):
    """The toy run without any interruption: (workdir, step 6 parameters)."""
    workdir = tmp_path_factory.mktemp("clean")
    return str(workdir), run_toy(workdir, ToyIterator()).state.params


@pytest.fixture(scope="module")
def clean_toy_params(clean_toy_run):
    return jax.tree.leaves(clean_toy_run[1])


@pytest.mark.parametrize("how", ["deleted", "truncated", "metadata"])
def test_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes(tmp_path, how, caplog, clean_toy_params):
    stop_at = lambda i: i == 5 and os.kill(os.getpid(), signal.SIGTERM)  # noqa: E731
    first = run_toy(tmp_path, ToyIterator(on_batch=stop_at))
    assert first.stopped_early and first.step == 5
    _damage(str(tmp_path / "checkpoints" / "5"), how)
    iterator = ToyIterator()
    with caplog.at_level("WARNING"):
        resumed = run_toy(tmp_path, iterator)
    assert [s for s, _ in resumed.history] == [5, 6] and iterator.position == 6  # from step 4, data included
    assert "checkpoint step 5 is damaged" in caplog.text and "5.damaged" in caplog.text
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "5.damaged", "6"]  # keep_checkpoints=2
    # The same run without the damage gives the same parameters at step 6.
    for a, b in zip(jax.tree.leaves(resumed.state.params), clean_toy_params):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_no_intact_checkpoint_is_an_error_naming_what_was_set_aside(tmp_path):
    run_toy(tmp_path, ToyIterator(), total_steps=2)
    _damage(str(tmp_path / "checkpoints" / "2"), "deleted")
    with pytest.raises(trainer.StartupError, match=r"no intact checkpoint; damaged steps set aside: .*2\.damaged"):
        run_toy(tmp_path, ToyIterator())


def test_a_checkpoint_of_other_shapes_names_the_parameter(tmp_path):
    run_toy(tmp_path, ToyIterator(), total_steps=2)
    global VOCAB
    saved, VOCAB = VOCAB, VOCAB + 4
    try:
        with pytest.raises(trainer.StartupError, match=r"parameter projector/embed_tokens has shape \(32, 16\), "
                                                      r"the model wants \(36, 16\)"):
            run_toy(tmp_path, ToyIterator())
    finally:
        VOCAB = saved
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]  # a config change, not damage: nothing moved


def test_a_checkpoint_of_another_process_count_is_refused_not_set_aside(tmp_path):
    run_toy(tmp_path, ToyIterator(), total_steps=2)
    data = tmp_path / "checkpoints" / "2" / "data"
    os.rename(data / "process_0-of-1.json", data / "process_0-of-2.json")
    with pytest.raises(trainer.StartupError, match=r"process_0-of-1\.json: no data-iterator state for this process "
                                                  r"\(found \['process_0-of-2\.json'\]\); resuming needs the same "
                                                  "number of processes"):
        run_toy(tmp_path, ToyIterator())
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def test_load_params_reads_the_three_layouts_and_names_mismatches(clean_toy_run, tmp_path):
    workdir, params = clean_toy_run
    step_dir = os.path.join(workdir, "checkpoints", "6")
    assert checkpoints.locate(workdir) == checkpoints.Located("run", workdir, step_dir, 6)
    checkpoints.save_params(str(tmp_path / "converted"), params, model_configs.tiny())
    for path in (workdir, str(tmp_path / "converted")):  # orbax's commit time names the weights
        assert isinstance(checkpoints.identity(path)["saved_at"], int)
    mesh = sharding.make_mesh((2, 2, 2))
    replicated = sharding.replicated(mesh)
    shardings = {"projector": {"embed_tokens": jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp")),
                               "kernel": replicated}, "vision": {"w": replicated}}
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings)
    for path in (workdir, step_dir, str(tmp_path / "converted")):
        host, placed = checkpoints.load_params(path), checkpoints.load_params(path, abstract)
        for expected, got, on_mesh, want in zip(jax.tree.leaves(params), jax.tree.leaves(host),
                                                jax.tree.leaves(placed), jax.tree.leaves(shardings)):
            assert isinstance(got, np.ndarray) and on_mesh.sharding == want
            np.testing.assert_array_equal(got, np.asarray(expected))
            np.testing.assert_array_equal(np.asarray(on_mesh), np.asarray(expected))
    # A model without the vision tower (cached features) leaves the saved tower unread.
    assert set(checkpoints.load_params(workdir, {"projector": abstract["projector"]})) == {"projector"}

    other = {"projector": {**abstract["projector"], "bias": jax.ShapeDtypeStruct((4,), jnp.float32)},
             "vision": abstract["vision"]}
    with pytest.raises(checkpoints.CheckpointMismatch, match=re.escape(
            f"{step_dir}/params: parameter names differ from the model: missing ['projector/bias'], unexpected []")):
        checkpoints.load_params(workdir, other)
    del other["projector"]["bias"]
    other["projector"]["kernel"] = jax.ShapeDtypeStruct((EMBED, 3), jnp.float32)
    with pytest.raises(checkpoints.CheckpointMismatch, match=re.escape(
            f"{step_dir}/params: parameter projector/kernel has shape ({EMBED}, {VOCAB}), "
            f"the model wants ({EMBED}, 3)")):
        checkpoints.load_params(workdir, other)
    with pytest.raises(FileNotFoundError, match="neither a training workdir, a step directory"):
        checkpoints.load_params(str(tmp_path))


def test_packing_and_features_settings_of_the_7b_config():
    c = momentor_7b.get_config("gesm")
    assert c.data.packing and c.data.use_features and c.model.use_cached_features
    assert trainer.packing_options(c).max_items == 5 and trainer.videos_per_row(c) == 5
    c.data.dir = "prepared"
    assert trainer.data_paths(c)["frames"] == os.path.join("prepared", "features")
    frames = momentor_7b.get_config("instruct_frames")
    assert frames.variant == "instruct" and not frames.data.use_features and not frames.model.use_cached_features
    frames.data.dir = "prepared"
    assert trainer.data_paths(frames)["frames"] == os.path.join("prepared", "frames")

    bad = momentor_7b.get_config("gesm")
    bad.data.max_videos_per_row = 6
    with pytest.raises(ValueError, match="data.max_videos_per_row 6 > data.max_segments 5"):
        trainer.packing_options(bad)
    bad.data.max_videos_per_row, bad.data.packing_buffer = 5, 0
    with pytest.raises(ValueError, match="data.packing_buffer must be an integer >= 1"):
        trainer.packing_options(bad)
    bad.data.packing = False
    assert trainer.packing_options(bad) is None and trainer.videos_per_row(bad) == 0


def test_steps_per_epoch_count_dialogues_when_packed():
    c = tiny.get_config()
    c.total_steps, c.num_epochs, c.batch_size = -1, 2, 8
    assert trainer.resolve_total_steps(c, 100) == 2 * 12                  # 8 dialogues per step, remainder dropped
    assert trainer.resolve_total_steps(c, 100, examples_per_row=4.0) == 2 * 4   # 32 per step: ceil(100 / 32)
