"""The one file layer: every path a user gives (local, or `gs://bucket/key`) is read and written through here.

Local paths go straight to `os` / builtin `open` (no extra cost); any path with a `scheme://` goes through fsspec
(gcsfs for gs://). fsspec rather than etils.epath because the loader needs ranged reads: one GET per record
(`RangeReader.read(i, offset, length)` -> `cat_file(path, start, end)`), which epath does not offer. orbax keeps
using epath/tensorstore for checkpoints; both accept the same strings. gs:// goes through `momentor_jax/gcs.py`
(one filesystem per process, our retries, one-line errors); a missing remote file raises
`gcs.StorageNotFoundError` (a FileNotFoundError) saying whether the bucket or the object is missing.

Contract:
    is_remote(path) -> bool                 a `scheme://` path
    join(path, *parts) -> str               '/'-joined for remote paths, os.path.join for local ones
    exists / isdir / isfile(path) -> bool
    size(path) -> int                       bytes
    stat(path) -> (size, version)           version: mtime_ns locally, the object generation on gs://
    listdir(path) -> [names]                sorted base names
    glob(pattern) -> [paths]                sorted, with the pattern's scheme kept
    makedirs(path)                          object stores have no directories: checks that the bucket exists
    check_bucket(path)                      a one-line error when a gs:// path's bucket does not exist
    open(path, mode)                        a file object (text or binary)
    read_bytes / read_text(path)
    write_bytes / write_text(path, data)    whole-file, atomic: readers see the old file or the new one
    atomic_open(path, mode)                 a context manager writing a file that appears whole on a clean exit
                                            (local: temp file + rename; remote: the upload is discarded on error)
    copy(src, dst)                          one file, any two locations
    remove(path)
    put_tree(local_dir, dst_dir)            every file under a local directory copied to dst_dir (local or remote)
    configure_for(path)                     sets up the remote filesystem before other libraries (orbax's
                                            etils.epath) touch `path`; nothing for local paths
    RangeReader(paths).read(i, offset, length) -> bytes   picklable; reopens its handles once per process
"""
from __future__ import annotations

import contextlib
import glob as glob_lib
import io
import os
import re
import threading
from typing import Sequence

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_remote(path) -> bool:
    return bool(_SCHEME.match(os.fspath(path)))


def _fs(path):
    """(fsspec filesystem, path as that filesystem spells it) for a remote path."""
    path = os.fspath(path)
    if path.startswith("gs://"):
        from momentor_jax import gcs  # noqa: PLC0415 (local runs never import it)
        return gcs.filesystem(), path[len("gs://"):]
    import fsspec  # noqa: PLC0415
    fs, fs_path = fsspec.core.url_to_fs(path)
    return fs, fs_path


@contextlib.contextmanager
def _explained(path):
    """Remote not-found errors say whether the bucket or the object is missing (one more request, on failure)."""
    try:
        yield
    except FileNotFoundError as e:
        if not os.fspath(path).startswith("gs://"):
            raise
        from momentor_jax import gcs  # noqa: PLC0415
        raise gcs.explain_missing(os.fspath(path)) from e


def _with_scheme(path: str, fs_path: str) -> str:
    scheme = os.fspath(path).split("://", 1)[0]
    return f"{scheme}://{fs_path}"


def join(path, *parts) -> str:
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.join(path, *parts)
    out = path.rstrip("/")
    for part in parts:
        out = f"{out}/{os.fspath(part).strip('/')}"
    return out


def _path_test(path, local, remote: str) -> bool:
    """local(path) for a local path, else the filesystem's method named `remote` on the bucket path."""
    if not is_remote(path):
        return local(path)
    fs, p = _fs(path)
    return getattr(fs, remote)(p)


def exists(path) -> bool:
    return _path_test(path, os.path.exists, "exists")


def isdir(path) -> bool:
    return _path_test(path, os.path.isdir, "isdir")


def isfile(path) -> bool:
    return _path_test(path, os.path.isfile, "isfile")


def size(path) -> int:
    if not is_remote(path):
        return os.path.getsize(path)
    fs, p = _fs(path)
    with _explained(path):
        return int(fs.size(p))


def stat(path) -> tuple:
    """(size in bytes, version): a rewritten file gets a new version (mtime_ns locally, generation on gs://)."""
    if not is_remote(path):
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    fs, p = _fs(path)
    with _explained(path):
        info = fs.info(p)
    version = info.get("generation") or info.get("mtime") or info.get("updated") or info.get("LastModified") or 0
    try:
        version = int(version)
    except (TypeError, ValueError):
        version = str(version)
    return int(info["size"]), version


def listdir(path) -> list:
    if not is_remote(path):
        return sorted(os.listdir(path))
    fs, p = _fs(path)
    with _explained(path):
        return sorted(os.path.basename(entry.rstrip("/")) for entry in fs.ls(p, detail=False))


def glob(pattern) -> list:
    pattern = os.fspath(pattern)
    if not is_remote(pattern):
        return sorted(glob_lib.glob(pattern))
    fs, p = _fs(pattern)
    return sorted(_with_scheme(pattern, found) for found in fs.glob(p))


def makedirs(path) -> None:
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
        return
    check_bucket(path)  # fail here, in one line, rather than at the first write


def check_bucket(path) -> None:
    """Raises a one-line not-found error when `path` is on gs:// and its bucket does not exist."""
    if os.fspath(path).startswith("gs://"):
        from momentor_jax import gcs  # noqa: PLC0415
        bucket = os.fspath(path)[len("gs://"):].split("/", 1)[0]
        if not gcs.bucket_exists(bucket):
            raise gcs.explain_missing(os.fspath(path))


def open(path, mode: str = "r", **kwargs):  # noqa: A001 (the module's one way to open a file)
    import builtins  # noqa: PLC0415
    if not is_remote(path):
        return builtins.open(path, mode, **kwargs)
    fs, p = _fs(path)
    if "r" in mode:
        with _explained(path):
            return fs.open(p, mode, **kwargs)
    return fs.open(p, mode, **kwargs)


def read_bytes(path) -> bytes:
    if is_remote(path):
        fs, p = _fs(path)
        with _explained(path):
            return fs.cat_file(p)
    with open(path, "rb") as f:
        return f.read()


def read_text(path, encoding: str = "utf-8") -> str:
    return read_bytes(path).decode(encoding)


def write_bytes(path, data: bytes) -> None:
    path = os.fspath(path)
    if is_remote(path):  # an object appears whole when its upload finishes
        fs, p = _fs(path)
        with _explained(path):
            fs.pipe_file(p, bytes(data))
        return
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text: str, encoding: str = "utf-8") -> None:
    write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", encoding: str = "utf-8"):
    """`with atomic_open(path, "w") as f:` the file appears whole when the block exits cleanly and not at all
    (the old one stays) when it raises."""
    path = os.fspath(path)
    if not is_remote(path):
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            with open(tmp, mode, **({} if "b" in mode else {"encoding": encoding})) as f:
                yield f
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    fs, p = _fs(path)
    raw = fs.open(p, "wb")
    f = raw if "b" in mode else io.TextIOWrapper(raw, encoding=encoding)
    try:
        yield f
    except BaseException:
        abort_upload(raw)
        raise
    f.close()


def abort_upload(f) -> None:
    """Drops a remote file opened for writing: nothing it buffered or started uploading becomes an object."""
    try:
        if hasattr(f, "discard"):
            f.discard()
    except Exception:  # noqa: BLE001 (the server may be the reason we are aborting)
        pass
    f.closed = True


def copy(src, dst) -> None:
    write_bytes(dst, read_bytes(src))


def put_tree(local_dir, dst_dir) -> list:
    """Copies every file under `local_dir` to the same relative path under `dst_dir`; returns the written paths."""
    written = []
    for root, _, files in sorted(os.walk(local_dir)):
        for name in sorted(files):
            relative = os.path.relpath(os.path.join(root, name), local_dir)
            target = join(dst_dir, *relative.split(os.sep))
            if not is_remote(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
            copy(os.path.join(root, name), target)
            written.append(target)
    return written


def configure_for(path) -> None:
    if os.fspath(path).startswith("gs://"):
        from momentor_jax import gcs  # noqa: PLC0415
        gcs.configure()


def remove(path) -> None:
    if not is_remote(path):
        os.remove(path)
        return
    fs, p = _fs(path)
    fs.rm_file(p)


class RangeReader:
    """Ranged reads of many files, `read(i, offset, length)`: `os.pread` on local files (descriptors opened lazily,
    once per process), one ranged GET per call on remote ones. Pickles without open handles, so grain worker
    processes each open their own."""

    def __init__(self, paths: Sequence[str]):
        self.paths = [os.fspath(p) for p in paths]
        self._remote = [is_remote(p) for p in self.paths]
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _fd(self, i: int) -> int:
        fd = self._fds.get(i) if self._pid == os.getpid() else None
        if fd is not None:
            return fd
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's descriptors are not ours to share
                self._fds, self._pid = {}, os.getpid()
            if i not in self._fds:
                self._fds[i] = os.open(self.paths[i], os.O_RDONLY)
            return self._fds[i]

    def read(self, i: int, offset: int, length: int) -> bytes:
        if not self._remote[i]:
            return os.pread(self._fd(i), int(length), int(offset))
        path = self.paths[i]
        fs, p = _fs(path)
        with _explained(path):
            return fs.cat_file(p, start=int(offset), end=int(offset) + int(length))

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __getstate__(self) -> dict:
        return {"paths": self.paths}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["paths"])

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass
