"""The Grain training/eval loaders on tiny rendered data: determinism, process slices, resume, bad records, workers."""
import json
import logging
import os
import shutil

import numpy as np
import pytest

from momentor_jax import constants
from momentor_jax.data import frames as frames_lib
from momentor_jax.data import encode, loader, tfrecord, video_input
from momentor_jax.tools.bench import loader_data

NUM_VIDEOS, NUM_FRAMES, IMAGE_SIZE, MAX_LENGTH, NUM_TEMPORAL = 6, 8, 32, 256, 16
GLOBAL_BATCH = 4  # 6 videos x 3 examples = 18 -> epochs of 16 examples, 4 global batches


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return loader_data.render_dataset(str(tmp_path_factory.mktemp("loader_data")), NUM_VIDEOS, NUM_FRAMES,
                                      IMAGE_SIZE, num_shards=2, missing_videos=1)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return loader_data.make_tokenizer(str(tmp_path_factory.mktemp("loader_sp")), NUM_TEMPORAL)


def config(data, **overrides):
    return {"examples": data["examples"], "frames": data["frames"], "read_threads": 2,
            "system_prompt": loader_data.SHORT_SYSTEM_PROMPT, **overrides}


def train_loader(data, tokenizer, **kwargs):
    data_config = kwargs.pop("data_config", None) or config(data)
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("global_batch_size", GLOBAL_BATCH)
    return loader.make_train_loader(data_config, tokenizer=tokenizer, num_frames=kwargs.pop("num_frames", NUM_FRAMES),
                                    max_length=MAX_LENGTH, **kwargs)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def fingerprints(batches):
    """One hashable value per example: its tokens, times and duration."""
    out = []
    for batch in batches:
        for i in range(len(batch["durations"])):
            out.append((batch["input_ids"][i].tobytes(), batch["placeholder_times"][i].tobytes(),
                        batch["target_times"][i].tobytes(), float(batch["durations"][i])))
    return out


def test_batches_have_the_contract_shapes(data, tokenizer):
    iterator = train_loader(data, tokenizer)
    batch = next(iterator)
    expected = {"input_ids": np.int32, "targets": np.int32, "loss_mask": np.float32, "segment_ids": np.int32,
                "positions": np.int32, "placeholder_times": np.float32, "target_times": np.float32}
    assert set(batch) == set(expected) | {"frames", "durations"}
    assert set(batch) <= set(constants.BATCH_KEYS)
    for key, dtype in expected.items():
        assert batch[key].shape == (GLOBAL_BATCH, MAX_LENGTH) and batch[key].dtype == dtype, key
    assert batch["frames"].shape == (GLOBAL_BATCH, NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert batch["frames"].dtype == np.uint8
    assert batch["durations"].shape == (GLOBAL_BATCH,) and batch["durations"].dtype == np.float32
    durations = {s.duration for s in data["specs"]}
    assert set(batch["durations"].tolist()) <= durations
    assert batch["segment_ids"].sum() > 0 and batch["loss_mask"].sum() > 0
    # 6 videos with records x 3 examples; the 3 examples of the video without a record are counted.
    assert iterator.num_examples == 3 * NUM_VIDEOS and iterator.num_missing_videos == 3


def test_same_seed_same_batches_other_seed_differs(data, tokenizer):
    first = take(train_loader(data, tokenizer, seed=7), 5)
    again = take(train_loader(data, tokenizer, seed=7), 5)
    assert_same_batches(first, again)
    other = take(train_loader(data, tokenizer, seed=8), 5)
    assert fingerprints(first) != fingerprints(other)


def test_epochs_are_reshuffled_and_each_covers_distinct_examples(data, tokenizer):
    batches_per_epoch = 16 // GLOBAL_BATCH
    batches = take(train_loader(data, tokenizer, num_epochs=2), 2 * batches_per_epoch)
    epoch0, epoch1 = fingerprints(batches[:batches_per_epoch]), fingerprints(batches[batches_per_epoch:])
    assert len(set(epoch0)) == 16 and len(set(epoch1)) == 16
    assert epoch0 != epoch1


def test_finite_epochs_stop_and_drop_the_remainder(data, tokenizer):
    batches = list(train_loader(data, tokenizer, num_epochs=1))
    assert len(batches) == 18 // GLOBAL_BATCH


def test_process_slices_partition_an_epoch(data, tokenizer):
    per_process = []
    for process_index in range(2):
        iterator = train_loader(data, tokenizer, num_epochs=1, process_index=process_index, process_count=2)
        batches = list(iterator)
        assert len(batches) == 4 and all(b["input_ids"].shape[0] == GLOBAL_BATCH // 2 for b in batches)
        per_process.append(fingerprints(batches))
    assert not set(per_process[0]) & set(per_process[1])
    union = set(per_process[0]) | set(per_process[1])
    assert len(union) == 16
    # The union is the single-process epoch (the same shuffle, the same 16 examples kept).
    single = set(fingerprints(list(train_loader(data, tokenizer, num_epochs=1))))
    assert union == single


def test_resume_from_saved_state_gives_the_same_next_batches(data, tokenizer):
    reference = train_loader(data, tokenizer, seed=3)
    take(reference, 3)
    state = json.loads(json.dumps(reference.get_state()))  # must survive a JSON checkpoint
    expected = take(reference, 4)  # crosses into the second epoch (4 batches per epoch)

    resumed = train_loader(data, tokenizer, seed=3)
    resumed.set_state(state)
    assert_same_batches(take(resumed, 4), expected)


def test_resume_through_orbax_checkpoint_manager(data, tokenizer, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    reference = train_loader(data, tokenizer, seed=5)
    take(reference, 2)
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
    with ocp.CheckpointManager(tmp_path / "ckpt", options=options,
                               item_handlers={"data": grain.checkpoint.CheckpointHandler()}) as manager:
        manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(reference)))
        manager.wait_until_finished()
    expected = take(reference, 3)

    resumed = train_loader(data, tokenizer, seed=5)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_handlers={"data": grain.checkpoint.CheckpointHandler()}) \
            as manager:
        assert manager.latest_step() == 2
        manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    assert_same_batches(take(resumed, 3), expected)


def test_eval_pass_is_ordered_complete_and_skips_missing_videos(data, tokenizer):
    examples = loader.make_eval_examples(config(data), tokenizer=tokenizer, num_frames=NUM_FRAMES,
                                         max_length=MAX_LENGTH)
    items = list(examples)
    assert len(items) == len(examples) == 3 * NUM_VIDEOS
    assert examples.num_missing_videos == 3 and examples.num_skipped_records == 0
    ids = [item["id"] for item in items]
    assert set(ids) == {s.video_id for s in data["specs"]}
    assert not set(ids) & set(data["missing_ids"])
    # File order: examples-0.jsonl first, then examples-1.jsonl, lines in order, the missing video's lines left out.
    lines = [json.loads(line) for path in data["examples"] for line in open(path)]
    assert [item["example"] for item in items] == [e for e in lines if e["id"] not in data["missing_ids"]]
    # Each item is its own example joined to its own video.
    for item in items[::4]:
        record = examples.videos.get(item["id"])
        np.testing.assert_array_equal(item["frames"], record["frames"])
        assert item["durations"] == np.float32(record["duration"])
        encoded = encode.encode_example(item["example"], tokenizer, record["duration"], NUM_FRAMES, MAX_LENGTH,
                                        system_prompt=loader_data.SHORT_SYSTEM_PROMPT)
        for key, value in encoded.items():
            np.testing.assert_array_equal(item[key], value, err_msg=key)

    halves = [list(loader.make_eval_examples(config(data), tokenizer=tokenizer, num_frames=NUM_FRAMES,
                                             max_length=MAX_LENGTH, process_index=i, process_count=2))
              for i in range(2)]
    assert sorted(json.dumps(x["example"]) for h in halves for x in h) == sorted(json.dumps(x["example"])
                                                                                  for x in items)


def _copy_dataset(data, out_dir):
    out_dir = str(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    copy = dict(data)
    copy["examples"] = [shutil.copy(p, out_dir) for p in data["examples"]]
    shards = frames_lib.expand_paths(data["frames"])
    for path in shards:
        shutil.copy(path, out_dir)
        shutil.copy(tfrecord.index_path(path), out_dir)
    copy["frames"] = os.path.join(out_dir, os.path.basename(data["frames"]))
    return copy, [os.path.join(out_dir, os.path.basename(p)) for p in shards]


def _flip_byte_inside_record(shard, record=0):
    index = tfrecord.load_index(shard, key_fn=frames_lib.record_video_id)
    position = index.offsets[record] + 12 + index.lengths[record] // 2  # inside the payload
    with open(shard, "r+b") as f:
        f.seek(position)
        value = f.read(1)[0]
        f.seek(position)
        f.write(bytes([value ^ 0xFF]))
    stat = os.stat(shard)  # keep the sidecar current so the damage is found at read time, not by a rescan
    index.size, index.mtime_ns = stat.st_size, stat.st_mtime_ns
    tfrecord.save_index(shard, index)
    return index.keys[record]


def _rewrite_with_broken_jpeg(shard, record=1):
    """Rewrites `shard` with record `record` holding a truncated JPEG (the record's CRCs are valid)."""
    payloads = list(tfrecord.iter_records(shard))
    example = frames_lib.tf_example_pb2.Example.FromString(payloads[record])
    jpegs = example.features.feature["frames"].bytes_list.value
    jpegs[2] = jpegs[2][:20]
    payloads[record] = example.SerializeToString()
    video_id = frames_lib.record_video_id(payloads[record])
    os.remove(tfrecord.index_path(shard))
    with tfrecord.TFRecordWriter(shard) as writer:
        for payload in payloads:
            writer.write(payload, key=frames_lib.record_video_id(payload))
    return video_id


def test_corrupt_records_are_skipped_counted_and_named(data, tokenizer, tmp_path, caplog):
    damaged, shards = _copy_dataset(data, tmp_path)
    crc_video = _flip_byte_inside_record(shards[0], record=0)
    jpeg_video = _rewrite_with_broken_jpeg(shards[1], record=1)

    with caplog.at_level(logging.WARNING):
        examples = loader.make_eval_examples(config(damaged), tokenizer=tokenizer, num_frames=NUM_FRAMES,
                                             max_length=MAX_LENGTH)
        items = list(examples)
    assert examples.num_skipped_records == 6  # 3 examples of each damaged video
    assert len(items) == 3 * NUM_VIDEOS - 6
    assert not {crc_video, jpeg_video} & {item["id"] for item in items}
    assert "CRC mismatch" in caplog.text and shards[0] in caplog.text
    assert "not a readable JPEG" in caplog.text and jpeg_video in caplog.text

    # Training keeps full batches and counts what it skipped.
    iterator = train_loader(damaged, tokenizer, data_config=config(damaged))
    batches = take(iterator, 8)
    assert all(b["frames"].shape[0] == GLOBAL_BATCH for b in batches)
    assert iterator.num_skipped_records > 0
    assert iterator.get_state()["num_skipped_records"] == iterator.num_skipped_records


def test_everything_failing_fails_loudly(data, tokenizer, tiny_vision, tmp_path):
    from momentor_jax.data import features

    damaged, shards = _copy_dataset(data, tmp_path)
    for shard in shards:
        for record in range(len(tfrecord.load_index(shard))):
            _flip_byte_inside_record(shard, record)
    with pytest.raises(RuntimeError, match="failed to load"):
        list(train_loader(damaged, tokenizer, data_config=config(damaged), num_epochs=1))
    with pytest.raises(RuntimeError, match="none of the"):
        list(loader.make_eval_examples(config(damaged), tokenizer=tokenizer, num_frames=NUM_FRAMES,
                                       max_length=MAX_LENGTH))
    with pytest.raises(RuntimeError, match="no frame record"):
        features.extract_features(damaged["frames"], str(tmp_path / "features"), *tiny_vision)
    assert not [name for name in os.listdir(tmp_path / "features") if name.endswith(".tfrecord")]


def test_no_examples_with_a_video_is_an_error(data, tokenizer, tmp_path):
    path = tmp_path / "orphans.jsonl"
    path.write_text(json.dumps({"id": "not-a-video", "conversations": []}) + "\n")
    with pytest.raises(ValueError, match="none of the 1 examples"):
        train_loader(data, tokenizer, data_config=config(data, examples=[str(path)]))


def test_unreadable_jsonl_lines_are_skipped(data, tokenizer, tmp_path, caplog):
    path = tmp_path / "mixed.jsonl"
    good = open(data["examples"][0]).readline()
    path.write_text(good + "{not json\n" + json.dumps({"no_id": 1}) + "\n\n" + good)
    with caplog.at_level(logging.WARNING):
        examples, video_ids = loader.scan_jsonl([str(path)])
    assert len(examples) == 2 and examples[1] == json.loads(good)
    assert list(video_ids) == [json.loads(good)["id"]] * 2
    assert "skipped 2 unreadable example lines" in caplog.text and f"{path}:2" in caplog.text


def test_frames_are_resampled_to_the_model_frame_count(data, tokenizer):
    examples = loader.make_eval_examples(config(data), tokenizer=tokenizer, num_frames=3, max_length=MAX_LENGTH)
    item = next(iter(examples))
    record = examples.videos.get(item["id"])
    # Stored at 8 times i * T / 7; the model wants 0, T/2, T: frames 0, 3 or 4 (nearest to T/2: 3.5 -> 3), 7.
    np.testing.assert_array_equal(item["frames"], record["frames"][[0, 3, 7]])
    assert video_input.nearest_frames(np.arange(5.0), 4.0, 5).tolist() == [0, 1, 2, 3, 4]
    assert video_input.nearest_frames(np.linspace(0, 10, 11), 10.0, 4).tolist() == [0, 3, 7, 10]


@pytest.mark.parametrize("num_frames", [NUM_FRAMES, 3])
def test_evaluate_reads_every_record_as_training_does(data, tokenizer, num_frames):
    """evaluate.VideoSource and the loader give identical arrays and durations for each video, also when the
    records (8 frames) must be resampled to the model's 3."""
    from momentor_jax.evaluate import VideoSource
    from momentor_jax.models import config as model_configs

    model = model_configs.tiny(num_frames=num_frames)
    assert model.vision.image_size == IMAGE_SIZE
    source = VideoSource(model, frames_dir=data["frames"])
    seen = set()
    for item in loader.make_eval_examples(config(data), tokenizer=tokenizer, num_frames=num_frames,
                                          max_length=MAX_LENGTH, image_size=IMAGE_SIZE):
        if item["id"] in seen:
            continue
        seen.add(item["id"])
        frames, duration = source.get(item["id"])
        assert frames.dtype == item["frames"].dtype == np.uint8
        assert frames.shape == (num_frames, IMAGE_SIZE, IMAGE_SIZE, 3)
        np.testing.assert_array_equal(frames, item["frames"])
        assert np.float32(duration) == item["durations"]
    assert len(seen) == NUM_VIDEOS
    batch = next(train_loader(data, tokenizer, num_frames=num_frames, image_size=IMAGE_SIZE))
    assert batch["frames"].shape == (GLOBAL_BATCH, num_frames, IMAGE_SIZE, IMAGE_SIZE, 3)


def test_feature_records_give_features_instead_of_frames(data, tokenizer, tmp_path):
    feature_dim = 5
    rng = np.random.default_rng(0)
    prefix = str(tmp_path / "features")
    stored = {}
    with tfrecord.TFRecordWriter(frames_lib.shard_name(prefix, 0, 1)) as writer:
        for spec in data["specs"]:
            times = np.linspace(0, spec.duration, NUM_FRAMES)
            stored[spec.video_id] = rng.normal(size=(NUM_FRAMES, feature_dim)).astype(np.float32)
            writer.write(frames_lib.make_feature_record(spec.video_id, spec.duration, times, stored[spec.video_id]),
                         key=spec.video_id)
    feature_config = config(data, frames=f"{prefix}-*.tfrecord")
    batch = next(train_loader(data, tokenizer, data_config=feature_config, use_features=True))
    assert "frames" not in batch
    assert batch["features"].shape == (GLOBAL_BATCH, NUM_FRAMES, feature_dim)
    assert batch["features"].dtype == np.float32
    item = next(iter(loader.make_eval_examples(feature_config, tokenizer=tokenizer, num_frames=NUM_FRAMES,
                                               max_length=MAX_LENGTH, use_features=True)))
    np.testing.assert_array_equal(item["features"], stored[item["id"]])
    # Feature records read as frames (or frames as features) is a configuration error: it stops at start-up.
    with pytest.raises(video_input.RecordMismatch, match=r"features-00000-of-00001.tfrecord record \d+: video .*: "
                                                         r"a feature record, but the model takes frames"):
        train_loader(data, tokenizer, data_config=feature_config, num_epochs=1)
    with pytest.raises(video_input.RecordMismatch, match="a frame record, but the model takes features"):
        train_loader(data, tokenizer, use_features=True)


def test_worker_process_gives_the_in_process_batches_and_resumes(data, tokenizer):
    in_process = take(train_loader(data, tokenizer, seed=11), 5)
    worker = train_loader(data, tokenizer, seed=11, worker_count=1)
    try:
        first = take(worker, 2)
        state = worker.get_state()
        rest = take(worker, 3)
    finally:
        worker.close()
    assert_same_batches(first + rest, in_process)

    resumed = train_loader(data, tokenizer, seed=11, worker_count=1)
    try:
        resumed.set_state(json.loads(json.dumps(state)))
        assert_same_batches(take(resumed, 3), rest)
    finally:
        resumed.close()


def test_video_cache_gives_the_same_batches_and_decodes_each_video_once(data, tokenizer, monkeypatch):
    reads = []
    read_record = video_input.read_record
    monkeypatch.setattr(video_input, "read_record", lambda *a: reads.append(a[1]) or read_record(*a))
    expected = take(train_loader(data, tokenizer, seed=5), 12)  # three epochs of 4 batches
    assert len(reads) >= 12 * GLOBAL_BATCH
    video_bytes = NUM_FRAMES * IMAGE_SIZE * IMAGE_SIZE * 3
    for cache_mb, kept in ((1, NUM_VIDEOS), (2.5 * video_bytes / 2 ** 20, 2)):  # room for all, for 2
        reads.clear()
        cached = train_loader(data, tokenizer, seed=5, data_config=config(data, video_cache_mb=cache_mb))
        assert_same_batches(take(cached, 12), expected)
        assert len(cached.video_cache) == kept and cached.video_cache.bytes == kept * video_bytes
        assert len(reads) + cached.video_cache.hits >= 12 * GLOBAL_BATCH and cached.video_cache.hits > 0
        if kept == NUM_VIDEOS:  # each video decoded once (twice when both read threads miss it together)
            assert set(reads) == set(cached.video_cache._videos) and len(reads) <= 2 * NUM_VIDEOS
    with pytest.raises(ValueError, match="video_cache_mb"):
        train_loader(data, tokenizer, data_config=config(data, video_cache_mb=-1))


def test_video_cache_with_a_worker_process_gives_the_in_process_batches(data, tokenizer):
    expected = take(train_loader(data, tokenizer, seed=9), 6)
    worker = train_loader(data, tokenizer, seed=9, worker_count=1, data_config=config(data, video_cache_mb=1))
    try:
        assert_same_batches(take(worker, 6), expected)
    finally:
        worker.close()


# ---------------------------------------------------------------------------------------------------- cached features


@pytest.fixture(scope="module")
def tiny_vision():
    import flax.linen as nn
    import jax
    from momentor_jax.models import config as config_lib
    from momentor_jax.models.vit import VisionTower

    vision = config_lib.tiny().vision
    assert vision.image_size == IMAGE_SIZE
    # Random values on the tower's parameter shapes (tracing only: no compiled init).
    shapes = jax.eval_shape(VisionTower(vision).init, jax.random.key(0),
                            np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(s.dtype), nn.meta.unbox(shapes))
    return params, vision


def test_extracted_features_match_the_tower_and_feed_the_loader(data, tokenizer, tiny_vision, tmp_path, caplog):
    import jax
    from momentor_jax.data import features
    from momentor_jax.models.vit import VisionTower, clip_normalize

    params, vision = tiny_vision
    damaged, shards = _copy_dataset(data, tmp_path / "frames")
    bad_video = _flip_byte_inside_record(shards[1], record=2)
    out_dir = str(tmp_path / "features")
    # 12 frames per call rounds up to 16 over 8 devices: videos of 8 frames straddle calls, the last call is padded.
    with caplog.at_level(logging.WARNING):
        stats = features.extract_features(damaged["frames"], out_dir, params, vision, batch_frames=12, threads=2)
    assert (stats.videos, stats.frames, stats.skipped_records, stats.shards_written) == (
        NUM_VIDEOS - 1, (NUM_VIDEOS - 1) * NUM_FRAMES, 1, 2)
    assert f"{shards[1]} record 2" in caplog.text

    index = frames_lib.FrameRecordIndex(f"{out_dir}/features-*.tfrecord")
    assert set(index.video_ids()) == {s.video_id for s in data["specs"]} - {bad_video}
    frames_index = frames_lib.FrameRecordIndex(data["frames"])
    tower = jax.jit(lambda x: VisionTower(vision).apply({"params": params}, clip_normalize(x)))
    for video_id in index.video_ids()[:2]:
        cached, source = index.get(video_id), frames_index.get(video_id)
        np.testing.assert_allclose(cached["features"], np.asarray(tower(source["frames"])), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(cached["frame_times"], source["frame_times"])
        assert cached["duration"] == source["duration"]

    batch = next(train_loader(data, tokenizer, data_config=config(data, frames=f"{out_dir}/features-*.tfrecord"),
                              use_features=True))
    assert batch["features"].shape == (GLOBAL_BATCH, NUM_FRAMES, vision.hidden_size)

    again = features.extract_features(damaged["frames"], out_dir, params, vision, batch_frames=12)
    assert (again.shards_kept, again.shards_written, again.videos) == (2, 0, 0)


def test_extraction_rejects_frames_of_another_size(data, tiny_vision, tmp_path):
    import dataclasses
    from momentor_jax.data import features

    params, vision = tiny_vision
    with pytest.raises(ValueError, match="the vision tower takes"):
        features.extract_features(data["frames"], str(tmp_path), params, dataclasses.replace(vision, image_size=16))


def test_extract_features_command(data, tiny_vision, tmp_path, capsys):
    import importlib.util
    from momentor_jax import checkpoints
    from momentor_jax.models import config as config_lib

    params, _ = tiny_vision
    checkpoints.save_params(str(tmp_path / "ckpt"), {"vision": params}, config_lib.tiny())
    spec = importlib.util.spec_from_file_location(
        "extract_features", os.path.join(os.path.dirname(__file__), "..", "data", "extract_features.py"))
    command = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(command)
    out_dir = tmp_path / "out"
    assert command.main(["--frames", data["frames"], "--checkpoint", str(tmp_path / "ckpt"), "--out_dir",
                         str(out_dir), "--batch_frames", "16"]) == 0
    assert f"{NUM_VIDEOS} videos ({NUM_VIDEOS * NUM_FRAMES} frames) written in 2 shards" in capsys.readouterr().out
    assert len(frames_lib.FrameRecordIndex(str(out_dir))) == NUM_VIDEOS
    assert command.main(["--frames", data["frames"], "--checkpoint", str(tmp_path / "none"), "--out_dir",
                         str(out_dir)]) == 2
    assert f"checkpoint {tmp_path / 'none'}: no such directory" in capsys.readouterr().err


def test_two_workers_cover_the_epoch_and_resume(data, tokenizer):
    # Each worker batches its own slice of the example order: other batches than in-process, the same examples.
    worker = train_loader(data, tokenizer, seed=2, worker_count=2)
    try:
        first_epoch = take(worker, 16 // GLOBAL_BATCH)
        state = json.loads(json.dumps(worker.get_state()))
        expected = take(worker, 2)
    finally:
        worker.close()
    in_process = list(train_loader(data, tokenizer, seed=2, num_epochs=1))
    assert sorted(fingerprints(first_epoch)) == sorted(fingerprints(in_process))

    resumed = train_loader(data, tokenizer, seed=2, worker_count=2)
    try:
        resumed.set_state(state)
        assert_same_batches(take(resumed, 2), expected)
    finally:
        resumed.close()


@pytest.mark.parametrize("workers", [0, 1])
def test_gcs_loader_gives_the_local_batches_and_stops_when_storage_is_gone(data, tokenizer, gcs_server, gcs_bucket,
                                                                           monkeypatch, workers):
    """Examples and shards on gs:// (indexes built there): the same batches as local files, with and without a
    worker process. Storage unreachable after retries is no bad record: the loader raises, it does not skip."""
    from momentor_jax import fileio, gcs
    monkeypatch.setenv(gcs.ENV_RETRIES, "1")
    examples = [f"{gcs_bucket}/{os.path.basename(p)}" for p in data["examples"]]
    for local, remote in zip(data["examples"], examples):
        fileio.copy(local, remote)
    for shard in sorted(fileio.glob(data["frames"])):
        fileio.copy(shard, f"{gcs_bucket}/frames/{os.path.basename(shard)}")
    remote = config(data, examples=examples, frames=f"{gcs_bucket}/frames")
    local_batches = take(train_loader(data, tokenizer, worker_count=workers), 3)
    iterator = train_loader(data, tokenizer, data_config=remote, worker_count=workers, num_epochs=None)
    assert_same_batches(take(iterator, 3), local_batches)
    assert fileio.exists(f"{gcs_bucket}/frames/{os.path.basename(fileio.glob(data['frames'])[0])}.index")
    gcs_server.proxy.down_after(0)
    with pytest.raises(Exception) as info:
        take(iterator, 20)
    seen, chain = info.value, []
    while seen is not None:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    assert any(isinstance(e, gcs.StorageUnavailableError) for e in chain), repr(info.value)  # also from a worker
    assert iterator.num_skipped_records == 0


def test_feature_extraction_reads_and_writes_gcs(data, tiny_vision, tmp_path, gcs_bucket):
    """Frame shards on gs:// in, feature shards to gs:// out: the bytes the local run writes."""
    from momentor_jax import fileio
    from momentor_jax.data import features
    params, vision = tiny_vision
    for shard in fileio.glob(data["frames"]):
        fileio.copy(shard, f"{gcs_bucket}/frames/{os.path.basename(shard)}")
    local_out, remote_out = str(tmp_path / "features"), f"{gcs_bucket}/features"
    features.extract_features(data["frames"], local_out, params, vision, batch_frames=12)
    stats = features.extract_features(f"{gcs_bucket}/frames", remote_out, params, vision, batch_frames=12)
    assert stats.videos == NUM_VIDEOS and stats.shards_written == 2
    written = sorted(p for p in os.listdir(local_out) if p.endswith(frames_lib.SHARD_SUFFIX))
    assert [os.path.basename(p) for p in fileio.glob(f"{remote_out}/*{frames_lib.SHARD_SUFFIX}")] == written
    for name in written:
        assert fileio.read_bytes(f"{remote_out}/{name}") == (tmp_path / "features" / name).read_bytes(), name
