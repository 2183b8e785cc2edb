"""No tool writes over its input: an output path is checked against every input path before anything is written.

    check_not_input(output, {"--source_path": source, ...}, output_flag="--target_path")
        raises ValueError naming both flags when `output` is one of the inputs: the same path, the same file through
        another spelling or a link (local files), or the same object (gs:// paths, compared as normalized strings).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

from momentor_jax import fileio


def _normalized(path: str) -> str:
    path = os.fspath(path)
    if fileio.is_remote(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme.lower()}://{'/'.join(p for p in rest.split('/') if p)}"
    return os.path.realpath(os.path.abspath(path))


def same_file(a: str, b: str) -> bool:
    """True when `a` and `b` name one file (local: same inode when both exist, else the same real path)."""
    if fileio.is_remote(a) != fileio.is_remote(b):
        return False
    if not fileio.is_remote(a) and os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return _normalized(a) == _normalized(b)


def check_not_input(output: str, inputs: Mapping[str, Optional[str]], output_flag: str = "the output") -> None:
    """ValueError when `output` is one of `inputs` ({flag or description: path}; None paths are ignored)."""
    for flag, path in inputs.items():
        if path is not None and same_file(output, path):
            raise ValueError(f"{output_flag} {output} is the same file as {flag} {path}; refusing to write over an "
                             "input (choose another output path)")
