"""The `loader` bench suite end to end at tiny size: rendered mp4s -> extraction -> Grain loader (0 and 1 workers,
from local files and from a GCS server on loopback) -> ratio to the train step, written to loader.json. Figures
only; no timing thresholds."""
import argparse
import json

from configs import tiny
from momentor_jax.tools.bench import __main__ as bench_main
from momentor_jax.tools.bench import loader as loader_suite

NUM_VIDEOS = 3


def test_loader_suite_writes_every_figure(tmp_path):
    out = tmp_path / "results"
    status = bench_main.main(["loader", "--config", "configs/tiny.py", "--out", str(out), "--workers=0,1",
                              "--num_videos", str(NUM_VIDEOS), "--video_size", "48", "--num_batches", "2",
                              "--warmup_batches", "1", "--rounds", "1", "--extract_repeats", "1",
                              "--stage_examples", "3", "--train_steps", "1", "--train_warmup", "1", "--gcs"])
    assert status == 0
    result = json.loads((out / "loader.json").read_text())

    assert result["suite"] == "loader" and "hardware" in result and "command" in result
    assert result["setup"]["num_frames"] == 8 and result["setup"]["image_size"] == 32
    assert [r["workers"] for r in result["loader"]] == [0, 1]
    for run in result["loader"]:
        assert run["examples_per_s"] > 0 and run["frames_per_s"] > 0
        assert run["skipped_records"] == 0
    assert set(result["ratios"]) == {"0", "1"} and all(r > 0 for r in result["ratios"].values())
    assert result["best_workers"] in (0, 1)
    assert result["ratio"] == max(result["ratios"].values())
    assert result["train"]["examples_per_s"] > 0
    assert isinstance(result["meets_target"], bool)

    gcs = result["gcs"]
    assert [r["workers"] for r in gcs["loader"]] == [0, 1]
    assert all(r["examples_per_s"] > 0 and r["skipped_records"] == 0 for r in gcs["loader"])
    assert set(gcs["vs_local"]) == {"0", "1"} and gcs["best_vs_local_with_workers"] == gcs["vs_local"]["1"]
    assert gcs["meets_target"] == (gcs["vs_local"]["1"] >= 0.5) and gcs["retries"] == 0

    extraction = result["extraction"]
    assert extraction["num_videos"] == NUM_VIDEOS
    assert extraction["videos_per_s"] > 0 and extraction["decode_only_videos_per_s"] > 0
    assert extraction["source_frames_decoded"] > NUM_VIDEOS * 8  # every frame, not only the sampled ones
    stages = result["per_example_ms"]
    for stage in ("jsonl_read", "record_read", "parse_and_jpeg_decode", "tokenize_encode", "whole", "batch_stack"):
        assert stages[stage] > 0, stage


def test_train_json_supplies_the_train_step(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"suite": "train", "step_time_s": {"median_s": 4.0}, "examples_per_s": 0.5}))
    args = argparse.Namespace(train_json=str(path), train_steps=1, train_warmup=0)
    train = loader_suite.train_consumption(args, config=None, batch=None)
    assert train["examples_per_s"] == 0.5 and str(path) in train["source"]


def test_without_the_train_suite_the_real_train_step_is_timed(monkeypatch):
    from momentor_jax.models import momentor  # noqa: PLC0415
    from momentor_jax.models.config import MomentorConfig  # noqa: PLC0415

    monkeypatch.setattr(loader_suite, "_train_suite_measure", lambda: None)
    config = tiny.get_config()
    batch = momentor.example_batch(MomentorConfig.from_dict(config.model), config.batch_size, config.max_length)
    args = argparse.Namespace(train_json=None, train_steps=1, train_warmup=1)
    train = loader_suite.train_consumption(args, config, batch)
    assert train["examples_per_s"] > 0 and train["source"] == "train step timed by the loader suite"
