"""Acceptance tests of the trainer on the tiny Momentor and its own synthetic data (8 simulated CPU devices).

One session-scoped run of the real command (`python -m momentor_jax.train --config=configs/tiny.py`, mesh
(2, 2, 2)) prepares the data and is the reference for the others: single-device loss curve, kill -9 + resume,
restore onto (data=4, fsdp=2), frozen vs trainable parameters, shardings. Subprocesses share a persistent
compilation cache, so the kill/resume runs reuse the reference run's executables.
"""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from tensorboardX.proto import event_pb2

from configs import tiny
from momentor_jax import checkpoints, fileio
from momentor_jax.data import frames as frames_lib
from momentor_jax.data import tfrecord
from momentor_jax.models import config as model_configs
from momentor_jax.models import partition
from momentor_jax.training import sharding, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 6
SHARDED_MESH = "(2,2,2)"


def _env(cache_dir):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONUNBUFFERED="1")
    return env


def _command(workdir, *overrides):
    return [sys.executable, "-m", "momentor_jax.train", "--config=configs/tiny.py", f"--workdir={workdir}",
            f"--config.total_steps={TOTAL_STEPS}", f"--config.mesh={SHARDED_MESH}", *overrides]


def _progress_steps(stdout: str) -> list:
    return [int(line.split()[1].split("/")[0]) for line in stdout.splitlines() if line.startswith("step ")]


def _tensorboard_scalars(workdir, tag) -> dict:
    values = {}
    for path in glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")):
        for record in tfrecord.iter_records(path):
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = value.simple_value
    return values


def _saved_params(workdir, step) -> dict:
    restored = checkpoints.load_params(fileio.join(workdir, "checkpoints", str(step)))
    return {jax.tree_util.keystr(k, simple=True, separator="/"): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(restored)[0]}


def _config(data_dir, **overrides):
    c = tiny.get_config()
    c.data.dir = data_dir
    c.total_steps = TOTAL_STEPS
    for key, value in overrides.items():
        c[key] = value
    return c


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """The tiny config end to end with the real command on mesh (2, 2, 2), preparing its own synthetic data."""
    root = tmp_path_factory.mktemp("train_tiny")
    workdir, cache = root / "reference", root / "jax_cache"
    proc = subprocess.run(_command(workdir), cwd=REPO, env=_env(cache), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return {"root": root, "workdir": str(workdir), "data": str(workdir / "data"), "cache": cache,
            "stdout": proc.stdout}


def test_command_runs_end_to_end_and_writes_tensorboard(reference_run):
    assert _progress_steps(reference_run["stdout"]) == list(range(1, TOTAL_STEPS + 1))
    assert f"done at step {TOTAL_STEPS}" in reference_run["stdout"]
    losses = _tensorboard_scalars(reference_run["workdir"], "train/loss")
    assert sorted(losses) == list(range(1, TOTAL_STEPS + 1))
    assert all(np.isfinite(v) and v > 0 for v in losses.values())
    for tag in ("train/text_loss", "train/temporal_loss", "train/learning_rate", "train/grad_norm",
                "train/tokens_per_sec", "train/step_time"):
        assert _tensorboard_scalars(reference_run["workdir"], tag), tag
    assert os.path.exists(os.path.join(reference_run["data"], "READY"))
    assert sorted(os.listdir(os.path.join(reference_run["workdir"], "checkpoints"))) == ["4", "6"]


def test_single_device_matches_sharded_loss_curve(reference_run, tmp_path):
    result = trainer.train(_config(reference_run["data"], mesh=(1, 1, 1)), str(tmp_path))
    single = np.array([m["loss"] for _, m in result.history])
    reference = _tensorboard_scalars(reference_run["workdir"], "train/loss")
    sharded = np.array([reference[s] for s in range(1, TOTAL_STEPS + 1)])
    np.testing.assert_allclose(single, sharded, rtol=1e-5)
    assert single[-1] < single[0]


def test_lm_head_at_supervised_positions_matches_the_sharded_loss_curve(reference_run, tmp_path):
    # The gathered LM head (MomentorConfig.loss_positions, under lax.cond) through the sharded step, trainable
    # subset and all; tests/test_loss_positions.py proves the equality and the fallback on single batches. A row of
    # max_length tokens supervises at most max_length - 1 (the last token has no target), so this always gathers.
    config = _config(reference_run["data"], mesh=(2, 2, 2))
    config.model.loss_positions = config.max_length - 1
    result = trainer.train(config, str(tmp_path))
    gathered = np.array([m["loss"] for _, m in result.history])
    reference = _tensorboard_scalars(reference_run["workdir"], "train/loss")
    np.testing.assert_allclose(gathered, [reference[s] for s in range(1, TOTAL_STEPS + 1)], rtol=1e-5)


@pytest.fixture(scope="module")
def sharded_factory(reference_run):
    """The reference run's state factory on (2, 2, 2) and its initial state (same seed: same values)."""
    config = _config(reference_run["data"])
    model_config = model_configs.tiny()
    factory, _, _ = trainer.build_state_factory(config, model_config, sharding.make_mesh((2, 2, 2)), TOTAL_STEPS,
                                                trainer.momentor_fns(model_config))
    return factory, factory.random_init(config.seed)


def test_frozen_unchanged_trainable_changed_and_state_sharded(reference_run, sharded_factory):
    factory, initial = sharded_factory

    # Shardings follow the rules: embed -> fsdp, vocab/heads/mlp -> tensor, layers unsharded; so does Adam's state.
    # The 305-row vocabulary does not split over tensor=2, so that dimension stays whole (sharding.fit_spec).
    embed = initial.trainable["llm"]["embed_tokens"]["embedding"]
    assert embed.sharding.spec == P(None, "fsdp")
    assert embed.addressable_shards[0].data.shape == (embed.shape[0], embed.shape[1] // 2)
    mu = initial.opt_state[1][0].mu["llm"]["embed_tokens"]["embedding"]
    assert mu.sharding.spec == P(None, "fsdp") and mu.addressable_shards[0].data.shape == (embed.shape[0],
                                                                                           embed.shape[1] // 2)
    frozen_specs = {k: s.spec for k, s in sharding_items(initial.frozen)}
    assert any(k.endswith("kernel") and spec == P(None, "fsdp", "tensor", None) for k, spec in frozen_specs.items())
    # No optimizer state for frozen weights (vision tower, LLaMA layers).
    opt_paths = [k.split("/") for k, _ in sharding_items(initial.opt_state)]
    assert opt_paths and not any("layers" in parts or "vision" in parts for parts in opt_paths)

    trained = _saved_params(reference_run["workdir"], TOTAL_STEPS)
    mask = {jax.tree_util.keystr(k, simple=True, separator="/"): v for k, v in jax.tree_util.tree_flatten_with_path(
        partition.trainable_mask(factory.abstract_params, "momentor"))[0]}
    start = {jax.tree_util.keystr(k, simple=True, separator="/"): np.asarray(v)
             for k, v in jax.tree_util.tree_flatten_with_path(initial.params)[0]}
    assert set(start) == set(trained)
    for name, value in trained.items():
        if mask[name]:
            assert not np.array_equal(value, start[name]), f"trainable {name} did not change"
        else:
            np.testing.assert_array_equal(value, start[name], err_msg=f"frozen {name} changed")
    assert any(mask.values()) and not all(mask.values())


def test_warm_start_from_workdir_and_from_import(reference_run, sharded_factory, tmp_path):
    factory, _ = sharded_factory
    reference = _saved_params(reference_run["workdir"], TOTAL_STEPS)
    from_workdir = trainer.warm_start_params(reference_run["workdir"], factory)
    checkpoints.save_params(str(tmp_path / "imported"), jax.device_get(from_workdir), model_configs.tiny())
    from_import = trainer.warm_start_params(str(tmp_path / "imported"), factory)
    for params in (from_workdir, from_import):
        flat = {jax.tree_util.keystr(k, simple=True, separator="/"): v
                for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
        assert set(flat) == set(reference)
        for name, value in flat.items():
            np.testing.assert_array_equal(np.asarray(value), reference[name], err_msg=name)
            assert value.sharding == _leaf(factory.param_shardings, name)
    state = factory.from_params(from_import, seed=0)
    assert int(state.step) == 0 and not np.any(np.asarray(state.opt_state[1][0].mu["tpm"]["input_embedding"]))

    wrong = jax.device_get(from_workdir)
    wrong["projector"]["kernel"] = wrong["projector"]["kernel"][:, :-1]
    checkpoints.save_params(str(tmp_path / "wrong"), wrong, model_configs.tiny())
    with pytest.raises(ValueError, match="projector/kernel has shape"):
        trainer.warm_start_params(str(tmp_path / "wrong"), factory)


def _leaf(tree, name):
    return {jax.tree_util.keystr(k, simple=True, separator="/"): v
            for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}[name]


def sharding_items(tree):
    return [(jax.tree_util.keystr(k, simple=True, separator="/"), v.sharding)
            for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_restore_on_another_mesh(reference_run, tmp_path):
    """Step 4 of the (2, 2, 2) run, continued on (data=4, fsdp=2): steps 5-6 match the reference."""
    shutil.copytree(os.path.join(reference_run["workdir"], "checkpoints", "4"), tmp_path / "checkpoints" / "4")
    result = trainer.train(_config(reference_run["data"], mesh=(4, 2, 1)), str(tmp_path))
    assert [s for s, _ in result.history] == [5, 6]
    reference = _tensorboard_scalars(reference_run["workdir"], "train/loss")
    np.testing.assert_allclose([m["loss"] for _, m in result.history], [reference[5], reference[6]], rtol=1e-5)
    embed = result.state.trainable["llm"]["embed_tokens"]["embedding"]
    assert dict(embed.sharding.mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert embed.sharding.spec == P("tensor", "fsdp")  # tensor=1 divides the vocabulary


def _checkpoint_done(workdir, step) -> bool:
    if fileio.is_remote(workdir):  # orbax on gs:// marks a finished step with this file instead of renaming
        return fileio.exists(fileio.join(workdir, "checkpoints", str(step), "commit_success.txt"))
    return os.path.isdir(os.path.join(workdir, "checkpoints", str(step)))


def _gcs_inputs(reference_run, bucket, tmp_path) -> dict:
    """The reference run's data (examples, frame shards, tokenizer) uploaded to gs:// without their .index sidecars
    (the trainer builds and writes them there), and an imported checkpoint of its final parameters both locally and
    on gs:// for `init_from`."""
    data = f"{bucket}/data"
    for name in ("gesm_train.jsonl", "tokenizer", "frames"):
        local = os.path.join(reference_run["data"], name)
        if os.path.isdir(local):
            for written in fileio.put_tree(local, fileio.join(data, name)):
                if written.endswith(tfrecord.INDEX_SUFFIX):
                    fileio.remove(written)
        else:
            fileio.copy(local, fileio.join(data, name))
    tree = checkpoints.load_params(fileio.join(reference_run["workdir"], "checkpoints", str(TOTAL_STEPS)))
    local_init, remote_init = str(tmp_path / "init"), f"{bucket}/init"
    for target in (local_init, remote_init):
        checkpoints.save_params(target, tree, model_configs.tiny())
    return {"data": data, "local_init": local_init, "remote_init": remote_init}


@pytest.mark.parametrize("storage", ["local", "gcs"])
def test_kill_and_resume_is_bitwise_identical(reference_run, tmp_path, storage, request):
    """SIGKILL after a checkpoint, then the same command again: the final parameters equal an uninterrupted run's.
    On "gcs" data.dir (examples, frames, tokenizer), init_from and the workdir are all on a GCS server on loopback,
    and the uninterrupted run is a local one with the same inputs."""
    if storage == "local":
        _kill_and_resume(tmp_path, reference_run)
        return
    bucket = request.getfixturevalue("gcs_bucket")  # first: the server's address goes into the environment
    inputs = _gcs_inputs(reference_run, bucket, tmp_path)
    uninterrupted = str(tmp_path / "uninterrupted")
    proc = subprocess.run(_command(uninterrupted, f"--config.data.dir={reference_run['data']}",
                                   f"--config.init_from={inputs['local_init']}"),
                          cwd=REPO, env=_env(reference_run["cache"]), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    workdir = f"{bucket}/run"
    _kill_and_resume(tmp_path, reference_run, (f"--config.init_from={inputs['remote_init']}",),
                     workdir=workdir, data_dir=inputs["data"], reference=_saved_params(uninterrupted, TOTAL_STEPS))
    # The frame index was built and written next to the shards; events and config are there.
    shards = fileio.glob(f"{inputs['data']}/frames/*{frames_lib.SHARD_SUFFIX}")
    assert shards and all(fileio.exists(s + tfrecord.INDEX_SUFFIX) for s in shards)
    assert fileio.glob(f"{workdir}/tensorboard/events.out.tfevents.*")
    assert fileio.exists(f"{workdir}/config.json")


def _kill_and_resume(tmp_path, reference_run, overrides=(), workdir=None, data_dir=None, reference=None):
    """The command with `overrides`, killed (-9) mid-run after a checkpoint, resumed: the same final parameters as
    `reference` (default: the reference run's)."""
    workdir = str(tmp_path / "killed") if workdir is None else workdir
    command = _command(workdir, f"--config.data.dir={data_dir or reference_run['data']}", *overrides)
    env = _env(reference_run["cache"])
    reference = _saved_params(reference_run["workdir"], TOTAL_STEPS) if reference is None else reference
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            seen = []
            deadline = time.monotonic() + 300
            for line in proc.stdout:
                seen.append(line)
                step = _progress_steps(line)
                if step and 3 <= step[0] < TOTAL_STEPS and _checkpoint_done(workdir, 2):
                    break  # mid-run, with a finished checkpoint (and maybe a save in flight)
                assert time.monotonic() < deadline, "".join(seen)
            assert proc.poll() is None, "".join(seen)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    steps = _progress_steps(resumed.stdout)
    assert steps[0] >= 3 and steps[-1] == TOTAL_STEPS, resumed.stdout

    result = _saved_params(str(workdir), TOTAL_STEPS)
    assert set(result) == set(reference)
    for name in reference:
        np.testing.assert_array_equal(result[name], reference[name], err_msg=name)


def test_damaged_latest_checkpoint_is_set_aside_by_the_command(reference_run, tmp_path):
    """The reference run's steps 4 and 6, step 6's parameters truncated: the command says so, sets 6 aside, trains
    5-6 again from 4 and ends on the reference's parameters."""
    workdir = tmp_path / "damaged"
    shutil.copytree(os.path.join(reference_run["workdir"], "checkpoints"), workdir / "checkpoints")
    shutil.copy(os.path.join(reference_run["workdir"], "config.json"), workdir / "config.json")
    for path in glob.glob(str(workdir / "checkpoints" / "6" / "params" / "**" / "d" / "*"), recursive=True):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    command = _command(workdir, f"--config.data.dir={reference_run['data']}")
    resumed = subprocess.run(command, cwd=REPO, env=_env(reference_run["cache"]), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "checkpoint step 6 is damaged" in resumed.stderr and "6.damaged" in resumed.stderr
    assert _progress_steps(resumed.stdout) == [5, 6]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6", "6.damaged"]
    reference = _saved_params(reference_run["workdir"], TOTAL_STEPS)
    result = _saved_params(str(workdir), TOTAL_STEPS)
    for name in reference:
        np.testing.assert_array_equal(result[name], reference[name], err_msg=name)


def test_resuming_with_another_configuration_is_refused_by_name(reference_run, tmp_path):
    workdir = tmp_path / "other"
    shutil.copytree(os.path.join(reference_run["workdir"], "checkpoints", "4"), workdir / "checkpoints" / "4")
    shutil.copy(os.path.join(reference_run["workdir"], "config.json"), workdir / "config.json")
    other_sp = tmp_path / "tokenizer"
    shutil.copytree(os.path.join(reference_run["data"], "tokenizer"), other_sp)
    from sentencepiece import sentencepiece_model_pb2

    from momentor_jax.data import tokenizer as tokenizer_lib
    model_path = other_sp / tokenizer_lib.MODEL_FILENAME
    proto = sentencepiece_model_pb2.ModelProto.FromString(model_path.read_bytes())
    last, before = proto.pieces[-1], proto.pieces[-2]
    last.piece, before.piece = before.piece, last.piece  # same vocabulary size, two ids swapped
    model_path.write_bytes(proto.SerializeToString())
    cases = {"batch_size: 8 -> 16": ["--config.batch_size=16"],
             "variant: 'gesm' -> 'instruct'": [],  # configs/tiny.py:instruct on a :gesm workdir
             "tokenizer_sha256": [f"--config.tokenizer={other_sp}"]}
    processes = {}
    for words, overrides in cases.items():
        command = _command(workdir, f"--config.data.dir={reference_run['data']}", *overrides)
        if "variant" in words:
            command[3] = "--config=configs/tiny.py:instruct"
        processes[words] = subprocess.Popen(command, cwd=REPO, env=_env(reference_run["cache"]),
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for words, process in processes.items():
        _, err = process.communicate(timeout=600)
        assert process.returncode == 2, (words, err[-3000:])
        [line] = [x for x in err.splitlines() if x.startswith("error: ")]
        assert "holds checkpoints of another run configuration" in line and words in line, (words, line)
        assert "Traceback" not in err
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4"]


# ------------------------------------------------------------------------------------------ packed rows
# Rows of 512 tokens hold two to three of the tiny data's ~220-token dialogues (positions restart per dialogue, so the
# position limit only has to cover one).
PACKED = ("--config.data.packing=True", "--config.data.max_segments=3", "--config.data.max_videos_per_row=3",
          "--config.max_length=512", "--config.model.llm.max_position_embeddings=512")


def _packed_config(data_dir, **overrides):
    c = _config(data_dir, **overrides)
    c.data.packing, c.data.max_segments, c.data.max_videos_per_row = True, 3, 3
    c.max_length = 512
    c.model.llm.max_position_embeddings = 512
    return c


@pytest.fixture(scope="session")
def packed_reference_run(reference_run):
    """The reference run's command and data with packing on, mesh (2, 2, 2)."""
    workdir = reference_run["root"] / "packed_reference"
    return {"workdir": str(workdir), "stdout": _run_on_reference_data(reference_run, workdir, *PACKED),
            "cache": reference_run["cache"], "data": reference_run["data"]}


def _run_on_reference_data(reference_run, workdir, *overrides) -> str:
    """The command on the reference run's data (and compilation cache); its stdout."""
    proc = subprocess.run(_command(workdir, f"--config.data.dir={reference_run['data']}", *overrides), cwd=REPO,
                          env=_env(reference_run["cache"]), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc.stdout


def test_packed_run_logs_packing_and_matches_single_device(packed_reference_run, tmp_path):
    examples = _tensorboard_scalars(packed_reference_run["workdir"], "train/examples_per_step")
    efficiency = _tensorboard_scalars(packed_reference_run["workdir"], "train/packing_efficiency")
    epochs = _tensorboard_scalars(packed_reference_run["workdir"], "train/epoch")
    assert sorted(examples) == list(range(1, TOTAL_STEPS + 1))
    assert all(v > 8 for v in examples.values())  # batch 8 rows, more than one dialogue each
    assert all(0.5 < v <= 1.0 for v in efficiency.values())
    assert epochs[TOTAL_STEPS] > epochs[1] > 0
    assert "ex/step" in packed_reference_run["stdout"] and "packed " in packed_reference_run["stdout"]

    result = trainer.train(_packed_config(packed_reference_run["data"], mesh=(1, 1, 1)), str(tmp_path))
    single = np.array([m["loss"] for _, m in result.history])
    reference = _tensorboard_scalars(packed_reference_run["workdir"], "train/loss")
    np.testing.assert_allclose(single, [reference[s] for s in range(1, TOTAL_STEPS + 1)], rtol=1e-5)
    np.testing.assert_allclose([m["examples_per_step"] for _, m in result.history],
                               [examples[s] for s in range(1, TOTAL_STEPS + 1)])


def test_packed_kill_and_resume_is_bitwise_identical(packed_reference_run, tmp_path):
    _kill_and_resume(tmp_path, packed_reference_run, PACKED)


# ------------------------------------------------------------------------------------ evaluation in training
# The first 6 training examples as the held-out set, in global batches of 4 on (2, 2, 2): one full batch and one
# filled with zero-weight copies.
EVALS = ("--config.evals.every_steps=2", "--config.evals.examples=gesm_train.jsonl", "--config.evals.max_examples=6",
         "--config.evals.batch_size=4")


@pytest.fixture(scope="module")
def evals_run(reference_run):
    workdir = reference_run["root"] / "evals"
    return {"workdir": str(workdir), "stdout": _run_on_reference_data(reference_run, workdir, *EVALS)}


def test_evals_match_a_separate_loss_of_the_checkpoint_and_leave_training_unchanged(reference_run, evals_run):
    losses = _tensorboard_scalars(evals_run["workdir"], "eval/loss")
    accuracies = _tensorboard_scalars(evals_run["workdir"], "eval/temporal_acc")
    assert sorted(losses) == sorted(accuracies) == [2, 4, 6]
    lines = [line for line in evals_run["stdout"].splitlines() if line.startswith("eval at step ")]
    assert [int(line.split()[3].rstrip(":")) for line in lines] == [2, 4, 6]
    assert all("| 6 examples" in line for line in lines), lines
    assert _progress_steps(evals_run["stdout"]) == list(range(1, TOTAL_STEPS + 1))

    # Training is bit-identical to the reference run without evaluation.
    trained, reference = _saved_params(evals_run["workdir"], TOTAL_STEPS), _saved_params(reference_run["workdir"],
                                                                                          TOTAL_STEPS)
    assert set(trained) == set(reference)
    for name in reference:
        np.testing.assert_array_equal(trained[name], reference[name], err_msg=name)

    for step in (4, 6):
        loss, accuracy = _separate_eval(evals_run["workdir"], step, reference_run["data"], tiny.get_config())
        np.testing.assert_allclose(losses[step], loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(accuracies[step], accuracy, rtol=1e-5, atol=1e-6)
    assert losses[6] < losses[2]


def _separate_eval(workdir, step, data, config, num_examples=6):
    """Loss and temporal accuracy of the checkpointed parameters at `step` on the first examples of the training
    JSONL, in one unsharded batch."""
    from momentor_jax.data.loader import make_eval_examples
    from momentor_jax.models.loss import compute_loss
    from momentor_jax.models.momentor import Momentor
    from momentor_jax.training.trainer import load_tokenizer

    model_config = model_configs.MomentorConfig.from_dict(config.model)
    examples = make_eval_examples(
        {"examples": os.path.join(data, "gesm_train.jsonl"), "frames": os.path.join(data, "frames"),
         "system_prompt": config.data.system_prompt},
        tokenizer=load_tokenizer(os.path.join(data, "tokenizer"), model_config), num_frames=model_config.num_frames,
        max_length=config.max_length, max_examples=num_examples)
    rows = list(examples)
    assert len(rows) == num_examples
    keys = ("input_ids", "targets", "loss_mask", "segment_ids", "positions", "placeholder_times", "target_times",
            "frames", "durations")
    batch = {k: np.stack([r[k] for r in rows]) for k in keys}
    params = checkpoints.load_params(fileio.join(workdir, "checkpoints", str(step)))
    logits, _ = Momentor(model_config).apply({"params": params}, batch)
    loss, aux = compute_loss(logits, batch, model_config)
    return float(loss), float(aux["temporal_accuracy"])


def test_evals_kill_and_resume_is_bitwise_identical(reference_run, evals_run, tmp_path):
    _kill_and_resume(tmp_path, reference_run, EVALS)
    # The resumed run's own events file (the killed run's may end in a torn record).
    resumed = max(glob.glob(str(tmp_path / "killed" / "tensorboard" / "events.out.tfevents.*")), key=os.path.getmtime)
    values = {}
    for record in tfrecord.iter_records(resumed):
        event = event_pb2.Event.FromString(record)
        values.update({event.step: v.simple_value for v in event.summary.value if v.tag == "eval/loss"})
    assert values[TOTAL_STEPS] == _tensorboard_scalars(evals_run["workdir"], "eval/loss")[TOTAL_STEPS]


def test_evals_config_errors_name_the_key(reference_run, tmp_path):
    base = dict(data=reference_run["data"])
    cases = {"evals.every_steps must be an integer >= 0": {"every_steps": -1},
             "needs evals.examples": {"every_steps": 2},
             "evals.batch_size 3 is not divisible": {"every_steps": 2, "examples": "gesm_train.jsonl",
                                                     "batch_size": 3}}
    for words, evals in cases.items():
        config = _config(base["data"], mesh=(2, 2, 2))
        for key, value in evals.items():
            config.evals[key] = value
        with pytest.raises(trainer.StartupError, match=words):
            trainer.train(config, str(tmp_path / "e"))


def test_evals_of_a_packed_run_use_unpacked_rows_and_leave_training_unchanged(packed_reference_run, tmp_path):
    config = _packed_config(packed_reference_run["data"], mesh=(2, 2, 2))
    config.evals.every_steps, config.evals.examples = 3, "gesm_train.jsonl"
    config.evals.max_examples, config.evals.batch_size = 6, 4
    result = trainer.train(config, str(tmp_path))
    assert [s for s, _ in result.history] == list(range(1, TOTAL_STEPS + 1))
    losses = _tensorboard_scalars(str(tmp_path), "eval/loss")
    assert sorted(losses) == [3, TOTAL_STEPS]
    loss, _ = _separate_eval(str(tmp_path), TOTAL_STEPS, packed_reference_run["data"], config)
    np.testing.assert_allclose(losses[TOTAL_STEPS], loss, rtol=1e-5, atol=1e-6)
    trained, reference = _saved_params(str(tmp_path), TOTAL_STEPS), _saved_params(packed_reference_run["workdir"],
                                                                                  TOTAL_STEPS)
    for name in reference:
        np.testing.assert_array_equal(trained[name], reference[name], err_msg=name)


def _grounding_annotations(data, path, num_videos=2):
    """QVHighlights-style queries on the first training videos, windows in each record's first half."""
    import json
    videos = frames_lib.FrameRecordIndex(os.path.join(data, "frames"))
    vids = []
    with open(os.path.join(data, "gesm_train.jsonl")) as f:
        for line in f:
            vid = json.loads(line)["id"]
            if vid not in vids:
                vids.append(vid)
            if len(vids) == num_videos:
                break
    with open(path, "w") as f:
        for qid, vid in enumerate(vids):
            duration = float(videos.get(vid)["duration"])
            f.write(json.dumps({"qid": qid, "vid": vid, "query": "something moves", "duration": duration,
                                "relevant_windows": [[0.0, round(duration / 2, 2)]]}) + "\n")
    return str(path)


def test_grounding_evals_equal_evaluate_on_the_checkpoint(reference_run, tmp_path):
    from momentor_jax import evaluate

    annotations = _grounding_annotations(reference_run["data"], tmp_path / "grounding.jsonl")
    workdir = tmp_path / "grounding_run"
    stdout = _run_on_reference_data(reference_run, workdir, "--config.evals.grounding_every_steps=3",
                                    f"--config.evals.grounding_annotations={annotations}",
                                    "--config.evals.max_new_tokens=16")
    r1, miou = (_tensorboard_scalars(str(workdir), f"eval/{k}") for k in ("R1_0.5", "mIoU"))
    assert sorted(r1) == sorted(miou) == [3, TOTAL_STEPS]
    lines = [line for line in stdout.splitlines() if line.startswith("eval at step ")]
    assert len(lines) == 2 and all("grounding R1@0.5" in line and "2 queries" in line for line in lines), lines

    out = tmp_path / "out"
    metrics = evaluate.evaluate(str(workdir), "grounding", annotations, str(out),
                                frames_dir=os.path.join(reference_run["data"], "frames"), batch_size=8,
                                max_new_tokens=16, num_timelines=0, progress=False)
    assert metrics["num_queries"] == 2
    np.testing.assert_allclose([r1[TOTAL_STEPS], miou[TOTAL_STEPS]], [metrics["R1@0.5"], metrics["mIoU"]],
                               rtol=1e-6, atol=1e-4)
    # The in-training evaluation wrote what evaluate writes: the same answers, predictions and metrics. Six steps
    # leave the tiny model writing loose times, not windows; test_predict_evaluate.py checks the same equality on
    # answers that state windows.
    written = workdir / "eval_grounding"
    assert sorted(os.listdir(written)) == ["3", str(TOTAL_STEPS)]
    for name in ("answers.jsonl", "predictions.jsonl"):
        assert (written / str(TOTAL_STEPS) / name).read_text() == (out / name).read_text(), name
    import json
    during = json.loads((written / str(TOTAL_STEPS) / "metrics.json").read_text())
    assert during.pop("checkpoint") == str(workdir / "checkpoints" / str(TOTAL_STEPS))
    assert during.pop("predictions").startswith(str(written / str(TOTAL_STEPS)))
    assert during == {k: v for k, v in metrics.items() if k not in ("checkpoint", "predictions")}

    trained, reference = _saved_params(str(workdir), TOTAL_STEPS), _saved_params(reference_run["workdir"],
                                                                                 TOTAL_STEPS)
    for name in reference:
        np.testing.assert_array_equal(trained[name], reference[name], err_msg=name)
