"""Every command in README.md and launch/README.md, run in order as a newcomer would, at tiny scale.

The commands are read from the documents' ```bash blocks, so a command added, changed or removed there is what runs
here. Each one goes through `adapt`, which may only
  - point the placeholders (`/path/to/llama-7b-hf`, `hf/clip-vit-large-patch14`, ...) at tiny random models,
  - shrink sizes (frames, image size, shards, workers, steps) and swap configs/momentor_7b.py for configs/tiny.py,
  - send downloads to a loopback HTTP server and cloud commands through `--dry_run`,
or say which test runs it instead (make demo / make test, the benchmark suites). A command that no rule knows fails
the test, so the documents cannot gain a command that was never run. Everything runs in one working directory
holding the files the documents name (Moment-10M_0.json, GESM_data.json, clip.mp4, questions.jsonl, ...).
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading

import pytest

import data_scripts
import hf_tiny_datagen
import hf_tiny_models as tiny
from momentor_jax.data import synthetic as synthetic_lib
from momentor_jax.data import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ("README.md", os.path.join("launch", "README.md"))
LABELS = "circle,square,star"

# Commands another test runs as they are written (the test named), not repeated here.
RUN_ELSEWHERE = {
    "make demo": "tests/test_demo.py runs the same pipeline (momentor_jax.demo --quick)",
    "make test": "this suite",
    "python -m momentor_jax.serve": "tests/test_serve.py (a server that runs until stopped, driven in a browser)",
    "python -m momentor_jax.tools.bench train": "tests/test_bench_train.py",
    "python -m momentor_jax.tools.bench torch": "tests/test_bench_torch_decode.py",
    "python -m momentor_jax.tools.bench decode": "tests/test_bench_torch_decode.py",
    "python -m momentor_jax.tools.bench loader": "tests/test_bench_loader.py",
    "python -m momentor_jax.tools.bench gpu": "needs an NVIDIA GPU (tests/test_bench_dispatch.py checks the list)",
}


def documented_commands() -> list[tuple[str, str]]:
    """(document, command) for every line of every ```bash block, continuations joined, comments dropped."""
    commands = []
    for document in DOCUMENTS:
        text = open(os.path.join(REPO, document)).read()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words:
                    commands.append((document, shlex.join(words)))
    return commands


def _drop_optional(words: list[str]) -> list[str]:
    """`[--device cuda]` in a usage line is an option the reader may add: left out here."""
    out, depth = [], 0
    for word in words:
        if word.startswith("["):
            depth += 1
        if not depth:
            out.append(word)
        if word.endswith("]"):
            depth -= 1
    return out


def _set(words: list[str], flag: str, value: str) -> list[str]:
    """`flag value` or `flag=value` in words, replaced by value (appended when absent)."""
    out, i, found = [], 0, False
    while i < len(words):
        if words[i] == flag:
            out += [flag, value]
            i += 2
            found = True
            continue
        if words[i].startswith(flag + "="):
            out.append(f"{flag}={value}")
            found = True
        else:
            out.append(words[i])
        i += 1
    return out if found else out + [flag, value]


class World:
    """The working directory and the tiny stand-ins the documents' placeholders point to."""

    def __init__(self, root, url_template: str, models: dict, bucket: str = "gs://bucket"):
        self.root = str(root)
        self.bucket = bucket  # a bucket on the GCS server on loopback (tests/conftest.py) in the run-in-order test
        self.url_template = url_template
        self.models = models

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)


PLACEHOLDERS = {
    "/path/to/llama-7b-hf": "llama",
    "/path/to/clip-vit-large-patch14": "clip",
    "hf/clip-vit-large-patch14": "clip_full",
    "hf/grounding-dino-base": "grounding_dino",
    "hf/blip2-opt-2.7b": "blip2",
    "hf/vicuna-7b-v1.5": "vicuna",
}


def adapt(command: str, world: World):
    """The command as run here (a word list), or the reason it runs elsewhere (a str). KeyError: no rule."""
    for prefix, reason in RUN_ELSEWHERE.items():
        if command.startswith(prefix):
            return reason
    words = _drop_optional(shlex.split(command))
    if any(w.startswith("--runner=") and w != "--runner=DirectRunner" for w in words):
        return "tests/test_beam.py runs the same pipelines on the DirectRunner (no cloud runner here)"
    for placeholder, model in PLACEHOLDERS.items():
        words = [w.replace(placeholder, world.models[model]) for w in words]
    words = [w.replace("configs/momentor_7b.py", "configs/tiny.py").replace("/tmp/sweep", world.path("sweep"))
             .replace("gs://my-bucket/", world.bucket + "/") for w in words]
    if words[0] == "export":                                       # the launch README's environment
        return ["export", *words[1:]]
    if words[0] != "python":
        raise KeyError(command)
    script = words[1] if words[1] != "-m" else words[2]
    tiny_steps = ["--config.total_steps=2", "--config.checkpoint_every_steps=2"]
    if script == "data/download_videos.py":
        return _set(_set(words, "--workers", "2"), "--url_template", world.url_template)
    if script == "data/extract_frames.py":
        words = _set(_set(_set(words, "--num_frames", "8"), "--size", "32"), "--num_shards", "2")
        return _set(words, "--workers", "2")
    if script == "data/make_tokenizer.py":
        return _set(words, "--num_temporal_tokens", "16")            # configs/tiny.py's N
    if script == "data/generate_data.py":
        words = _set(words, "--video_dir", world.path("videos_for_generation"))
        for flag, value in (("--device", "cpu"), ("--labels", LABELS), ("--detection_threshold", "0"),
                            ("--max_detections", "4"), ("--caption_tokens", "6"), ("--llm_tokens", "6"),
                            ("--sample_fps", "1"), ("--max_side", "64"), ("--max_instances", "3")):
            words = _set(words, flag, value)
        return words + ["--no_progress"]
    if script == "data/report_attrition.py":                       # the single-machine outputs of the steps above
        renamed = {"gs://B/videos/": "videos/", "FRAMES/frames_failures.jsonl": "data/frames/extract_failures.jsonl",
                   "FRAMES": "data/frames"}
        return [functools.reduce(lambda w, kv: w.replace(*kv), renamed.items(), word) for word in words]
    if script in ("data/convert_data.py", "data/convert_data_gesm.py"):
        return words
    if script == "momentor_jax.convert":
        if words[3] == "import_hf":
            return _set(_set(words, "--num_temporal_tokens", "16"), "--num_frames", "8")
        return words
    if script == "momentor_jax.train":
        return words + tiny_steps
    if script in ("momentor_jax.predict", "momentor_jax.evaluate"):
        return words + (["--max_new_tokens", "8"] if script == "momentor_jax.predict" else [])
    if script == "momentor_jax.score":
        return words
    if script == "momentor_jax.tools.bench" and words[3] == "peak":
        return words
    if script == "momentor_jax.tools.length_model":
        return _set(words, "--examples", "300")
    if script == "momentor_jax.tools.aot":
        return _set(words, "--topology", "v5p-8")
    if script == "launch/tpu.py":                                    # cloud calls: printed, not run
        return [*words[:3], "--dry_run", *words[3:]]
    if script == "launch/sweep.py":
        local = not any(w.startswith("--tpu") for w in words)
        return words + (tiny_steps if local else ["--dry_run"])
    raise KeyError(command)


def _serve(directory: str):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=directory))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Moment-10M_0.json, GESM_data.json, clip.mp4, questions.jsonl, charades_sta_test.txt, durations.json in the
    working directory; the videos served over HTTP (download_videos fetches them into videos/); tiny models."""
    root = tmp_path_factory.mktemp("newcomer")
    synthetic = tmp_path_factory.mktemp("synthetic")
    assert data_scripts.load("make_synthetic").main(["--out", str(synthetic), "--num_videos", "10", "--num_heldout",
                                                     "2", "--size", "32", "--max_duration", "16"]) == 0
    shutil.copy(synthetic / "moment10m_train.json", root / "Moment-10M_0.json")
    shutil.copy(synthetic / "gesm_train.json", root / "GESM_data.json")
    served = synthetic / "videos"
    heldout = [json.loads(line) for line in open(synthetic / "grounding_heldout.jsonl")]
    first = heldout[0]["vid"]
    shutil.copy(served / f"{first}.mp4", root / "clip.mp4")
    with open(root / "questions.jsonl", "w") as f:
        for record in heldout[:2]:
            f.write(json.dumps({"video": f"videos/{record['vid']}.mp4", "question": record["query"]}) + "\n")
    with open(root / "charades_sta_test.txt", "w") as f:
        for record in heldout:
            start, end = record["relevant_windows"][0]
            f.write(f"{record['vid']} {start:.1f} {end:.1f}##{record['query']}\n")
    durations = {record["vid"]: record["duration"] for record in heldout}
    (root / "durations.json").write_text(json.dumps(durations))
    # The held-out videos are not in Moment-10M_0.json: evaluation reads them from videos/ all the same.
    (root / "videos").mkdir()
    for vid in durations:
        shutil.copy(served / f"{vid}.mp4", root / "videos" / f"{vid}.mp4")
    generation = root / "videos_for_generation"
    generation.mkdir()
    for name in sorted(os.listdir(served))[:8]:      # 8: the GESM stage needs one global batch of videos
        shutil.copy(served / name, generation / name)

    hf = tmp_path_factory.mktemp("hf")
    tiny.tiny_llama(num_kv_heads=2).save_pretrained(hf / "llama")
    tiny.tiny_clip_vision().save_pretrained(hf / "clip")
    model_path = tokenizer_lib.train_sentencepiece(synthetic_lib.tokenizer_texts(), str(hf / "sp"), tiny.VOCAB)
    os.replace(model_path, hf / "llama" / "tokenizer.model")
    models = {"llama": str(hf / "llama"), "clip": str(hf / "clip"),
              "clip_full": hf_tiny_datagen.save_clip(str(hf / "clip_full")),
              "grounding_dino": hf_tiny_datagen.save_grounding_dino(str(hf / "grounding_dino")),
              "blip2": hf_tiny_datagen.save_blip2(str(hf / "blip2")),
              "vicuna": hf_tiny_datagen.save_llama(str(hf / "vicuna"))}
    httpd = _serve(str(served))
    yield World(root, f"http://127.0.0.1:{httpd.server_address[1]}/{{id}}.mp4", models)
    httpd.shutdown()
    httpd.server_close()


def test_every_documented_command_has_a_rule():
    commands = documented_commands()
    assert len(commands) >= 25, commands
    unknown = []
    for document, command in commands:
        try:
            adapt(command, World("/nowhere", "http://127.0.0.1:1/{id}.mp4", dict.fromkeys(PLACEHOLDERS.values(),
                                                                                            "/m")))
        except KeyError:
            unknown.append(f"{document}: {command}")
    assert not unknown, "commands no rule adapts (add one that runs them):\n" + "\n".join(unknown)


def test_the_documented_commands_run_in_order(world, gcs_bucket, capfd):
    world.bucket = gcs_bucket  # the Cloud storage section's commands write to it; the launch commands only print it
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               MOMENTOR_TPU_PROJECT="p", MOMENTOR_TPU_ZONE="z", MOMENTOR_TPU_BUCKET="bucket")
    ran, elsewhere = [], []
    for document, command in documented_commands():
        adapted = adapt(command, world)
        if isinstance(adapted, str):
            elsewhere.append(f"{command}  ->  {adapted}")
            continue
        if adapted[0] == "export":
            env.update(word.split("=", 1) for word in adapted[1:])
            continue
        argv = [sys.executable, *adapted[1:]]
        if adapted[1].endswith(".py"):
            argv[1] = os.path.join(REPO, adapted[1])
        print(f"$ {shlex.join(adapted)}", flush=True)
        done = subprocess.run(argv, cwd=world.root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (f"{document}: `{command}` exited {done.returncode}\n"
                                      f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}")
        ran.append((command, done.stdout))
        # What it printed last, for a reader of `pytest -s` (a transcript of the documented path).
        printed = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        print("\n".join("    " + line[:200] for line in printed[-3:]), flush=True)
    outputs = dict(ran)
    # What the pipeline left behind is what the next reader of the documents expects to find.
    for path in ("data/instruct_train.jsonl", "data/gesm_train.jsonl", "data/tokenizer/tokenizer.model",
                 "runs/gesm", "runs/instruct", "eval/charades/metrics.json", "answers.jsonl",
                 "export/llm/config.json", "generated/moment10m.json"):
        assert os.path.exists(world.path(path)), path
    assert len(os.listdir(world.path("videos"))) >= 10                 # downloaded next to the held-out ones
    answer = next(out for command, out in ran if "--json" in command and "momentor_jax.predict" in command)
    assert "answer" in json.loads(answer)
    assert any("gcloud" in out for command, out in outputs.items() if "launch/tpu.py" in command)
    assert len(ran) >= 20 and len(elsewhere) >= len(RUN_ELSEWHERE)
