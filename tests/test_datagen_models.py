"""The data generation engine with tiny random Hugging Face models: CLIP scores equal transformers' CLIPModel, and the
whole engine (Grounding DINO or OWLv2, BLIP-2, LLaMA) writes every data type and GESM, which data/convert_data.py
and data/convert_data_gesm.py accept unchanged."""
import json
import os

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import data_scripts
import hf_tiny_datagen as tiny
from momentor_jax.data import moment10m, synthetic_cuts
from momentor_jax.data import video as video_lib
from momentor_jax.datagen import engine, instructions, shots
from momentor_jax.datagen.captions import Captioner
from momentor_jax.datagen.clip import ClipModel
from momentor_jax.datagen.instances import HFDetector
from momentor_jax.datagen.writer import LLMWriter
from momentor_jax.models.vit import clip_normalize

LABELS = "circle,square,star"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the suite shares two cores between two workers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"clip": tiny.save_clip(str(root / "clip")), "owlv2": tiny.save_owlv2(str(root / "owlv2")),
            "grounding_dino": tiny.save_grounding_dino(str(root / "grounding_dino")),
            "blip2": tiny.save_blip2(str(root / "blip2")), "llama": tiny.save_llama(str(root / "llama"))}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    out = tmp_path_factory.mktemp("videos")
    specs = synthetic_cuts.make_dataset(str(out), 2, seed=2, progress=False)
    (out / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    (out / "videos" / "notes.txt").write_text("not a video")
    return str(out / "videos"), specs


def test_clip_scores_equal_transformers(model_dirs, one_thread):
    clip = ClipModel(model_dirs["clip"], batch_size=4)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(5)]
    texts = ["a red circle", "a dog on a car", "scene"]
    hf = transformers.CLIPModel.from_pretrained(model_dirs["clip"]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dirs["clip"])
    pixels = np.stack([video_lib.clip_geometry(Image.fromarray(im), clip.config.image_size) for im in images])
    pixel_values = torch.from_numpy(np.asarray(clip_normalize(pixels)).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        out = hf(pixel_values=pixel_values, **tokenizer(texts, padding=True, return_tensors="pt"))
        hf_pooled = hf.vision_model(pixel_values=pixel_values).pooler_output.numpy()
    pooled = clip.pooled(images)
    np.testing.assert_allclose(pooled, hf_pooled, atol=1e-5)
    ours = clip.image_embeds(pooled) @ clip.text_embeds(texts).T
    expected = (out.logits_per_image / hf.logit_scale.exp()).detach().numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    vision_only = transformers.CLIPVisionModel(hf.config.vision_config)
    vision_only.save_pretrained(os.path.join(model_dirs["clip"], "..", "vision_only"))
    with pytest.raises(ValueError, match="needs a full CLIPModel"):
        ClipModel(os.path.join(model_dirs["clip"], "..", "vision_only"))


def _raw_counts(raw: dict) -> dict:
    """{data_type: (items, items whose score is above the type's threshold)} from a raw file."""
    counts = {}
    for by_type in raw.values():
        for data_type, items in by_type.items():
            total, kept = counts.get(data_type, (0, 0))
            key = instructions.SCORE_KEYS[data_type]
            counts[data_type] = (total + len(items),
                                 kept + sum(item[key] > moment10m.THRESHOLDS[data_type] for item in items))
    return counts


def _convert(capsys, script, *args) -> dict:
    """Runs a data/ converter in this process; its table as {type: (read, filtered, written, rejected)}."""
    assert data_scripts.load(script).main(list(args)) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    return {row[0]: tuple(int(x) for x in row[1:]) for row in rows
            if len(row) == 5 and all(x.isdigit() for x in row[1:])}


@pytest.fixture(scope="module")
def generated(model_dirs, videos, tmp_path_factory, one_thread):
    video_dir, specs = videos
    out = str(tmp_path_factory.mktemp("generated"))
    argv = ["--video_dir", video_dir, "--out", out, "--clip", model_dirs["clip"],
            "--detector", model_dirs["grounding_dino"], "--captioner", model_dirs["blip2"],
            "--llm", model_dirs["llama"], "--device", "cpu", "--labels", LABELS, "--detection_threshold", "0",
            "--max_detections", "4", "--caption_tokens", "6", "--llm_tokens", "6", "--sample_fps", "1",
            "--max_side", "64", "--max_instances", "3", "--no_progress"]
    assert data_scripts.load("generate_data").main(argv) == 0
    return out, specs, argv


def test_every_data_type_and_gesm_written(generated):
    out, specs, _ = generated
    raw = json.load(open(os.path.join(out, engine.MOMENT10M_FILE)))
    gesm = json.load(open(os.path.join(out, engine.GESM_FILE)))
    assert sorted(raw) == sorted(gesm) == sorted(specs)
    for video_id, by_type in raw.items():
        assert set(by_type) == set(moment10m.DATA_TYPES), (video_id, sorted(by_type))
        assert len(gesm[video_id]["timestamps"]) == len(gesm[video_id]["captions"]) >= 2
        for data_type, items in by_type.items():
            for item in items:
                assert item["id"] == video_id and item["data_type"] == data_type
                assert isinstance(item[instructions.SCORE_KEYS[data_type]], float)
    failures = [json.loads(line) for line in open(os.path.join(out, engine.FAILURES_FILE))]
    assert [f["video_id"] for f in failures] == ["broken"] and "VideoDecodeError" in failures[0]["reason"]
    metadata = json.load(open(os.path.join(out, engine.METADATA_FILE)))
    assert {r: m["model_type"] for r, m in metadata["models"].items() if r != "settings"} == {
        "clip": "clip", "detector": "grounding-dino", "captioner": "blip-2", "llm": "llama"}
    assert metadata["models"]["settings"]["llm_tokens"] == 6 and metadata["config"]["labels"] == LABELS.split(",")
    assert metadata["videos"] == 2 and metadata["failed"] == 1 and metadata["totals"]["llm_calls"] > 0
    assert metadata["items"] == {t: n for t, (n, _) in _raw_counts(raw).items()}


def test_converters_accept_the_output_and_filter_by_its_scores(generated, tmp_path, capsys):
    out, specs, _ = generated
    source = os.path.join(out, engine.MOMENT10M_FILE)
    expected = _raw_counts(json.load(open(source)))
    for fmt in moment10m.FORMATS:
        table = _convert(capsys, "convert_data", "--source_path", source, "--target_path",
                         str(tmp_path / f"all_{fmt}.jsonl"), "--format", fmt, "--no_filter", "--strict")
        for data_type, (total, _) in expected.items():
            assert table[data_type] == (total, 0, total, 0), (fmt, data_type)
    table = _convert(capsys, "convert_data", "--source_path", source, "--target_path",
                     str(tmp_path / "filtered.jsonl"), "--strict")
    for data_type, (total, kept) in expected.items():
        assert table[data_type] == (total, total - kept, kept, 0), data_type
    assert 0 < table["total"][2] < table["total"][0]  # the filter keeps some and drops some
    lines = [json.loads(line) for line in open(tmp_path / "all_temporal.jsonl")]
    assert all(r["id"] in specs for r in lines) and any(r["temporal_output_times"] for r in lines)
    table = _convert(capsys, "convert_data_gesm", "--source_path", os.path.join(out, engine.GESM_FILE),
                     "--target_path", str(tmp_path / "gesm.jsonl"), "--strict")
    assert table["event_sequence_decoding"] == (2, 0, 2, 0)


def test_rerun_resumes_and_refuses_other_settings(generated, capsys):
    out, _, argv = generated
    before = {name: open(os.path.join(out, name), "rb").read() for name in (engine.MOMENT10M_FILE, engine.GESM_FILE)}
    assert data_scripts.load("generate_data").main(argv) == 0
    assert "generated 0 videos, 2 already done, 1 failed" in capsys.readouterr().out
    assert before == {name: open(os.path.join(out, name), "rb").read() for name in before}
    changed = list(argv)
    changed[changed.index("--max_instances") + 1] = "2"
    assert data_scripts.load("generate_data").main(changed) == 2
    assert "holds videos generated with other config" in capsys.readouterr().err
    missing = list(argv)
    missing[missing.index("--video_dir") + 1] = os.path.join(out, "nope")
    assert data_scripts.load("generate_data").main(missing) == 2
    assert "nope: not a folder of videos" in capsys.readouterr().err


def test_owlv2_engine_on_one_video(model_dirs, videos, tmp_path, one_thread):
    video_dir, specs = videos
    video_id = sorted(specs)[0]
    models = engine.Models(clip=ClipModel(model_dirs["clip"]), detector=HFDetector(model_dirs["owlv2"], 0.0,
                                                                                   max_detections=3),
                           captioner=Captioner(model_dirs["blip2"], max_new_tokens=5),
                           writer=LLMWriter(model_dirs["llama"], max_new_tokens=5))
    config = engine.EngineConfig(shots=shots.ShotConfig(sample_fps=1, max_side=64), labels=tuple(LABELS.split(",")),
                                 max_instances=2)
    result = engine.generate_video(video_id, os.path.join(video_dir, f"{video_id}.mp4"), models, config)
    assert set(result["moment10m"]) == set(moment10m.DATA_TYPES)
    assert result["stats"]["tracks"] == 2 and result["stats"]["shots"] == len(specs[video_id].cuts) + 1
    for data_type, items in result["moment10m"].items():
        for item in items:
            record = moment10m.convert_item(item, video_id, data_type)
            times = record["temporal_input_times"] + record["temporal_output_times"]
            assert all(0 <= t <= specs[video_id].duration + 1e-6 for t in times)
