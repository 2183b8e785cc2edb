"""The demo's --quick path end to end: data, both training stages, evaluation with baselines, figure, export."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from momentor_jax import demo

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _query(qid, duration, start, end):
    return {"qid": qid, "vid": "v", "query": "q", "duration": duration, "relevant_windows": [[start, end]]}


def test_fixed_window_baseline_finds_the_common_window():
    queries = [_query(i, 20.0, 5.0, 15.0) for i in range(3)]
    metrics, windows = demo.fixed_window_baseline(queries, queries, grid=20)
    assert windows["mIoU"] == (0.25, 0.75)
    assert metrics["mIoU"] == metrics["R1@0.7"] == 100.0


def test_fixed_window_baseline_is_fit_on_one_set_and_scored_on_the_other():
    fit = [_query(i, 10.0, 0.0, 5.0) for i in range(4)]          # the first half of every training video
    heldout = [_query(i, 40.0, 20.0, 40.0) for i in range(2)]    # the second half of every held-out video
    metrics, windows = demo.fixed_window_baseline(fit, heldout, grid=4)
    assert windows["mIoU"] == (0.0, 0.5)
    assert all(e <= 0.5 for _, e in windows.values())
    assert metrics["R1@0.3"] == metrics["mIoU"] == 0.0


def test_random_baseline_is_seeded_and_inside_the_video():
    queries = [{"qid": i, "duration": 10.0 + i} for i in range(5)]
    first, second = demo.random_baseline(queries, seed=3), demo.random_baseline(queries, seed=3)
    assert first == second
    for q, p in zip(queries, first):
        s, e, _ = p["pred_relevant_windows"][0]
        assert 0.0 <= s <= e <= q["duration"]


def test_quick_demo_end_to_end(tmp_path):
    workdir = tmp_path / "demo"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device, as `make demo` runs
    result = subprocess.run([sys.executable, "-m", "momentor_jax.demo", f"--workdir={workdir}", "--quick"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(workdir / "eval" / "metrics.json") as f:
        metrics = json.load(f)
    assert set(metrics) == {"model", "baseline_random", "baseline_fixed"}
    for block in metrics.values():
        assert set(block) == {"R1@0.3", "R1@0.5", "R1@0.7", "mIoU"}
        assert all(0.0 <= v <= 100.0 for v in block.values())
    assert os.path.getsize(workdir / "eval" / "timeline.png") > 1000
    assert (workdir / "export" / "llm" / "config.json").exists()
    import transformers  # noqa: PLC0415 (heavy)
    config = transformers.AutoConfig.from_pretrained(str(workdir / "export" / "llm"))
    assert config.vocab_size > 0
    assert "held-out temporal grounding" in result.stdout
    # Stage 2 trains everything but the vision tower, which it takes from stage 1 unchanged.
    from momentor_jax import checkpoints  # noqa: PLC0415
    stage1, stage2 = (checkpoints.load_params(str(workdir / name)) for name in ("stage1_gesm", "stage2_instruct"))
    for a, b in zip(jax.tree.leaves(stage1["vision"]), jax.tree.leaves(stage2["vision"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(stage1["llm"]), jax.tree.leaves(stage2["llm"]), strict=True))
    serve = result.stdout.strip().splitlines()[-1].split()  # the last line opens the web demo on the trained model
    assert serve[1:4] == ["-m", "momentor_jax.serve", "--checkpoint"] and serve[5] == "--annotations"
    assert (pathlib.Path(serve[4]) / "checkpoints").is_dir() and os.path.isfile(serve[6])
    assert (pathlib.Path(serve[6]).parent / "videos").is_dir()  # the examples' --video_dir default


def test_tpm_switch_alias_becomes_the_config_key():
    args, overrides = demo._parse(["demo", "--config.model.tpm.enabled=False", "--config.batch_size=4", "--quick"])
    assert args.quick and not args.config.model.tpm_enabled and args.config.batch_size == 4
    assert overrides == ["--config.checkpoint_every_steps=1000", "--config.log_every_steps=1",
                         "--config.model.tpm_enabled=false", "--config.batch_size=4"]


def test_bad_flags_are_one_line_usage_errors(capsys):
    for argv in (["demo", "--config.no_such_key=1"], ["demo", "--workdirs=x"], ["demo", "extra"]):
        with pytest.raises(SystemExit) as info:
            demo._parse(argv)
        assert info.value.code == 2
        assert capsys.readouterr().err.startswith("error: ")
