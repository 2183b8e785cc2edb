"""The public code's .npy feature files: written here as its feature_extraction.py writes them (np.save of
{'duration': float, 'feature': torch float16 [M, F]}), read without unpickling, imported as feature records that the
loader serves with use_features=True; malicious and odd pickles are refused with an error naming the file."""
import importlib.util
import io
import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from momentor_jax.data import frames as frames_lib  # noqa: E402
from momentor_jax.data import loader, public_features, synthetic  # noqa: E402
from momentor_jax.tools.bench import loader_data  # noqa: E402

NUM_FRAMES, FEATURE_DIM = 8, 12


def save_public(path, duration, feature):
    """What the public script does: np.save(path, {'duration': d, 'feature': f})."""
    np.save(path, {"duration": duration, "feature": feature})


def save_numpy1(path, payload):
    """np.save as numpy 1.x (the public pin 1.24) writes it: pickle protocol 3, numpy.core.multiarray."""
    array = np.empty((), object)
    array[()] = payload
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|O", "fortran_order": False, "shape": ()})
    buffer.write(pickle.dumps(array, protocol=3).replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    with open(path, "wb") as f:
        f.write(buffer.getvalue())


def half_features(seed, frames=NUM_FRAMES):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((frames, FEATURE_DIM))).to(torch.float16)


@pytest.mark.parametrize("writer", [save_public, lambda p, d, f: save_numpy1(p, {"duration": d, "feature": f})],
                         ids=["np.save", "numpy1-protocol3"])
def test_reads_a_public_feature_file(tmp_path, writer):
    feature = half_features(0)
    path = str(tmp_path / "vid.npy")
    writer(path, 37.5, feature)
    duration, values = public_features.read_public_feature_file(path)
    assert duration == 37.5
    assert values.dtype == np.float32 and values.shape == (NUM_FRAMES, FEATURE_DIM)
    np.testing.assert_array_equal(values, feature.float().numpy())


class _Runs:
    """Unpickling this would run `command` (pickle's __reduce__ protocol)."""

    def __init__(self, function, command):
        self.function, self.command = function, command

    def __reduce__(self):
        return self.function, (self.command,)


def _odd_files(tmp_path):
    """name -> (path, a fragment of the expected error). Written with numpy, pickle or by hand."""
    marker = tmp_path / "ran"
    good = half_features(1)
    files = {
        "os.system": ({"duration": 1.0, "feature": _Runs(os.system, f"touch {marker}")}, "refuses global"),
        "builtins.eval": ({"duration": _Runs(eval, "1 + 1"), "feature": good}, "refuses global builtins.eval"),
        "extra key": ({"duration": 1.0, "feature": good, "fps": 30}, "exactly 'duration' and 'feature'"),
        "numpy feature": ({"duration": 1.0, "feature": good.numpy()}, "not a pickled torch tensor"),
        "bfloat16": ({"duration": 1.0, "feature": good.to(torch.bfloat16)}, "refuses global torch.BFloat16Storage"),
        "view": ({"duration": 1.0, "feature": half_features(2, 20)[4:12]}, "not a whole contiguous"),
        "transposed": ({"duration": 1.0, "feature": half_features(3).T.contiguous().T}, "not a whole contiguous"),
        "one axis": ({"duration": 1.0, "feature": good.reshape(-1)}, "not [M, F]"),
        "duration": ({"duration": -3.0, "feature": good}, "not a positive number"),
        "list": ([1.0, good], "not a dict"),
    }
    out = {}
    for name, (payload, error) in files.items():
        path = str(tmp_path / f"{name}.npy")
        array = np.empty((), object)  # np.save's wrapping of a dict, for any payload
        array[()] = payload
        np.save(path, array)
        out[name] = (path, error)
    plain = str(tmp_path / "plain.npy")
    np.save(plain, np.zeros((NUM_FRAMES, FEATURE_DIM), np.float16))
    out["plain array"] = (plain, "not a pickled dict")
    whole = io.BytesIO()
    save_public(whole, 1.0, good)
    truncated = str(tmp_path / "truncated.npy")
    with open(truncated, "wb") as f:
        f.write(whole.getvalue()[:-40])
    out["truncated"] = (truncated, "malformed pickle")
    protocol0 = str(tmp_path / "protocol0.npy")  # a text-protocol pickle: opcodes outside the structure
    with open(protocol0, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        f.write(b"(S'x'\nios\nsystem\n.")
    out["protocol 0"] = (protocol0, "refuses pickle opcode")
    return out, marker


def test_refuses_anything_else_without_running_it(tmp_path):
    files, marker = _odd_files(tmp_path)
    for name, (path, error) in files.items():
        with pytest.raises(public_features.PublicFeatureError) as raised:
            public_features.read_public_feature_file(path)
        assert path in str(raised.value) and error in str(raised.value), (name, str(raised.value))
    assert not marker.exists()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return loader_data.make_tokenizer(str(tmp_path_factory.mktemp("sp")), 16)


def test_import_gives_feature_records_the_loader_serves(tmp_path, tokenizer):
    specs = synthetic.sample_videos(0, 4, size=32)
    feature_dir = tmp_path / "public"
    feature_dir.mkdir()
    stored = {}
    for i, spec in enumerate(specs):
        stored[spec.video_id] = half_features(10 + i)
        save_public(str(feature_dir / f"{spec.video_id}.npy"), spec.duration, stored[spec.video_id])
    np.save(str(feature_dir / "broken.npy"), {"duration": 1.0, "feature": _Runs(os.system, "true")})
    messages = []
    out_dir = str(tmp_path / "records")
    stats = public_features.import_feature_dir(str(feature_dir), out_dir, num_shards=2, num_frames=NUM_FRAMES,
                                               log=messages.append)
    assert (stats.videos, stats.skipped, stats.shards_written) == (4, 1, 2)
    assert len(messages) == 1 and "broken.npy" in messages[0] and "refuses global" in messages[0]

    index = frames_lib.FrameRecordIndex(out_dir, num_frames=NUM_FRAMES)
    assert sorted(index.video_ids()) == sorted(stored)
    for spec in specs:
        record = index.get(spec.video_id)
        np.testing.assert_array_equal(record["features"], stored[spec.video_id].float().numpy())
        assert record["duration"] == pytest.approx(spec.duration)
        np.testing.assert_allclose(record["frame_times"], np.linspace(0, spec.duration, NUM_FRAMES), rtol=1e-6)

    examples = loader_data.write_examples(str(tmp_path), specs)
    data_config = {"examples": examples, "frames": out_dir, "read_threads": 1,
                   "system_prompt": loader_data.SHORT_SYSTEM_PROMPT}
    item = next(iter(loader.make_eval_examples(data_config, tokenizer=tokenizer, num_frames=NUM_FRAMES,
                                               max_length=256, use_features=True)))
    np.testing.assert_array_equal(item["features"], stored[item["id"]].float().numpy())
    batch = next(loader.make_train_loader(data_config, tokenizer=tokenizer, num_frames=NUM_FRAMES, max_length=256,
                                          global_batch_size=2, seed=0, use_features=True))
    assert batch["features"].shape == (2, NUM_FRAMES, FEATURE_DIM) and "frames" not in batch

    # A rerun keeps the finished shards; with nothing readable the import fails loudly.
    assert public_features.import_feature_dir(str(feature_dir), out_dir, num_shards=2).shards_kept == 2
    (tmp_path / "only_bad").mkdir()
    np.save(str(tmp_path / "only_bad" / "x.npy"), np.zeros(3))
    with pytest.raises(RuntimeError, match="none of 1 .npy files"):
        public_features.import_feature_dir(str(tmp_path / "only_bad"), str(tmp_path / "none"), log=messages.append)


def test_import_command(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "import_public_features", os.path.join(os.path.dirname(__file__), "..", "data", "import_public_features.py"))
    command = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(command)
    (tmp_path / "in").mkdir()
    save_public(str(tmp_path / "in" / "a.npy"), 5.0, half_features(0))
    assert command.main(["--feature_dir", str(tmp_path / "in"), "--out_dir", str(tmp_path / "out")]) == 0
    assert "1 videos written in 1 shards" in capsys.readouterr().out
    np.save(str(tmp_path / "in" / "b.npy"), np.zeros(3))
    assert command.main(["--feature_dir", str(tmp_path / "in"), "--out_dir", str(tmp_path / "out2")]) == 1
    assert command.main(["--feature_dir", str(tmp_path / "missing"), "--out_dir", str(tmp_path / "out3")]) == 2
    assert "does not exist" in capsys.readouterr().err
