"""The TFRecord container without TensorFlow: writer, verifying reader, sidecar offset index, random access.

A record on disk is
    uint64 length (little endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
with masked_crc = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32). Every read checks both CRCs and raises
`TFRecordCorruptionError` naming the file, the record index and the byte offset.

Each shard `X.tfrecord` may have a sidecar `X.tfrecord.index` (JSON): the shard's size and mtime and the (offset,
length) of every record, plus optional string keys (e.g. video ids). `load_index` trusts it only while size and
mtime still match and the last record ends at the end of the file; otherwise it rescans the shard and rewrites it.
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

from momentor_jax.data.open_files import OpenFiles

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
        self._write_path = f"{self.path}.tmp-{os.getpid()}" if atomic else self.path
        self._file = open(self._write_path, "wb")
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
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self.atomic:
            os.replace(self._write_path, self.path)
        if self.write_index:
            keys = self._keys if all(k is not None for k in self._keys) else None
            stat = os.stat(self.path)
            save_index(self.path, ShardIndex(self._offsets, self._lengths, stat.st_size, stat.st_mtime_ns, keys))

    def abort(self) -> None:
        """Drops what was written (the temp file of an atomic writer; nothing is renamed)."""
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


def iter_records(path: str) -> Iterator[bytes]:
    """Yields every record of a shard in order, verifying both CRCs."""
    path = os.fspath(path)
    offset = 0
    with open(path, "rb") as f:
        for index in range(1 << 62):
            header = f.read(_HEADER)
            if not header:
                return
            length = _check_header(path, index, offset, header)
            yield _check_payload(path, index, offset, length, f.read(length + _FOOTER))
            offset += _HEADER + length + _FOOTER


def read_record_at(fd: int, path: str, index: int, offset: int, length: int) -> bytes:
    """Reads and verifies the record that the index places at `offset` (thread-safe: positional reads)."""
    header = os.pread(fd, _HEADER, offset)
    stored_length = _check_header(path, index, offset, header)
    if stored_length != length:
        raise TFRecordCorruptionError(
            f"{path}: record {index} at byte {offset}: length {stored_length} but the index says {length}")
    return _check_payload(path, index, offset, length, os.pread(fd, length + _FOOTER, offset + _HEADER))


# ------------------------------------------------------------------------------------------------ index


@dataclasses.dataclass
class ShardIndex:
    offsets: list
    lengths: list
    size: int
    mtime_ns: int
    keys: Optional[list] = None

    def __len__(self) -> int:
        return len(self.offsets)

    def end(self) -> int:
        """Byte position just after the last record."""
        if not self.offsets:
            return 0
        return self.offsets[-1] + _HEADER + self.lengths[-1] + _FOOTER


def index_path(path: str) -> str:
    return os.fspath(path) + INDEX_SUFFIX


def scan_index(path: str, key_fn: Optional[Callable[[bytes], str]] = None) -> ShardIndex:
    """Reads a whole shard (verifying every CRC) and returns its index."""
    path = os.fspath(path)
    stat = os.stat(path)
    offsets, lengths, keys = [], [], []
    offset = 0
    for data in iter_records(path):
        offsets.append(offset)
        lengths.append(len(data))
        if key_fn is not None:
            keys.append(key_fn(data))
        offset += _HEADER + len(data) + _FOOTER
    return ShardIndex(offsets, lengths, stat.st_size, stat.st_mtime_ns, keys if key_fn is not None else None)


def save_index(path: str, index: ShardIndex) -> None:
    """Writes the sidecar atomically. A read-only directory is not an error: the index then lives in memory."""
    target = index_path(path)
    payload = {"version": INDEX_VERSION, "size": index.size, "mtime_ns": index.mtime_ns,
               "offsets": list(index.offsets), "lengths": list(index.lengths)}
    if index.keys is not None:
        payload["keys"] = list(index.keys)
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(payload, f)
        os.replace(tmp, target)
    except OSError as e:
        logging.warning("could not write index %s: %s", target, e)


def _read_saved_index(path: str) -> Optional[ShardIndex]:
    try:
        with open(index_path(path)) as f:
            payload = json.load(f)
        if payload.get("version") != INDEX_VERSION:
            return None
        index = ShardIndex(payload["offsets"], payload["lengths"], payload["size"], payload["mtime_ns"],
                           payload.get("keys"))
        if len(index.offsets) != len(index.lengths) or (index.keys is not None and len(index.keys) != len(index)):
            return None
        return index
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_index(path: str, key_fn: Optional[Callable[[bytes], str]] = None) -> ShardIndex:
    """The shard's index: the sidecar when it is current (and has keys if `key_fn` asks for them), else a rescan."""
    path = os.fspath(path)
    stat = os.stat(path)
    index = _read_saved_index(path)
    current = (index is not None and index.size == stat.st_size and index.mtime_ns == stat.st_mtime_ns
               and index.end() == stat.st_size and (key_fn is None or index.keys is not None))
    if current:
        return index
    logging.info("%s index for %s; rescanning", "stale" if index else "no", path)
    index = scan_index(path, key_fn)
    save_index(path, index)
    return index


# ------------------------------------------------------------------------------------------------ random access


class TFRecordDataSource:
    """Random access over the records of many shards; a grain `RandomAccessDataSource` returning record bytes.

    Files are opened lazily in each process (the object pickles without open handles, so grain workers can use it).
    """

    def __init__(self, paths: Sequence[str], key_fn: Optional[Callable[[bytes], str]] = None):
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise ValueError("TFRecordDataSource: no shard paths given")
        self.indexes = [load_index(p, key_fn) for p in self.paths]
        self._starts = [0]
        for index in self.indexes:
            self._starts.append(self._starts[-1] + len(index))
        self._files = OpenFiles(self.paths)

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
        return read_record_at(self._files.fd(shard), self.paths[shard], record, index.offsets[record],
                              index.lengths[record])

    def __getitem__(self, i: int) -> bytes:
        return self.read(*self.locate(i))

    def close(self) -> None:
        self._files.close()

    def __repr__(self) -> str:
        return f"TFRecordDataSource(paths={self.paths!r}, num_records={len(self)})"
