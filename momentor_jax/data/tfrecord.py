"""The TFRecord container without TensorFlow: writer, verifying reader, sidecar offset index, random access.

A record on disk is
    uint64 length (little endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
with masked_crc = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32). Every read checks both CRCs and raises
`TFRecordCorruptionError` naming the file, the record index and the byte offset.

Each shard `X.tfrecord` may have a sidecar `X.tfrecord.index` (JSON): the shard's size and mtime and the (offset,
length) of every record, plus optional string keys (e.g. video ids). `load_index` trusts it only while size and
mtime still match and the last record ends at the end of the file; otherwise it rescans the shard and rewrites it.
A sidecar that is not such an object (wrong types, negative or overlapping offsets) is ignored with a warning and
rebuilt the same way.

Salvage (`load_index(..., salvage=True)`, used by the frame index the loader joins on): a record whose data fails its
CRC, or whose key cannot be read, is kept in the index with key None and listed in `ShardIndex.problems` (file,
record, byte, reason); a damaged header ends the scan there (the bytes after it cannot be framed) and is listed too.
Without salvage every problem raises TFRecordCorruptionError. A length field is checked against the file size
before anything is read, so a damaged length never allocates it.

Paths go through momentor_jax/fileio.py, so shards and indexes may live on gs:// (there "mtime" is the object's
generation). A record is one ranged read (header, data and footer together), a GET on gs://. A remote shard is
uploaded as it is written and appears whole on a clean close; an aborted writer discards the upload.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import os
import struct
from typing import Callable, Iterator, Optional, Sequence

import google_crc32c

from momentor_jax import fileio

INDEX_SUFFIX = ".index"
INDEX_VERSION = 1
_HEADER = 12  # uint64 length + uint32 length crc
_FOOTER = 4  # uint32 data crc
_MASK_DELTA = 0xA282EAD8


class TFRecordCorruptionError(IOError):
    """A record whose length, CRC or size does not check out."""


def crc32c(data: bytes) -> int:
    return google_crc32c.value(bytes(data))


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def encode_record(data: bytes) -> bytes:
    """One framed record: header, payload, footer."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", masked_crc32c(length)) + bytes(data)
            + struct.pack("<I", masked_crc32c(data)))


# ------------------------------------------------------------------------------------------------ writing


class TFRecordWriter:
    """Appends records to `path`; with `atomic=True` it writes `path.tmp-<pid>` and renames on a clean close.

    `keys` passed to `write` are kept and, when `write_index=True`, stored in the sidecar index on close.
    """

    def __init__(self, path: str, atomic: bool = True, write_index: bool = True):
        self.path = os.fspath(path)
        self.atomic = atomic
        self.write_index = write_index
        self.remote = fileio.is_remote(self.path)
        # A remote object appears only when its upload finishes: writing it directly is already atomic.
        self._write_path = f"{self.path}.tmp-{os.getpid()}" if atomic and not self.remote else self.path
        self._file = fileio.open(self._write_path, "wb")
        self._offsets: list[int] = []
        self._lengths: list[int] = []
        self._keys: list[Optional[str]] = []
        self._position = 0

    def write(self, data: bytes, key: Optional[str] = None) -> int:
        """Appends one record; returns its index in the shard."""
        framed = encode_record(data)
        self._file.write(framed)
        self._offsets.append(self._position)
        self._lengths.append(len(data))
        self._keys.append(key)
        self._position += len(framed)
        return len(self._offsets) - 1

    def __len__(self) -> int:
        return len(self._offsets)

    def close(self) -> None:
        if self._file.closed:
            return
        if self.remote:
            self._file.close()
        else:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if self.atomic:
                os.replace(self._write_path, self.path)
        if self.write_index:
            keys = self._keys if all(k is not None for k in self._keys) else None
            size, version = fileio.stat(self.path)
            save_index(self.path, ShardIndex(self._offsets, self._lengths, size, version, keys))

    def abort(self) -> None:
        """Drops what was written (the temp file of an atomic writer, or the upload; nothing is renamed)."""
        if self.remote:
            fileio.abort_upload(self._file)
            return
        if not self._file.closed:
            self._file.close()
        if self.atomic and os.path.exists(self._write_path):
            os.remove(self._write_path)

    def __enter__(self) -> "TFRecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ------------------------------------------------------------------------------------------------ reading


def _check_header(path: str, index: int, offset: int, header: bytes) -> int:
    if len(header) < _HEADER:
        raise TFRecordCorruptionError(
            f"{path}: record {index} at byte {offset}: truncated header ({len(header)} of {_HEADER} bytes)")
    length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:12])[0]
    if masked_crc32c(length_bytes) != length_crc:
        raise TFRecordCorruptionError(f"{path}: record {index} at byte {offset}: length CRC mismatch")
    return struct.unpack("<Q", length_bytes)[0]


def _check_payload(path: str, index: int, offset: int, length: int, body: bytes) -> bytes:
    if len(body) < length + _FOOTER:
        raise TFRecordCorruptionError(
            f"{path}: record {index} at byte {offset}: truncated data ({len(body)} of {length + _FOOTER} bytes)")
    data, data_crc = body[:length], struct.unpack("<I", body[length:length + _FOOTER])[0]
    if masked_crc32c(data) != data_crc:
        raise TFRecordCorruptionError(f"{path}: record {index} at byte {offset}: data CRC mismatch")
    return data


def _check_fits(path: str, index: int, offset: int, length: int, file_size: int) -> None:
    end = offset + _HEADER + length + _FOOTER
    if end > file_size:
        raise TFRecordCorruptionError(
            f"{path}: record {index} at byte {offset}: truncated or damaged: length {length} runs past the end of the "
            f"file ({file_size} bytes; the record would end at byte {end})")


def iter_records(path: str) -> Iterator[bytes]:
    """Yields every record of a shard in order, verifying both CRCs."""
    for _, _, _, data, problem in scan_records(path, salvage=False):
        yield data


def scan_records(path: str, salvage: bool = True) -> Iterator[tuple]:
    """(record number, offset, length, data or None, problem or None) for every record in file order.

    With salvage, a record whose data fails its CRC comes with data None and the reason, and the scan goes on; a
    damaged or truncated header, or a length past the end of the file, comes last as (number, offset, None, None,
    reason): nothing after it can be framed. Without salvage the first problem raises TFRecordCorruptionError."""
    path = os.fspath(path)
    offset = 0
    file_size = fileio.size(path)
    with fileio.open(path, "rb") as f:
        for index in range(1 << 62):
            header = f.read(_HEADER)
            if not header:
                return
            try:
                length = _check_header(path, index, offset, header)
                _check_fits(path, index, offset, length, file_size)
            except TFRecordCorruptionError as e:
                if not salvage:
                    raise
                yield index, offset, None, None, str(e)
                return
            try:
                data = _check_payload(path, index, offset, length, f.read(length + _FOOTER))
                problem = None
            except TFRecordCorruptionError as e:
                if not salvage:
                    raise
                data, problem = None, str(e)
            yield index, offset, length, data, problem
            offset += _HEADER + length + _FOOTER


def read_record_at(reader: fileio.RangeReader, shard: int, index: int, offset: int, length: int) -> bytes:
    """Reads and verifies the record that the index places at `offset` of `reader.paths[shard]`: one positional
    read (thread-safe) of header, data and footer."""
    path = reader.paths[shard]
    framed = reader.read(shard, offset, _HEADER + length + _FOOTER)
    stored_length = _check_header(path, index, offset, framed[:_HEADER])
    if stored_length != length:
        raise TFRecordCorruptionError(
            f"{path}: record {index} at byte {offset}: length {stored_length} but the index says {length}")
    return _check_payload(path, index, offset, length, framed[_HEADER:])


# ------------------------------------------------------------------------------------------------ index


@dataclasses.dataclass
class ShardIndex:
    offsets: list
    lengths: list
    size: int
    mtime_ns: int
    keys: Optional[list] = None
    problems: list = dataclasses.field(default_factory=list)  # salvage: "file: record i at byte b: why" (not saved)

    def __len__(self) -> int:
        return len(self.offsets)

    def end(self) -> int:
        """Byte position just after the last record."""
        if not self.offsets:
            return 0
        return self.offsets[-1] + _HEADER + self.lengths[-1] + _FOOTER


def index_path(path: str) -> str:
    return os.fspath(path) + INDEX_SUFFIX


def scan_index(path: str, key_fn: Optional[Callable[[bytes], str]] = None, salvage: bool = False) -> ShardIndex:
    """Reads a whole shard (verifying every CRC) and returns its index; see the module doc for `salvage`."""
    path = os.fspath(path)
    size, version = fileio.stat(path)
    offsets, lengths, keys, problems = [], [], [], []
    for index, offset, length, data, problem in scan_records(path, salvage=salvage):
        if length is None:  # an unframeable header: the scan ends here
            problems.append(f"{problem} (the {size - offset} bytes from there on are skipped)")
            break
        key = None
        if data is None:
            problems.append(problem)
        elif key_fn is not None:
            try:
                key = key_fn(data)
            except ValueError as e:  # e.g. frames.RecordError: not an Example, no or a non-UTF-8 id
                if not salvage:
                    raise
                problems.append(f"{path}: record {index} at byte {offset}: {e}")
        offsets.append(offset)
        lengths.append(length)
        keys.append(key)
    return ShardIndex(offsets, lengths, size, version, keys if key_fn is not None else None, problems)


def save_index(path: str, index: ShardIndex) -> None:
    """Writes the sidecar atomically. A read-only directory is not an error: the index then lives in memory."""
    target = index_path(path)
    payload = {"version": INDEX_VERSION, "size": index.size, "mtime_ns": index.mtime_ns,
               "offsets": list(index.offsets), "lengths": list(index.lengths)}
    if index.keys is not None:
        payload["keys"] = list(index.keys)
    try:
        fileio.write_text(target, json.dumps(payload))
    except OSError as e:
        logging.warning("could not write index %s: %s", target, e)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _index_problem(payload) -> Optional[str]:
    """Why a parsed sidecar cannot be this module's index, or None when it can."""
    if not isinstance(payload, dict):
        return f"not a JSON object but {type(payload).__name__}"
    if payload.get("version") != INDEX_VERSION:
        return f"version {payload.get('version')!r}, not {INDEX_VERSION}"
    offsets, lengths, keys = payload.get("offsets"), payload.get("lengths"), payload.get("keys")
    if not isinstance(offsets, list) or not isinstance(lengths, list) or len(offsets) != len(lengths):
        return "'offsets' and 'lengths' are not two lists of one length"
    if not (_is_count(payload.get("size")) and _is_count(payload.get("mtime_ns"))):
        return "'size' or 'mtime_ns' is not a non-negative integer"
    position = 0
    for i, (offset, length) in enumerate(zip(offsets, lengths)):
        if not (_is_count(offset) and _is_count(length)) or offset != position:
            return f"record {i}: offset {offset!r} / length {length!r} do not follow the previous record"
        position = offset + _HEADER + length + _FOOTER
    if keys is not None and (not isinstance(keys, list) or len(keys) != len(offsets)
                             or not all(k is None or isinstance(k, str) for k in keys)):
        return "'keys' is not a list of one string (or null) per record"
    return None


def _read_saved_index(path: str) -> Optional[ShardIndex]:
    """The sidecar, or None when there is none or it is malformed (with a warning naming it: it is rebuilt)."""
    target = index_path(path)
    try:
        payload = json.loads(fileio.read_text(target))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as e:  # unreadable, not UTF-8, not JSON, nested absurdly deep
        logging.warning("index %s is unreadable (%s: %s); rebuilding it from the shard", target,
                        type(e).__name__, str(e)[:200])
        return None
    problem = _index_problem(payload)
    if problem is not None:
        if not (isinstance(payload, dict) and payload.get("version") not in (None, INDEX_VERSION)):
            logging.warning("index %s is malformed (%s); rebuilding it from the shard", target, problem)
        return None
    return ShardIndex(payload["offsets"], payload["lengths"], payload["size"], payload["mtime_ns"],
                      payload.get("keys"))


def saved_index(path: str) -> Optional[ShardIndex]:
    """The sidecar as written, current or not (None when missing or malformed): after damage, where records were
    and which keys they had."""
    return _read_saved_index(os.fspath(path))


def load_index(path: str, key_fn: Optional[Callable[[bytes], str]] = None, salvage: bool = False) -> ShardIndex:
    """The shard's index: the sidecar when it is current (and has keys if `key_fn` asks for them), else a rescan.
    With `salvage`, damaged records are listed in `problems` instead of raising (module doc); a sidecar that marks
    records unreadable (key None) lists them again."""
    path = os.fspath(path)
    size, version = fileio.stat(path)
    index = _read_saved_index(path)
    current = (index is not None and index.size == size and index.mtime_ns == version
               and index.end() == size and (key_fn is None or index.keys is not None))
    if current and (salvage or key_fn is None or None not in index.keys):
        index.problems = [f"{path}: record {i} at byte {index.offsets[i]}: unreadable (marked in {index_path(path)})"
                          for i, key in enumerate(index.keys or ()) if key is None and key_fn is not None]
        return index
    shrank = None
    if index is not None and size < index.end():  # records the sidecar knew are gone: truncation
        cut = next(i for i, (o, n) in enumerate(zip(index.offsets, index.lengths))
                   if o + _HEADER + n + _FOOTER > size)
        shrank = (f"{path}: record {cut} at byte {index.offsets[cut]}: truncated: the shard is {size} bytes, "
                  f"but {index_path(path)} records {len(index)} records ending at byte {index.end()} (delete the "
                  "index if the shard was replaced on purpose)")
        if not salvage:
            raise TFRecordCorruptionError(shrank)
    logging.info("%s index for %s; rescanning", "stale" if index else "no", path)
    scanned = scan_index(path, key_fn, salvage=salvage)
    if shrank is not None:  # keep the old sidecar, so every later start reports the loss too
        lost = len(index) - len([o for o in index.offsets if o < scanned.end()])
        scanned.problems.append(f"{shrank}; {lost} records lost")
        return scanned
    save_index(path, scanned)
    return scanned


# ------------------------------------------------------------------------------------------------ random access


class TFRecordDataSource:
    """Random access over the records of many shards; a grain `RandomAccessDataSource` returning record bytes.

    Files are opened lazily in each process (the object pickles without open handles, so grain workers can use it).
    """

    def __init__(self, paths: Sequence[str], key_fn: Optional[Callable[[bytes], str]] = None,
                 salvage: bool = False):
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise ValueError("TFRecordDataSource: no shard paths given")
        self.indexes = [load_index(p, key_fn, salvage=salvage) for p in self.paths]
        self._starts = [0]
        for index in self.indexes:
            self._starts.append(self._starts[-1] + len(index))
        self._files = fileio.RangeReader(self.paths)

    def __len__(self) -> int:
        return self._starts[-1]

    def locate(self, i: int) -> tuple[int, int]:
        """Global record number -> (shard number, record number inside the shard)."""
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range for {len(self)} records")
        shard = bisect.bisect_right(self._starts, i) - 1
        return shard, i - self._starts[shard]

    def read(self, shard: int, record: int) -> bytes:
        index = self.indexes[shard]
        return read_record_at(self._files, shard, record, index.offsets[record], index.lengths[record])

    def __getitem__(self, i: int) -> bytes:
        return self.read(*self.locate(i))

    def close(self) -> None:
        self._files.close()

    def __repr__(self) -> str:
        return f"TFRecordDataSource(paths={self.paths!r}, num_records={len(self)})"
