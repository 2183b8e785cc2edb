"""A seeded fuzz suite over bad input (issue #20): Moment-10M and GESM conversion, TFRecord framing and index
sidecars, frame records, example encoding (the loader's per-example path), evaluation annotations, sampling settings,
launch config checks, resume checks and video ids from file names.

Every case is generated from a fixed seed with a known expectation (valid, or invalid because of the one mutation
made) and its outcome is classified:
    error     an exception of the area's documented type whose message names the file / record / field
    skipped   a counted skip or rejection (the count went up by the expected amount and the log names the record)
    accepted  the input was taken and the result checked correct
A raw exception (any other type, or a message that names nothing) fails the case, and so does a silent acceptance
(an invalid input taken without an error or a count). The test prints the tally per area and outcome.
"""
import collections
import copy
import json
import math
import os
import random

import numpy as np
import pytest
from tensorflow_datasets.proto import tf_example_pb2

from momentor_jax import outputs
from momentor_jax.data import encode, frames as frames_lib, gesm, moment10m, tfrecord, video_ids
from momentor_jax.evaluation import annotations
from momentor_jax.inference.generate import SamplingConfig
from momentor_jax.training import resume
from tests import bad_input_data as bid

SEED = 20
TALLY = collections.Counter()
FAILURES = []


class Case:
    """One generated case: `run()` returns the outcome; a wrong one is recorded, not raised, so all are seen."""

    def __init__(self, area, name):
        self.area, self.name = area, name

    def outcome(self, outcome):
        TALLY[(self.area, outcome)] += 1

    def fail(self, why):
        TALLY[(self.area, "FAILED")] += 1
        FAILURES.append(f"{self.area} / {self.name}: {why}")


def _raw(error):
    return f"raw {type(error).__name__}: {str(error)[:300]}"


# ------------------------------------------------------------------------------------------------ Moment-10M
GOOD = {"conversations": {"User": "What happens during {moment}?", "Assistant": "A dog runs."},
        "variables": {"moment": [1.0, 4.0]}, "match_score": 0.9}
CLICK = {"conversations": {"User": "What is at {click_position}?", "Assistant": "A ball."},
         "variables": {"click_position": [2.0, [0.25, 0.5]]}, "match_score": 0.9}
INSTANCE = {"conversations": {"User": "What does the {instance_class} do during {moment}?",
                              "Assistant": "It runs."},
            "variables": {"instance_class": "dog", "moment": [1.0, 2.0]}, "match_score": 0.9}
BAD_NUMBERS = [float("nan"), float("inf"), -float("inf"), -1.0, -1e-9, "3", None, True, [1], {"a": 1}]
RESERVED = ["</s>", "<s>", "<video>", "<vid_patch>", "<TEMP-INPUT>", "<TEMP-OUTPUT>", "<TEMP-007>"]


def _moment10m_mutations(rng):
    """(data type, item, True when valid)."""
    out = []
    for value in BAD_NUMBERS:
        window = [value, 4.0] if rng.random() < 0.5 else [1.0, value]
        out.append(("segment_caption_data", dict(GOOD, variables={"moment": window}), False))
        out.append(("segment_caption_data", dict(GOOD, match_score=value), value in (-1.0, -1e-9) and False))
    for value in BAD_NUMBERS + [1.5, -0.5, 1.0000001]:
        pos = [value, 0.5] if rng.random() < 0.5 else [0.5, value]
        out.append(("appearance_data", dict(CLICK, variables={"click_position": [2.0, pos]}), False))
    for token in RESERVED:
        role = rng.choice(["User", "Assistant"])
        text = GOOD["conversations"][role]
        at = rng.randrange(len(text) + 1)
        conv = dict(GOOD["conversations"], **{role: text[:at] + token + text[at:]})
        out.append(("segment_caption_data", dict(GOOD, conversations=conv), False))
        out.append(("instance_segment_caption_data",
                    dict(INSTANCE, variables={"instance_class": f"a {token}", "moment": [1.0, 2.0]}), False))
    for empty in ("", " ", "\t\n"):
        out.append(("instance_segment_caption_data",
                    dict(INSTANCE, variables={"instance_class": empty, "moment": [1.0, 2.0]}), False))
    for start, end in ((5.0, 1.0), (2.0, 1.999)):
        out.append(("segment_caption_data", dict(GOOD, variables={"moment": [start, end]}), False))
    for _ in range(30):  # valid variations: windows, clicks, scores, text
        start = round(rng.uniform(0, 50), 2)
        end = round(start + rng.uniform(0, 20), 2)
        out.append(("segment_caption_data", dict(GOOD, variables={"moment": [start, end]},
                                                 match_score=rng.uniform(0.2, 1.0)), True))
        x, y = rng.random(), rng.random()
        out.append(("appearance_data", dict(CLICK, variables={"click_position": [rng.uniform(0, 9), [x, y]]}),
                    True))
    for key in ("conversations", "variables"):
        out.append(("segment_caption_data", {k: v for k, v in GOOD.items() if k != key}, False))
    out.append(("segment_caption_data", dict(GOOD, conversations="text"), False))
    out.append(("segment_caption_data", dict(GOOD, conversations={"User": 3, "Assistant": "x"}), False))
    out.append(("segment_caption_data", "an item that is a string", False))
    out.append(("no_such_data", GOOD, False))
    return out


def test_fuzz_moment10m_items(tmp_path):
    rng = random.Random(SEED)
    for i, (data_type, item, valid) in enumerate(_moment10m_mutations(rng)):
        case = Case("moment10m item", f"{i}: {data_type} {json.dumps(item, default=str)[:120]}")
        path = tmp_path / f"raw{i}.json"
        path.write_text(json.dumps({"vid": {data_type: [item]}}, allow_nan=True))
        lines = []
        try:
            counts = moment10m.convert_file(str(path), str(tmp_path / "out.jsonl"), log=lines.append)
        except Exception as e:  # noqa: BLE001
            case.fail(_raw(e))
            continue
        written = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
        if valid:
            times = [t for r in written for t in r["temporal_input_times"] + r["temporal_output_times"]]
            if counts.total.written == 1 and all(math.isfinite(t) and t >= 0 for t in times):
                case.outcome("accepted")
            else:
                case.fail(f"a valid item was not written: {lines}")
        elif counts.total.rejected == 1 and counts.total.written == 0 and lines and \
                lines[0].startswith(f"rejected video vid type {data_type} item 0: "):
            case.outcome("skipped")
        elif counts.total.filtered == 1 and isinstance(item, dict) and not isinstance(item.get("match_score"), str) \
                and not (isinstance(item.get("match_score"), float) and not math.isfinite(item["match_score"])) \
                and item.get("match_score") is not None and not isinstance(item.get("match_score"), (bool, list, dict)):
            case.outcome("skipped")  # a finite, low score: the public filter drops it (counted in `filtered`)
        else:
            case.fail(f"silently accepted or not named: counts {counts.table()!r}, log {lines}")


def _ids(rng):
    good = ["dQw4w9WgXcQ", "clip.v1", "a-b_c", "ÄÖü", "x" * 200]
    bad = ["", " ", "a/b", "/abs", "a\\b", "a\nb", "a\tb", "a\x00b", "..", ".", " lead", "trail ", "a\rb"]
    return [(v, True) for v in good] + [(v, False) for v in bad] + [
        ("".join(rng.choice("ab/\n.") for _ in range(rng.randrange(1, 6))), None) for _ in range(10)]


def test_fuzz_video_ids_in_conversion(tmp_path):
    rng = random.Random(SEED + 1)
    for i, (video_id, valid) in enumerate(_ids(rng)):
        if valid is None:
            valid = video_ids.id_problem(video_id) is None
        for tool in ("moment10m", "gesm"):
            case = Case(f"{tool} video id", repr(video_id))
            if tool == "moment10m":
                payload = {video_id: {"segment_caption_data": [GOOD]}}
                convert = moment10m.convert_file
            else:
                payload = {video_id: {"timestamps": [[0, 1]], "captions": ["a"]}}
                convert = gesm.convert_file
            path = tmp_path / f"{tool}{i}.json"
            path.write_text(json.dumps(payload))
            lines = []
            try:
                counts = convert(str(path), str(tmp_path / "out.jsonl"), log=lines.append)
            except Exception as e:  # noqa: BLE001
                case.fail(_raw(e))
                continue
            if valid and counts.total.written == 1:
                case.outcome("accepted")
            elif not valid and counts.total.rejected == 1 and lines and repr(video_id) in lines[0]:
                case.outcome("skipped")
            else:
                case.fail(f"valid={valid}: {counts.table()!r} {lines}")


def test_fuzz_gesm_entries(tmp_path):
    rng = random.Random(SEED + 2)
    entries = []
    for value in BAD_NUMBERS:
        entries.append(({"timestamps": [[value, 3.0]], "captions": ["a"]}, False))
    for caption in ["", "  ", 7, None] + [f"x {t}" for t in RESERVED]:
        entries.append(({"timestamps": [[0, 3.0]], "captions": [caption]}, False))
    entries += [({"timestamps": [[0, 1]], "captions": []}, False), ({"timestamps": [], "captions": []}, False),
                ({"timestamps": [[3, 1]], "captions": ["a"]}, False), ({"timestamps": "0-1", "captions": ["a"]}, False),
                ({"captions": ["a"]}, False), ([1, 2], False), ("text", False)]
    for _ in range(20):
        n = rng.randrange(1, 5)
        windows = sorted([sorted([round(rng.uniform(0, 60), 1), round(rng.uniform(0, 60), 1)]) for _ in range(n)])
        entries.append(({"timestamps": windows, "captions": [f"event {k}" for k in range(n)]}, True))
    for i, (entry, valid) in enumerate(entries):
        case = Case("gesm entry", f"{i}: {json.dumps(entry, default=str)[:100]}")
        path = tmp_path / f"g{i}.json"
        path.write_text(json.dumps({"vid": entry}, allow_nan=True))
        lines = []
        try:
            counts = gesm.convert_file(str(path), str(tmp_path / "out.jsonl"), log=lines.append)
        except Exception as e:  # noqa: BLE001
            case.fail(_raw(e))
            continue
        if valid and counts.total.written == 1:
            record = json.loads(open(tmp_path / "out.jsonl").readline())
            ok = record["temporal_output_times"] == [t for w in entry["timestamps"] for t in w]
            case.outcome("accepted") if ok else case.fail(f"times {record['temporal_output_times']}")
        elif not valid and counts.total.rejected == 1 and lines and lines[0].startswith("rejected video vid type"):
            case.outcome("skipped")
        else:
            case.fail(f"valid={valid}: {counts.table()!r} {lines}")


@pytest.mark.parametrize("tool", ["moment10m", "gesm"])
def test_fuzz_whole_source_files(tmp_path, tool):
    """Sources that are not the format at all: one ValueError naming the file, never a traceback or an output."""
    rng = random.Random(SEED + 3)
    convert = moment10m.convert_file if tool == "moment10m" else gesm.convert_file
    sources = [b"", b"[]", b"null", b"3", b'"x"', b"{", b"\xff\xfe", b"[" * 50_000 + b"]" * 50_000,
               b"{" + b'"a":' * 20_000 + b"1" + b"}" * 20_000]
    sources += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) for _ in range(12)]
    for i, data in enumerate(sources):
        case = Case(f"{tool} source file", repr(data[:30]))
        path = tmp_path / f"s{i}.json"
        path.write_bytes(data)
        target = tmp_path / f"o{i}.jsonl"
        try:
            counts = convert(str(path), str(target))
        except ValueError as e:
            case.outcome("error") if str(path) in str(e) else case.fail(f"error names no file: {e}")
            continue
        except Exception as e:  # noqa: BLE001
            case.fail(_raw(e))
            continue
        # Parsed: only an object can be taken, and then every entry is accounted for.
        case.outcome("accepted") if counts.total.written + counts.total.rejected >= 0 and \
            json.loads(data.decode("utf-8-sig")) == {} else case.fail(f"accepted {data[:40]!r}")
    for same in (True, False):  # never written over its input
        case = Case(f"{tool} source file", f"target is source ({same})")
        source = tmp_path / "raw.json"
        source.write_text("{}")
        target = source if same else tmp_path / "raw.jsonl"
        try:
            convert(str(source), str(target))
            case.outcome("accepted") if not same else case.fail("wrote over its source")
        except ValueError as e:
            case.outcome("error") if same and "same file as --source_path" in str(e) else case.fail(str(e))


# ------------------------------------------------------------------------------------------------ TFRecords
def _shard(tmp_path, name, n=4, seed=0):
    rng = np.random.default_rng(seed)
    payloads = [rng.bytes(int(rng.integers(1, 200))) for _ in range(n)]
    return bid.write_shard(tmp_path / name, payloads), payloads


def test_fuzz_tfrecord_framing(tmp_path):
    rng = random.Random(SEED + 4)
    for i in range(120):
        path, payloads = _shard(tmp_path, f"f{i}.tfrecord", seed=i)
        size = os.path.getsize(path)
        data = bytearray(open(path, "rb").read())
        kind = rng.choice(["flip", "truncate", "length", "append"])
        if kind == "flip":
            data[rng.randrange(size)] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            del data[rng.randrange(size):]
        elif kind == "length":  # a length field with a valid CRC claiming far more than the file
            at = 0
            for payload in payloads[:rng.randrange(len(payloads))]:
                at += 16 + len(payload)
            data[at:at + 12] = bid.huge_length_header(rng.choice([1 << 40, 1 << 63, (1 << 64) - 1, size + 1]))
        else:
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20)))
        with open(path, "wb") as f:
            f.write(data)
        case = Case("tfrecord framing", f"{i}: {kind}")
        try:  # the strict reader, index-aware as the loaders use it
            source = tfrecord.TFRecordDataSource([path])
            records = [source[k] for k in range(len(source))]
            case.fail(f"a damaged shard read without an error ({len(records)} of {len(payloads)} records)")
            continue
        except tfrecord.TFRecordCorruptionError as e:
            if not str(e).startswith(f"{path}: "):
                case.fail(f"error names no file: {e}")
                continue
        except Exception as e:  # noqa: BLE001
            case.fail(_raw(e))
            continue
        try:  # the salvage load the frame index uses: never raises, lists the damage
            index = tfrecord.load_index(path, key_fn=lambda b: "k", salvage=True)
        except Exception as e:  # noqa: BLE001
            case.fail(f"salvage: {_raw(e)}")
            continue
        good = [k for k in index.keys if k is not None]
        if index.problems and len(good) <= len(payloads) and all(str(path) in p for p in index.problems):
            case.outcome("skipped" if good else "error")
        else:
            case.fail(f"salvage listed nothing: {index.problems}")


SIDECARS = ["[]", "{}", "null", '"x"', "1", "{", "[" * 60_000, '{"version": 1}',
            '{"version": 2, "offsets": [], "lengths": [], "size": 0, "mtime_ns": 0}']


def test_fuzz_index_sidecars(tmp_path):
    rng = random.Random(SEED + 5)
    for i in range(80):
        path, payloads = _shard(tmp_path, f"s{i}.tfrecord", seed=i)
        saved = json.loads(open(tfrecord.index_path(path)).read())
        if i < len(SIDECARS):
            text = SIDECARS[i]
        else:
            field = rng.choice(["offsets", "lengths", "keys", "size", "mtime_ns", "version"])
            value = rng.choice([-1, -21, "0", None, 1.5, True, [], [-1], 10 ** 30, {"a": 1}, [0, 0, 0, 0, 0]])
            saved[field] = value if field in ("size", "mtime_ns", "version") or not isinstance(saved.get(field), list) \
                else [value] + saved[field][1:] if not isinstance(value, list) else value
            text = json.dumps(saved)
        with open(tfrecord.index_path(path), "w") as f:
            f.write(text)
        case = Case("index sidecar", f"{i}: {text[:80]}")
        try:
            source = tfrecord.TFRecordDataSource([path])
            got = [source[k] for k in range(len(source))]
        except tfrecord.TFRecordCorruptionError as e:
            case.outcome("error") if str(path) in str(e) else case.fail(f"error names no file: {e}")
            continue
        except Exception as e:  # noqa: BLE001
            case.fail(_raw(e))
            continue
        case.outcome("accepted") if got == payloads else case.fail("wrong records from a bad sidecar")


# ------------------------------------------------------------------------------------------------ frame records
def _frame_mutations(rng):
    def example():
        return tf_example_pb2.Example.FromString(bid.frame_record("vid", seed=rng.randrange(1000)))

    out = []
    for value in (-16, 0, 1 << 40, 9000, 15):
        for field in ("height", "width"):
            e = example()
            e.features.feature[field].int64_list.value[0] = value
            out.append((e.SerializeToString(), False))
    for raw_id in (b"caf\xe9", b"", b"\xff" * 4):
        e = example()
        e.features.feature["video_id"].bytes_list.value[0] = raw_id
        out.append((e.SerializeToString(), False))
    for field in ("video_id", "duration", "frame_times", "frames", "height", "width"):
        e = example()
        del e.features.feature[field]
        out.append((e.SerializeToString(), False))
    for times in ([0, float("nan"), 5, 10], [0, 6, 5, 10], [3, 3, 3, 3], [0, 1, 2], [-5, 1, 2, 3],
                  [0, 1, 2, 1e9], [0, float("inf"), 5, 10]):
        e = example()
        del e.features.feature["frame_times"].float_list.value[:]
        e.features.feature["frame_times"].float_list.value.extend(times)
        out.append((e.SerializeToString(), False))
    for duration in (float("nan"), 0.0, -3.0, float("inf")):
        e = example()
        e.features.feature["duration"].float_list.value[0] = duration
        out.append((e.SerializeToString(), False))
    for k in range(6):
        e = example()
        frames = e.features.feature["frames"].bytes_list.value
        frames[k % 4] = frames[k % 4][:rng.randrange(1, 40)] if k % 2 else b"not a jpeg"
        out.append((e.SerializeToString(), False))
    for _ in range(10):
        out.append((bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80))), False))
    for k in range(10):
        times = np.sort(np.concatenate([[0.0], np.random.default_rng(k).uniform(0, 10, 2), [10.0]]))
        out.append((bid.frame_record(f"ok{k}", times=times, seed=k), True))
    return out


def test_fuzz_frame_records():
    rng = random.Random(SEED + 6)
    for i, (data, valid) in enumerate(_frame_mutations(rng)):
        case = Case("frame record", f"{i}")
        try:
            record = frames_lib.parse_frame_record(data, bid.NUM_FRAMES)
        except frames_lib.RecordError as e:
            named = str(e).startswith("video ") or str(e).startswith("record")
            if valid:
                case.fail(f"a valid record was refused: {e}")
            else:
                case.outcome("error") if named else case.fail(f"names nothing: {e}")
            continue
        except Exception as e:  # noqa: BLE001
            case.fail(_raw(e))
            continue
        ok = (record["frames"].shape == (bid.NUM_FRAMES, bid.SIZE, bid.SIZE, 3)
              and np.all(np.diff(record["frame_times"]) >= 0) and np.isfinite(record["frame_times"]).all())
        case.outcome("accepted") if valid and ok else case.fail(f"accepted a bad record (valid={valid})")


# ------------------------------------------------------------------------------------------------ examples
@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return bid.tokenizer(str(tmp_path_factory.mktemp("fuzz_sp")))


def _example_mutations(rng):
    out = []
    values = BAD_NUMBERS + [bid.DURATION + 50, 1e300]
    for value in values:
        for key in ("temporal_input_times", "temporal_output_times"):
            for position in (0, 1):
                times = [1.0, 4.0]
                times[position] = value
                out.append(({key: times}, False))
    for key in ("temporal_input_times", "temporal_output_times"):
        out += [({key: [6.0, 2.0]}, False), ({key: [1.0]}, False), ({key: [1.0, 2.0, 3.0]}, False),
                ({key: "1.0, 4.0"}, False), ({key: {"a": 1}}, False), ({key: 5}, False)]
    out += [({"conversations": []}, False), ({"conversations": "x"}, False),
            ({"conversations": [{"User": "q"}]}, False),
            ({"conversations": [{"User": "<video> twice", "Assistant": "a"}]}, False)]
    for _ in range(60):
        a, b = sorted(round(rng.uniform(0, bid.DURATION), 2) for _ in range(2))
        c, d = sorted(round(rng.uniform(0, bid.DURATION + 0.9), 2) for _ in range(2))  # within the tolerance
        out.append(({"temporal_input_times": [a, b], "temporal_output_times": [c, d]}, True))
    return out


def test_fuzz_example_encoding(tok):
    rng = random.Random(SEED + 7)
    for i, (change, valid) in enumerate(_example_mutations(rng)):
        example = dict(bid.example_record(f"ex{i}"), **change)
        case = Case("example encoding", f"{i}: {change}")
        try:
            out = encode.encode_example(example, tok, bid.DURATION, bid.NUM_FRAMES, bid.MAX_LENGTH,
                                        system_prompt="A video assistant.")
        except ValueError as e:
            if valid:
                case.fail(f"a valid example was refused: {e}")
            else:
                case.outcome("error") if str(e).startswith(f"example ex{i}: ") else case.fail(f"names nothing: {e}")
            continue
        except Exception as e:  # noqa: BLE001
            case.fail(_raw(e))
            continue
        times = out["target_times"]
        ok = np.isfinite(times).all() and (times >= 0).all() and (times <= 1).all() and \
            np.isfinite(out["placeholder_times"]).all()
        case.outcome("accepted") if valid and ok else case.fail(f"accepted (valid={valid}, finite={ok})")


# ------------------------------------------------------------------------------------------------ evaluation
QVH = {"qid": 1, "vid": "v1", "query": "A red circle appears.", "duration": 20.0, "relevant_windows": [[2.0, 8.0]]}


def _qvh_mutations(rng):
    out = []
    for field, values in (("qid", [None, {"a": 1}, [1], 1.5, True]), ("vid", ["", "a/b", "a\nb", 3, None]),
                          ("query", ["", "  ", 7, None, ["q"]]),
                          ("duration", [float("nan"), "20", -3, 0, float("inf")]),
                          ("relevant_windows", [[[-1, 3]], [[8, 2]], [[4, 4]], [[25, 30]], [[1]], [], "2-8",
                                                [[float("nan"), 3]], None])):
        for value in values:
            out.append((dict(QVH, **{field: value}), False))
    out += [("a string", False), (7, False), ([QVH], False)]
    for _ in range(25):
        start = round(rng.uniform(0, 18), 1)
        out.append((dict(QVH, relevant_windows=[[start, round(rng.uniform(start + 0.1, 30), 1)]],
                         query=" ".join(rng.choice(["a", "red", "dog", "runs"]) for _ in range(5))), True))
    return out


def test_fuzz_grounding_annotations(tmp_path):
    rng = random.Random(SEED + 8)
    for i, (record, valid) in enumerate(_qvh_mutations(rng)):
        case = Case("grounding annotation", f"{i}: {json.dumps(record, default=str)[:80]}")
        path = tmp_path / f"q{i}.jsonl"
        path.write_text(json.dumps(record, allow_nan=True) + "\n")
        try:
            checked = annotations.read_grounding(str(path))
        except annotations.AnnotationError as e:
            if valid:
                case.fail(f"a valid record was refused: {e}")
            else:
                ok = len(e.problems) == 1 and e.problems[0].startswith(f"{path}, line 1: ")
                case.outcome("error") if ok else case.fail(f"not one named problem: {e.problems}")
            continue
        except Exception as e:  # noqa: BLE001
            case.fail(_raw(e))
            continue
        if valid:
            case.outcome("accepted" if not checked.counts else "skipped")
        else:
            case.fail("accepted a bad record")


# ------------------------------------------------------------------------------------------------ settings
def test_fuzz_sampling_and_paths(tmp_path):
    rng = random.Random(SEED + 9)
    values = {"max_new_tokens": [0, -5, 1.5, True, None, "8", 1, 64],
              "temperature": [-1, -1e-9, float("nan"), float("inf"), "0", None, 0, 0.7],
              "top_p": [0, -1, 2, 1.0000001, float("nan"), None, 1, 0.9]}
    for field, options in values.items():
        for value in options:
            case = Case("sampling settings", f"{field}={value!r}")
            valid = (field == "max_new_tokens" and value in (1, 64) and value is not True) or \
                (field == "temperature" and value in (0, 0.7) and value is not None) or \
                (field == "top_p" and value in (1, 0.9) and value is not None)
            try:
                SamplingConfig(**{field: value})
            except ValueError as e:
                case.outcome("error") if not valid and str(e).startswith(field) else case.fail(str(e))
                continue
            except Exception as e:  # noqa: BLE001
                case.fail(_raw(e))
                continue
            case.outcome("accepted") if valid else case.fail("accepted")
    for i in range(20):  # output paths: never an input
        a = rng.choice(["a.jsonl", "./a.jsonl", "b.jsonl", "gs://x/a.jsonl", "gs://x//a.jsonl"])
        b = rng.choice(["a.jsonl", "gs://x/a.jsonl", "c.jsonl"])
        case = Case("output path", f"{a} vs {b}")
        same = os.path.normpath(a.replace("gs://x//", "gs://x/")) == os.path.normpath(b) or \
            a.replace("//a", "/a") == b
        try:
            outputs.check_not_input(a, {"--in": b}, "--out")
            case.outcome("accepted") if not same else case.fail("wrote over an input")
        except ValueError as e:
            case.outcome("error") if same and "--out" in str(e) and "--in" in str(e) else case.fail(str(e))


def test_fuzz_launch_config_checks():
    from launch import tpu
    rng = random.Random(SEED + 10)
    keys = ["learning_rate", "data.dir", "data.worker_count", "model.llm.num_layers", "batch_size"]
    bad = ["learnin_rate", "data.dri", "model.llm.nope", "nope", "data.dir.x", "model.vision.image_size.y"]
    for i in range(40):
        valid = rng.random() < 0.5
        key = rng.choice(keys if valid else bad)
        overrides = [f"--config.{key}=1", "--config.data.dir=gs://b/d"] if key != "data.dir" else \
            ["--config.data.dir=gs://b/d"]
        config = rng.choice(["configs/tiny.py", "configs/momentor_7b.py:gesm", "configs/demo.py"])
        case = Case("launch train config", f"{config} {overrides}")
        try:
            tpu.check_train_config(config, overrides, allow_local=False)
            case.outcome("accepted") if valid else case.fail("accepted an unknown key")
        except tpu.LaunchError as e:
            case.outcome("error") if not valid and "has no key" in str(e) else case.fail(str(e))
        except Exception as e:  # noqa: BLE001
            case.fail(_raw(e))


def test_fuzz_resume_checks():
    rng = random.Random(SEED + 11)
    base = {"variant": "gesm", "batch_size": 8, "grad_accum_steps": 1, "seed": 0, "max_length": 256,
            "num_frames": 8, "trainable": "momentor", "model": {"llm": {"vocab_size": 305, "num_layers": 2}},
            "learning_rate": 1e-3, "total_steps": 6}
    changes = [("variant", "instruct"), ("batch_size", 16), ("seed", 1), ("max_length", 128), ("num_frames", 4),
               ("trainable", "all"), ("model.llm.vocab_size", 306), ("model.llm.num_layers", 3),
               ("tokenizer_sha256", "other"), ("learning_rate", 2e-3), ("total_steps", 100)]
    for i in range(40):
        key, value = rng.choice(changes)
        current = copy.deepcopy(base)
        identity = {"tokenizer_sha256": "abc"}
        if key == "tokenizer_sha256":
            identity[key] = value
        elif key.startswith("model."):
            current["model"]["llm"][key.rsplit(".", 1)[1]] = value
        else:
            current[key] = value
        previous = dict(base, run_identity={"tokenizer_sha256": "abc"})
        allowed = key in ("learning_rate", "total_steps")
        case = Case("resume check", f"{key}={value}")
        try:
            found = resume.differences(previous, current, identity)
        except Exception as e:  # noqa: BLE001
            case.fail(_raw(e))
            continue
        if allowed:
            case.outcome("accepted") if not found else case.fail(f"refused an allowed change: {found}")
        else:
            case.outcome("error") if len(found) == 1 and found[0].startswith(key) else case.fail(f"{found}")


def test_fuzz_video_file_names(tmp_path):
    from momentor_jax.evaluate import VideoSource
    from momentor_jax.models import config as model_configs
    rng = random.Random(SEED + 12)
    extensions = [".mp4", ".MP4", ".Mkv", ".webm", ".txt", ".mp4.part", ""]
    for i in range(30):
        folder = tmp_path / f"d{i}"
        folder.mkdir()
        names = set()
        for _ in range(rng.randrange(1, 5)):
            stem = rng.choice(["clip", "clip.v1", "clip.v2", "A.B", ".hidden", "x"])
            names.add(stem + rng.choice(extensions))
        for name in names:
            (folder / name).write_bytes(b"")
        expected = collections.defaultdict(list)
        for name in names:
            lower = name.lower()
            ext = next((e for e in video_ids.VIDEO_EXTENSIONS if lower.endswith(e)), None)
            if ext and not name.startswith(".") and len(name) > len(ext):
                expected[name[:-len(ext)]].append(name)
        case = Case("video file names", f"{sorted(names)}")
        try:
            found = video_ids.list_video_files(str(folder), os.listdir, os.path.join)
            clean = all(len(v) == 1 for v in expected.values())
            ok = clean and found == {k: os.path.join(str(folder), v[0]) for k, v in expected.items()}
            case.outcome("accepted") if ok else case.fail(f"{found} vs {dict(expected)}")
        except video_ids.VideoIdCollision as e:
            collided = [k for k, v in expected.items() if len(v) > 1]
            case.outcome("error") if collided and all(k in str(e) for k in collided) else case.fail(str(e))
        except Exception as e:  # noqa: BLE001
            case.fail(_raw(e))
        source = VideoSource(model_configs.tiny(), video_dir=str(folder))
        if sorted(source.video_files()) != sorted(expected):
            case.fail(f"evaluate sees {sorted(source.video_files())}, extraction {sorted(expected)}")


# ------------------------------------------------------------------------------------------------ the verdict
def test_zz_fuzz_verdict(capsys):
    """Runs last (file order): at least 500 cases, none failed."""
    total = sum(TALLY.values())
    with capsys.disabled():
        print(f"\nfuzz cases: {total}")
        for (area, outcome), n in sorted(TALLY.items()):
            print(f"  {area:24s} {outcome:9s} {n}")
    assert not FAILURES, "\n".join(FAILURES[:40])
    assert total >= 500, total
