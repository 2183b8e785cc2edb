"""`--config.KEY=VALUE` overrides applied to an ml_collections ConfigDict outside absl's config flags (the demo
passes them on to its training commands, the benchmark suites build their models from them)."""
from __future__ import annotations

import ast
from typing import Sequence


def apply_overrides(config, overrides: Sequence[str]):
    """`KEY=VALUE` (dotted keys, optionally written `--config.KEY=VALUE`; Python literals, anything else a string)
    into `config`, which must already have each key."""
    for override in overrides:
        key, sep, text = override.removeprefix("--config.").partition("=")
        if not sep or not key:
            raise ValueError(f"override {override!r}: expected KEY=VALUE, e.g. batch_size=4")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(f"override {override!r}: the config has no key {key!r}")
        node[leaf] = value
    return config
