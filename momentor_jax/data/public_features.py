"""The public code's cached CLIP features -> feature records (frames.make_feature_record), without unpickling.

The public feature_extraction.py writes one `<video_id>.npy` per video: `np.save(path, {'duration': d, 'feature': f})`
with d a float (seconds) and f a torch float16 tensor [M, 1024] (M = 300 frames at i * d / (M - 1), CLIP ViT-L/14
pooler_output). np.save pickles the dict inside a 0-d object array; the tensor pickles as
torch._utils._rebuild_tensor_v2(torch.storage._load_from_bytes(b), 0, (M, F), (F, 1), requires_grad, OrderedDict()),
where b is a legacy torch.save stream: pickles of the magic number, the protocol version (1001), sys_info and the
storage as a persistent id ('storage', torch.HalfStorage, key, location, numel, None), a pickle of [key], then per
key an int64 element count and the raw little-endian elements.

`read_public_feature_file` never unpickles. It walks the opcodes with pickletools.genops through a stack machine that
knows only the opcodes and globals of that structure and builds inert values (a global is a name, a call is its name
and arguments, never called); the feature array is rebuilt from the raw bytes with numpy. Anything else (another
global or opcode, key, dtype, shape, stride, byte order) raises PublicFeatureError naming the file.

    python data/import_public_features.py --feature_dir DIR --out_dir OUT [--num_shards S] [--num_frames 300]
writes OUT/features-XXXXX-of-YYYYY.tfrecord (+ .index): video v in shard crc32(v) % S, in video-id order, read by
the loader with `use_features=True` (model config `use_cached_features`).
"""
from __future__ import annotations

import dataclasses
import io
import logging
import math
import pickletools
import reprlib
import struct
from typing import Any, Callable, Optional

import numpy as np
import tqdm

from momentor_jax import fileio
from momentor_jax.data import extract, features, frames as frames_lib, tfrecord

SUFFIX = ".npy"
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {"HalfStorage": np.dtype("<f2"), "FloatStorage": np.dtype("<f4")}
_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
    ("numpy", "dtype"), ("torch._utils", "_rebuild_tensor_v2"), ("torch.storage", "_load_from_bytes"),
    ("collections", "OrderedDict"),
} | {("torch", name) for name in _STORAGE_DTYPES}


class PublicFeatureError(ValueError):
    """A file that is not a public feature file of the expected structure."""


@dataclasses.dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclasses.dataclass(frozen=True)
class _Call:
    """REDUCE of a global: recorded, never performed. `state` is what BUILD attached."""
    function: _Global
    args: tuple
    state: Any = None


@dataclasses.dataclass(frozen=True)
class _Persistent:
    pid: Any


_MARK = object()
_VALUE_OPCODES = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8",
               "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT"}


def _run_pickle(stream: io.BytesIO, where: str) -> Any:
    """The value of the next pickle in `stream` (left just after its STOP), built from inert values only."""
    stack: list = []
    memo: dict = {}

    def pop_mark() -> list:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1:]
                del stack[i:]
                return items
        raise PublicFeatureError(f"{where}: MARK missing")

    def top() -> Any:
        if not stack or stack[-1] is _MARK:
            raise PublicFeatureError(f"{where}: stack underflow")
        return stack[-1]

    try:
        for opcode, arg, position in pickletools.genops(stream):
            name = opcode.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                if len(stack) != 1:
                    raise PublicFeatureError(f"{where}: pickle ends with {len(stack)} values on its stack")
                return stack[0]
            if name in _VALUE_OPCODES:
                stack.append(arg)
            elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
                stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "GLOBAL":
                    module, _, attribute = arg.partition(" ")
                else:
                    attribute, module = stack.pop(), stack.pop()
                if not isinstance(module, str) or not isinstance(attribute, str) or \
                        (module, attribute) not in _GLOBALS:
                    raise PublicFeatureError(f"{where}: refuses global {module}.{attribute} (byte {position}): "
                                             "not part of a public feature file")
                stack.append(_Global(module, attribute))
            elif name == "MARK":
                stack.append(_MARK)
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                count = int(name[-1])
                items = [stack.pop() for _ in range(count)][::-1]
                if any(item is _MARK for item in items):
                    raise PublicFeatureError(f"{where}: stack underflow")
                stack.append(tuple(items))
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name in ("APPEND", "APPENDS"):
                items = [stack.pop()] if name == "APPEND" else pop_mark()
                if not isinstance(top(), list):
                    raise PublicFeatureError(f"{where}: {name} onto a {type(top()).__name__}")
                top().extend(items)
            elif name in ("SETITEM", "SETITEMS"):
                items = [stack.pop(), stack.pop()][::-1] if name == "SETITEM" else pop_mark()
                target = top()
                if not isinstance(target, dict) or len(items) % 2:
                    raise PublicFeatureError(f"{where}: {name} onto a {type(target).__name__}")
                for key, value in zip(items[::2], items[1::2]):
                    if not isinstance(key, (str, int)):
                        raise PublicFeatureError(f"{where}: dict key of type {type(key).__name__}")
                    target[key] = value
            elif name in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if name == "MEMOIZE" else arg] = top()
            elif name in ("BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise PublicFeatureError(f"{where}: memo entry {arg} missing")
                stack.append(memo[arg])
            elif name == "REDUCE":
                args, function = stack.pop(), stack.pop()
                if not isinstance(function, _Global) or not isinstance(args, tuple):
                    raise PublicFeatureError(f"{where}: REDUCE of a {type(function).__name__}")
                stack.append(_Call(function, args))
            elif name == "BUILD":
                state, target = stack.pop(), stack.pop()
                if not isinstance(target, _Call) or target.state is not None:
                    raise PublicFeatureError(f"{where}: BUILD onto a {type(target).__name__}")
                stack.append(dataclasses.replace(target, state=state))
            elif name == "BINPERSID":
                stack.append(_Persistent(stack.pop()))
            else:
                raise PublicFeatureError(f"{where}: refuses pickle opcode {name} (byte {position})")
    except PublicFeatureError:
        raise
    except (IndexError, ValueError) as e:  # genops' truncated or malformed data; pops of an empty stack
        raise PublicFeatureError(f"{where}: malformed pickle ({e})") from e
    raise PublicFeatureError(f"{where}: pickle without STOP")


def _expect(condition: bool, where: str, what: str) -> None:
    if not condition:
        raise PublicFeatureError(f"{where}: {what}")


def _is_call(value: Any, name: str) -> bool:
    """A recorded call of the allowed global `name` (each name in _GLOBALS belongs to one function)."""
    return isinstance(value, _Call) and value.function.name == name


def _payload(data: bytes, where: str) -> dict:
    """The dict inside the .npy: its header must say a 0-d object array, its pickle must be np.save's."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version}")
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)(stream)
    except ValueError as e:
        raise PublicFeatureError(f"{where}: not a .npy file ({e})") from e
    _expect(header == ((), False, np.dtype(object)), where,
            f"holds an array of shape {header[0]} and dtype {header[2]}, not a pickled dict")
    array = _run_pickle(stream, where)
    _expect(stream.read(1) == b"", where, "bytes after the pickle")
    _expect(_is_call(array, "_reconstruct")
            and array.args[:2] == (_Global("numpy", "ndarray"), (0,)), where, "the pickle is not np.save's array")
    state = array.state
    _expect(isinstance(state, tuple) and len(state) == 5 and state[1] == () and isinstance(state[4], list)
            and len(state[4]) == 1, where, "the pickled array is not one object")
    dtype = state[2]
    _expect(_is_call(dtype, "dtype") and dtype.args[:1] == ("O8",), where, "the array is not of objects")
    payload = state[4][0]
    _expect(isinstance(payload, dict) and set(payload) == {"duration", "feature"}, where,
            f"holds {sorted(map(str, payload)) if isinstance(payload, dict) else type(payload).__name__}, "
            "not a dict with exactly 'duration' and 'feature'")
    return payload


def _storage(blob: Any, where: str) -> tuple[np.dtype, int, bytes]:
    """(dtype, element count, raw bytes) of torch.storage._load_from_bytes(blob): a legacy torch.save stream."""
    _expect(isinstance(blob, bytes), where, "tensor storage is not bytes")
    stream = io.BytesIO(blob)
    where = f"{where} (tensor storage)"
    _expect(_run_pickle(stream, where) == _TORCH_LEGACY_MAGIC, where, "not a torch.save stream (magic number)")
    _expect(_run_pickle(stream, where) == _TORCH_LEGACY_PROTOCOL, where, "unknown torch.save protocol")
    sys_info = _run_pickle(stream, where)
    _expect(isinstance(sys_info, dict) and sys_info.get("little_endian") is True, where, "not little endian")
    storage = _run_pickle(stream, where)
    _expect(isinstance(storage, _Persistent) and isinstance(storage.pid, tuple) and len(storage.pid) == 6, where,
            "no storage record")
    kind, storage_type, key, location, numel, view = storage.pid
    _expect(kind == "storage" and isinstance(storage_type, _Global) and storage_type.name in _STORAGE_DTYPES
            and isinstance(key, str) and isinstance(numel, int) and numel >= 0 and view is None, where,
            f"unexpected storage record {reprlib.repr(storage.pid)}")
    _expect(_run_pickle(stream, where) == [key], where, "storage keys do not match")
    dtype = _STORAGE_DTYPES[storage_type.name]
    count = stream.read(8)
    _expect(len(count) == 8 and struct.unpack("<q", count)[0] == numel, where, "storage size does not match")
    raw = stream.read()
    _expect(len(raw) == numel * dtype.itemsize, where, f"{len(raw)} storage bytes for {numel} x {dtype}")
    return dtype, numel, raw


def _feature_array(tensor: Any, where: str) -> np.ndarray:
    """A [M, F] contiguous CPU tensor pickled by torch -> float32 numpy."""
    _expect(_is_call(tensor, "_rebuild_tensor_v2") and tensor.state is None
            and len(tensor.args) == 6, where, "'feature' is not a pickled torch tensor")
    blob_call, offset, size, stride, _, hooks = tensor.args
    _expect(_is_call(blob_call, "_load_from_bytes") and len(blob_call.args) == 1, where,
            "'feature' has no storage")
    _expect(_is_call(hooks, "OrderedDict") and hooks.args == () and hooks.state is None, where,
            "'feature' carries backward hooks")
    dtype, numel, raw = _storage(blob_call.args[0], where)
    _expect(isinstance(size, tuple) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size), where,
            f"'feature' has shape {reprlib.repr(size)}, not [M, F]")
    _expect(offset == 0 and stride == (size[1], 1) and numel == size[0] * size[1], where,
            f"'feature' is not a whole contiguous [M, F] tensor (offset {reprlib.repr(offset)}, stride "
            f"{reprlib.repr(stride)}, {numel} elements)")
    return np.frombuffer(raw, dtype).reshape(size).astype(np.float32)


def read_public_feature_file(path: str) -> tuple[float, np.ndarray]:
    """(duration in seconds, features float32 [M, F]) of one public `<video_id>.npy`; raises PublicFeatureError."""
    payload = _payload(fileio.read_bytes(path), path)
    duration = payload["duration"]
    _expect(isinstance(duration, (int, float)) and not isinstance(duration, bool) and math.isfinite(duration)
            and duration > 0, path, f"duration {reprlib.repr(duration)} is not a positive number of seconds")
    values = _feature_array(payload["feature"], path)
    _expect(bool(np.all(np.isfinite(values))), path, "'feature' holds non-finite values")
    return float(duration), values


def frame_times(duration: float, num_frames: int) -> np.ndarray:
    """The public extraction's sample times: i * duration / (M - 1), both ends included."""
    return np.arange(num_frames, dtype=np.float64) * (duration / max(num_frames - 1, 1))


@dataclasses.dataclass
class ImportStats:
    videos: int = 0
    skipped: int = 0
    shards_written: int = 0
    shards_kept: int = 0  # complete from an earlier run


def import_feature_dir(feature_dir: str, out_dir: str, num_shards: int = 1, num_frames: Optional[int] = None,
                       overwrite: bool = False, log: Callable[[str], None] = logging.warning) -> ImportStats:
    """Every `<video_id>.npy` of feature_dir -> OUT/features-<s>-of-<num_shards>.tfrecord feature records.

    A file that is not a public feature file (or has another frame count than `num_frames`) is skipped, counted
    and named through `log`; if no file can be read the import raises. Output shards that exist are kept unless
    `overwrite`."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not fileio.isdir(feature_dir):
        raise FileNotFoundError(f"feature directory {feature_dir} does not exist")
    names = [n for n in fileio.listdir(feature_dir) if n.endswith(SUFFIX) and not n.startswith(".")]
    if not names:
        raise FileNotFoundError(f"{feature_dir}: no {SUFFIX} files")
    by_shard: dict[int, list[str]] = {}
    for name in names:
        video_id = name[:-len(SUFFIX)]
        by_shard.setdefault(extract.shard_of(video_id, num_shards), []).append(video_id)
    fileio.makedirs(out_dir)
    stats = ImportStats()
    progress = tqdm.tqdm(total=len(names), unit="video", desc="importing public features", mininterval=10)
    try:
        for shard in range(num_shards):
            target = frames_lib.shard_name(fileio.join(out_dir, features.OUTPUT_PREFIX), shard, num_shards)
            video_ids = sorted(by_shard.get(shard, []))
            if fileio.exists(target) and not overwrite:
                stats.shards_kept += 1
                progress.update(len(video_ids))
                continue
            with tfrecord.TFRecordWriter(target) as writer:
                for video_id in video_ids:
                    progress.update(1)
                    path = fileio.join(feature_dir, video_id + SUFFIX)
                    try:
                        duration, values = read_public_feature_file(path)
                        if num_frames is not None and len(values) != num_frames:
                            raise PublicFeatureError(f"{path}: {len(values)} frames, expected {num_frames}")
                    except (PublicFeatureError, OSError) as e:
                        log(f"skipping {e}")
                        stats.skipped += 1
                        continue
                    writer.write(frames_lib.make_feature_record(video_id, duration,
                                                                frame_times(duration, len(values)), values),
                                 key=video_id)
                    stats.videos += 1
            stats.shards_written += 1
    finally:
        progress.close()
    if stats.videos == 0 and stats.shards_kept == 0:
        raise RuntimeError(f"{feature_dir}: none of {len(names)} {SUFFIX} files is a public feature file "
                           f"({stats.skipped} skipped; see the messages above)")
    return stats
