"""Read-only file descriptors opened lazily, one set per process, safe to pickle into grain workers."""
from __future__ import annotations

import os
import threading
from typing import Sequence


class OpenFiles:
    """`fd(i)` opens `paths[i]` once per process; a fork or an unpickled copy starts with none of the parent's."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def fd(self, i: int) -> int:
        fd = self._fds.get(i) if self._pid == os.getpid() else None
        if fd is not None:
            return fd
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's descriptors are not ours to share
                self._fds, self._pid = {}, os.getpid()
            if i not in self._fds:
                self._fds[i] = os.open(self.paths[i], os.O_RDONLY)
            return self._fds[i]

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
