"""Attrition of Moment-10M preprocessing: why videos drop out, how many, and what it costs the training examples.

Failure rows (one JSON object per line, written by the Beam pipelines of momentor_jax/data/beam_pipelines.py):
    {"video_id": str, "stage": "download" | "frames" | "features", "reason": one of REASONS[stage], "detail": str}
Stage summary (<stage>_summary.json next to the failures):
    {"stage": str, "requested": int, "already_done": int, "done": int, "failed": {reason: count}}
    ("done" counts the videos this run downloaded / extracted / encoded)
The single-machine tools (data/download.py, data/extract.py) return a `LocalRun`: the videos already done, the
(video_id, reason) failures and the path of the log listing them, plus what each tool adds.

Reasons come from the error text of the per-video functions (yt-dlp's messages, video.VideoDecodeError):
    download: unavailable (removed, 404/410, not available), private (private, members-only, sign-in or age gate),
              blocked (YouTube's bot check or HTTP 403: the host, not the video; rerun from elsewhere or with
              cookies), network error (5xx, 429, timeouts, dropped connections: retried before it is recorded),
              invalid id, download error (anything else)
    frames:   corrupt (no video stream, invalid data, truncated), too short (no usable duration), decode error
    features: unreadable record

`example_coverage` answers "how many converted examples have frames, and which data types lose the most" for a
converted examples JSONL ({"id": video id, "data_type": ...} per line) and the set of video ids with frames.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import re
from typing import Iterable, Optional

from momentor_jax import fileio

DOWNLOAD, FRAMES, FEATURES = "download", "frames", "features"
UNAVAILABLE, PRIVATE, BLOCKED, NETWORK, INVALID_ID, DOWNLOAD_ERROR = (
    "unavailable", "private", "blocked", "network error", "invalid id", "download error")
CORRUPT, TOO_SHORT, DECODE_ERROR = "corrupt", "too short", "decode error"
UNREADABLE_RECORD = "unreadable record"
REASONS = {
    DOWNLOAD: (UNAVAILABLE, PRIVATE, BLOCKED, NETWORK, INVALID_ID, DOWNLOAD_ERROR),
    FRAMES: (CORRUPT, TOO_SHORT, DECODE_ERROR),
    FEATURES: (UNREADABLE_RECORD,),
}
FAILURES_FILE = "{stage}_failures.jsonl"
SUMMARY_FILE = "{stage}_summary.json"

# Lower-case fragments of yt-dlp / YouTube messages, checked in this order: blocked ("Sign in to confirm you're not
# a bot" must not read as an age gate), private ("This video is private" pages also say "unavailable"), an HTTP status
# ("HTTP Error 503: Service Unavailable" is transient), unavailable, network.
_BLOCKED = ("not a bot", "http error 403")
_PRIVATE = ("private video", "video is private", "members-only", "members only", "join this channel",
            "confirm your age", "sign in to confirm", "age-restricted")
_UNAVAILABLE = ("video unavailable", "not available", "has been removed", "no longer available", "been terminated",
                "does not exist", "copyright")
_NETWORK = ("too many requests", "timed out", "timeout", "connection", "temporarily", "remote end closed",
            "incomplete read", "network is unreachable", "reset by peer")
_HTTP_STATUS = re.compile(r"http error (\d{3})")
_CORRUPT = ("no video stream", "invaliddata", "invalid data", "moov atom", "truncated", "decodable frames end",
            "no decodable", "end of file", "eoferror")
_TOO_SHORT = ("bad duration",)


def _has(text: str, fragments: Iterable[str]) -> bool:
    return any(fragment in text for fragment in fragments)


def _http_reason(text: str):
    """The reason an HTTP status in the message gives: 5xx and 429 are transient, 404 and 410 mean gone."""
    match = _HTTP_STATUS.search(text)
    if match is None:
        return None
    status = int(match.group(1))
    if status >= 500 or status == 429:
        return NETWORK
    return UNAVAILABLE if status in (404, 410) else BLOCKED if status == 403 else DOWNLOAD_ERROR


def is_transient(message: str) -> bool:
    """A download error worth retrying (server overload, rate limit, dropped connection)."""
    return classify(DOWNLOAD, message) == NETWORK


def classify(stage: str, message: str) -> str:
    """The reason (one of REASONS[stage]) for a failure message of that stage."""
    text = str(message).lower()
    if stage == DOWNLOAD:
        if "invalid youtube id" in text:
            return INVALID_ID
        if _has(text, _BLOCKED):
            return BLOCKED
        if _has(text, _PRIVATE):
            return PRIVATE
        if (reason := _http_reason(text)) is not None:
            return reason
        if _has(text, _UNAVAILABLE):
            return UNAVAILABLE
        return NETWORK if _has(text, _NETWORK) else DOWNLOAD_ERROR
    if stage == FRAMES:
        if _has(text, _TOO_SHORT):
            return TOO_SHORT
        return CORRUPT if _has(text, _CORRUPT) else DECODE_ERROR
    if stage == FEATURES:
        return UNREADABLE_RECORD
    raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(REASONS)}")


def failure_row(video_id: str, stage: str, detail: str) -> dict:
    return {"video_id": video_id, "stage": stage, "reason": classify(stage, detail), "detail": detail}


@dataclasses.dataclass
class StageSummary:
    stage: str
    requested: int
    already_done: int
    done: int
    failed: dict  # {reason: count}

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def to_json(self) -> dict:
        return {"stage": self.stage, "requested": self.requested, "already_done": self.already_done,
                "done": self.done, "failed": dict(sorted(self.failed.items()))}

    def line(self) -> str:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.failed.items()))
        return (f"{self.stage}: requested {self.requested}, already done {self.already_done}, done {self.done}, "
                f"failed {self.failed_total}" + (f" ({reasons})" if reasons else ""))


@dataclasses.dataclass(kw_only=True)
class LocalRun:
    """What a single-machine stage run (data/download.py, data/extract.py) shares with the others: the videos done
    before it, each failure as (video_id, reason), and the log that lists the failures."""
    already_done: int
    failed: list  # [(video_id, reason)]
    failures_path: str

    def listed(self, problems: bool) -> str:
        """The summary line's pointer to the failure log, when there is something in it."""
        return f" (listed in {self.failures_path})" if problems else ""


def summarize(stage: str, requested: int, already_done: int, done: int, rows: Iterable[dict]) -> StageSummary:
    return StageSummary(stage, requested, already_done, done, dict(collections.Counter(r["reason"] for r in rows)))


def write_report(out_dir: str, summary: StageSummary, rows: list) -> tuple:
    """Writes <stage>_failures.jsonl (rows sorted by video id) and <stage>_summary.json; returns both paths."""
    failures = fileio.join(out_dir, FAILURES_FILE.format(stage=summary.stage))
    lines = [json.dumps(row, sort_keys=True) + "\n" for row in sorted(rows, key=lambda r: r["video_id"])]
    fileio.write_text(failures, "".join(lines))
    path = fileio.join(out_dir, SUMMARY_FILE.format(stage=summary.stage))
    fileio.write_text(path, json.dumps(summary.to_json(), indent=1) + "\n")
    return failures, path


def read_summary(out_dir: str, stage: str) -> StageSummary:
    payload = json.loads(fileio.read_text(fileio.join(out_dir, SUMMARY_FILE.format(stage=stage))))
    return StageSummary(payload["stage"], payload["requested"], payload["already_done"], payload["done"],
                        payload["failed"])


def stage_of_file(path: str) -> str:
    """The stage a failure log belongs to, by its name: <stage>_failures.jsonl, or the single-machine tools'
    extract_failures.jsonl (frames) and download_failures.jsonl."""
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    for stage in REASONS:
        if name.startswith(stage):
            return stage
    return FRAMES if name.startswith("extract") else DOWNLOAD


def read_failures(path: str) -> list:
    """Failure rows of a <stage>_failures.jsonl; the single-machine tools' logs ({id | video_id, reason}) are read
    too, their stage taken from the file name and their reason classified from their message."""
    stage = stage_of_file(path)
    rows = []
    for number, line in enumerate(fileio.read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            video_id = row.get("video_id", row.get("id"))
        except (json.JSONDecodeError, AttributeError) as e:
            raise ValueError(f"{path}: line {number} is not a JSON object: {e}") from e
        if video_id is None:
            raise ValueError(f"{path}: line {number} has no 'video_id'")
        if "stage" in row and row.get("reason") in REASONS.get(row["stage"], ()):
            rows.append(row)
        else:
            rows.append(failure_row(str(video_id), stage, str(row.get("detail", row.get("reason", "")))))
    return rows


@dataclasses.dataclass
class TypeCoverage:
    data_type: str
    examples: int
    with_frames: int

    @property
    def lost(self) -> int:
        return self.examples - self.with_frames

    @property
    def lost_fraction(self) -> float:
        return self.lost / self.examples if self.examples else 0.0


@dataclasses.dataclass
class Coverage:
    by_type: list  # [TypeCoverage], most lost (fraction) first
    videos: int
    videos_with_frames: int

    @property
    def examples(self) -> int:
        return sum(t.examples for t in self.by_type)

    @property
    def with_frames(self) -> int:
        return sum(t.with_frames for t in self.by_type)

    def table(self, failures_by_reason: Optional[dict] = None) -> str:
        total = TypeCoverage("total", self.examples, self.with_frames)
        lines = [f"videos referenced {self.videos}, with frames {self.videos_with_frames}, "
                 f"without {self.videos - self.videos_with_frames}",
                 f"{'data type':<32}{'examples':>10}{'w/ frames':>11}{'lost':>8}{'lost %':>8}"]
        for row in [*self.by_type, total]:
            lines.append(f"{row.data_type:<32}{row.examples:>10}{row.with_frames:>11}{row.lost:>8}"
                         f"{100 * row.lost_fraction:>7.1f}%")
        if failures_by_reason:
            lines.append("failed videos by stage and reason: " + ", ".join(
                f"{stage}/{reason} {count}" for (stage, reason), count in sorted(failures_by_reason.items())))
        return "\n".join(lines)


def example_coverage(examples_path: str, video_ids_with_frames: set) -> Coverage:
    """Counts, per data type, the examples of a converted JSONL whose video has frames; sorted by loss."""
    examples, kept, videos = collections.Counter(), collections.Counter(), set()
    with fileio.open(examples_path, "r") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                video_id, data_type = str(row["id"]), str(row.get("data_type", "unknown"))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{examples_path}: line {number}: not an example with an 'id': {e}") from e
            examples[data_type] += 1
            videos.add(video_id)
            kept[data_type] += video_id in video_ids_with_frames
    by_type = [TypeCoverage(t, examples[t], kept[t]) for t in examples]
    by_type.sort(key=lambda t: (-t.lost_fraction, -t.lost, t.data_type))
    return Coverage(by_type, len(videos), len(videos & video_ids_with_frames))
