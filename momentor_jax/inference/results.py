"""Answers kept as they are made, so an interrupted `evaluate` or batch `predict` resumes where it stopped.

On-disk layout (local or gs://, all through fileio):
    DIR/run.json             the settings the answers were made with (checkpoint step, sampling, prompt, batch size)
    DIR/part-00000.jsonl     one JSON record per answer, {"key": ..., ...}; parts are never appended to: every
    DIR/part-00001.jsonl     `every` records or `seconds` seconds (and on flush) a new part is written whole, an
    ...                      atomic rename locally and one object upload on GCS, where objects cannot be appended

`ResultLog(DIR, settings)` reads the parts already there (their records are `log.records`) and refuses a DIR made with
other settings, naming the differences: answers of another checkpoint must not be mixed in. `answer_and_log` answers
the items whose keys the log does not hold, adds each batch's records as it finishes, and flushes on every way out
(end, error, Ctrl-C), so finished answers are never lost. Greedy decoding resumed this way gives the answers of an
uninterrupted run: batches keep their composition (inference/batch.py).
"""
from __future__ import annotations

import json
import re
import time
from typing import Any, Callable, Hashable, Iterable, Optional, Sequence

from momentor_jax import fileio
from momentor_jax.inference import batch as batch_lib

MANIFEST = "run.json"
_PART = re.compile(r"^part-(\d{5,})\.jsonl$")


class ResultLog:
    def __init__(self, directory: str, settings: dict, every: int = 32, seconds: float = 30.0):
        self.directory, self.settings = directory, json.loads(json.dumps(settings))
        self.every, self.seconds = every, seconds
        self.records: list[dict] = []
        self._pending: list[dict] = []
        self._last_flush = time.monotonic()
        manifest = fileio.join(directory, MANIFEST)
        parts = []
        if fileio.isdir(directory) or fileio.exists(manifest):
            parts = sorted((int(m.group(1)), name) for name in fileio.listdir(directory)
                           for m in [_PART.match(name)] if m)
            if fileio.exists(manifest):
                self._check_settings(manifest)
            elif parts:
                raise ValueError(f"{directory}: holds answer parts but no {MANIFEST}; use another output location "
                                 "or remove it")
        for _, name in parts:
            self.records.extend(self._read_part(fileio.join(directory, name)))
        self._next = parts[-1][0] + 1 if parts else 0
        if not fileio.exists(manifest):
            fileio.makedirs(directory)
            fileio.write_text(manifest, json.dumps(self.settings, indent=1, sort_keys=True) + "\n")

    def _check_settings(self, manifest: str) -> None:
        try:
            saved = json.loads(fileio.read_text(manifest))
        except ValueError as e:
            raise ValueError(f"{manifest}: not JSON ({e}); use another output location or remove it") from None
        differ = sorted(k for k in set(saved) | set(self.settings) if saved.get(k) != self.settings.get(k))
        if differ:
            lines = [f"{k}: {saved.get(k)!r} there, {self.settings.get(k)!r} now" for k in differ]
            raise ValueError(f"{self.directory} holds answers made with other settings ("
                             + "; ".join(lines) + "); use another output location, or remove it to start over")

    @staticmethod
    def _read_part(path: str) -> list[dict]:
        records = []
        for number, line in enumerate(fileio.read_text(path).splitlines(), 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError as e:
                    raise ValueError(f"{path}, line {number}: not JSON ({e})") from None
                if not isinstance(record, dict) or "key" not in record:
                    raise ValueError(f"{path}, line {number}: not an answer record")
                records.append(record)
        return records

    def check_made_for(self, expected: dict, fields: Sequence[str], what: str) -> None:
        """ValueError when a kept record of a key in `expected` ({key: {field: value}}) differs in `fields`: the
        inputs changed since those answers were made (`what` names them)."""
        for record in self.records:
            want = expected.get(_key(record["key"]))
            if want is not None and any(record.get(f) != want[f] for f in fields):
                raise ValueError(f"{self.directory}: the answer kept for {record['key']!r} was made for "
                                 + ", ".join(f"{f} {record.get(f)!r}" for f in fields)
                                 + f"; the {what} changed since: use another output location")

    def keys(self) -> set:
        return {_key(r["key"]) for r in self.records}

    def add(self, records: Iterable[dict]) -> None:
        records = list(records)
        self.records.extend(records)
        self._pending.extend(records)
        if len(self._pending) >= self.every or time.monotonic() - self._last_flush >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            path = fileio.join(self.directory, f"part-{self._next:05d}.jsonl")
            fileio.write_text(path, "".join(json.dumps(r) + "\n" for r in self._pending))
            self._next += 1
            self._pending = []
        self._last_flush = time.monotonic()


def _key(value: Any) -> Hashable:
    """Keys as they read back from JSON (a tuple key comes back a list)."""
    return tuple(value) if isinstance(value, list) else value


def answer_and_log(items: Sequence[batch_lib.Item], log: ResultLog, make_generator: Callable[[], Any],
                   load_video: Callable[[Any], tuple], batch_size: int,
                   to_record: Callable[[batch_lib.Result], dict], desc: str = "answers",
                   progress: bool = True) -> int:
    """Answers the items not in `log` (loading the model through `make_generator` only if there are any); returns
    how many were answered now. Records are `to_record(result)` plus {"key": item.key}."""
    from tqdm import tqdm  # noqa: PLC0415

    done = log.keys()
    todo = [item for item in items if item.key not in done]
    if not todo:
        return 0
    generator = make_generator()
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, disable=not progress)
    try:
        for results in batch_lib.answer_items(generator, items, load_video, batch_size, done):
            log.add([{"key": r.item.key, **to_record(r)} for r in results])
            bar.update(len(results))
    finally:
        log.flush()
        bar.close()
    return len(todo)


def latest(records: Sequence[dict], keys: Optional[Iterable[Hashable]] = None) -> dict:
    """{key: record}, the last record of each key (of `keys` only, when given)."""
    wanted = None if keys is None else set(keys)
    out = {}
    for record in records:
        key = _key(record["key"])
        if wanted is None or key in wanted:
            out[key] = record
    return out
