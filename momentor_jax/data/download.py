"""Video download with yt-dlp's Python API: validated YouTube ids, skip-if-present, atomic files, failure log.

Each video is downloaded into its own temporary folder under <video_path>/.downloading/ and renamed to
<video_path>/<id>.<ext> only when yt-dlp reports success, so a half-written file never looks finished.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import re
import shutil
from typing import Iterable, Optional

from tqdm import tqdm

from momentor_jax.data import attrition
from momentor_jax.data.video import VIDEO_EXTENSIONS

YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}")
DEFAULT_URL_TEMPLATE = "https://www.youtube.com/watch?v={id}"
# The public script asks for format 134 (360p mp4, video only); fall back to the nearest that exists.
DEFAULT_FORMAT = "134/bestvideo[height<=360][ext=mp4]/best[height<=360]/best"
TEMP_DIR = ".downloading"
FAILURES_FILE = attrition.FAILURES_FILE.format(stage=attrition.DOWNLOAD)  # the name the Beam download writes


@dataclasses.dataclass(kw_only=True)
class DownloadSummary(attrition.LocalRun):
    """already_done counts the videos already present; invalid ids are listed in the failure log too."""
    downloaded: int
    invalid: list  # [(id, reason)]

    def line(self) -> str:
        return (f"downloaded {self.downloaded}, already present {self.already_done}, invalid ids "
                f"{len(self.invalid)}, failed {len(self.failed)}" + self.listed(bool(self.invalid or self.failed)))


def is_valid_id(video_id: str) -> bool:
    return isinstance(video_id, str) and YOUTUBE_ID.fullmatch(video_id) is not None


def read_video_ids(source_path: str) -> list:
    """Ids in file order, without repeats: keys of a JSON object ({video_id: ...}), or `id` (else `vid`) of each
    object of a JSON list or of a JSONL file."""
    with open(source_path) as f:
        text = f.read()
    try:
        payload = json.loads(text)
        rows = list(payload) if isinstance(payload, dict) else payload
    except json.JSONDecodeError:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{source_path}: line {number} is neither JSON nor JSONL: {e}") from e
    if not isinstance(rows, list):
        raise ValueError(f"{source_path}: expected a JSON object keyed by video id, a list or JSONL")
    ids = []
    for number, row in enumerate(rows, 1):
        if isinstance(row, dict):
            row = row.get("id", row.get("vid"))
        if row is None:
            raise ValueError(f"{source_path}: entry {number} has no 'id'")
        ids.append(str(row))
    return list(dict.fromkeys(ids))


def existing_file(video_path: str, video_id: str) -> Optional[str]:
    for ext in VIDEO_EXTENSIONS:
        path = os.path.join(video_path, video_id + ext)
        if os.path.exists(path):
            return path
    return None


class _QuietLogger:
    """Sends yt-dlp's chatter to logging; errors reach us through the DownloadError it raises."""

    def debug(self, msg):
        logging.debug("yt-dlp: %s", msg)

    def info(self, msg):
        logging.debug("yt-dlp: %s", msg)

    def warning(self, msg):
        logging.info("yt-dlp: %s", msg)

    def error(self, msg):
        logging.info("yt-dlp: %s", msg)


def _one_line(message: str) -> str:
    return " ".join(str(message).replace("ERROR: ", "").split())


def download_one(video_id: str, video_path: str, url_template: str = DEFAULT_URL_TEMPLATE,
                 fmt: str = DEFAULT_FORMAT, retries: int = 3, socket_timeout: float = 30.0) -> tuple:
    """Downloads one video; returns (status, detail) with status 'downloaded' (detail: the file) or 'failed'."""
    import yt_dlp  # noqa: PLC0415 (heavy import, only where downloading happens)

    temp_dir = os.path.join(video_path, TEMP_DIR, video_id)
    shutil.rmtree(temp_dir, ignore_errors=True)
    os.makedirs(temp_dir)
    options = {
        "format": fmt,
        "outtmpl": os.path.join(temp_dir, f"{video_id}.%(ext)s"),
        "noplaylist": True,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "logger": _QuietLogger(),
        "retries": retries,
        "fragment_retries": retries,
        "socket_timeout": socket_timeout,
        "overwrites": True,
        "merge_output_format": "mp4",
    }
    url = url_template.replace("{id}", video_id)
    try:
        with yt_dlp.YoutubeDL(options) as ydl:
            ydl.download([url])
        produced = [n for n in os.listdir(temp_dir)
                    if n.startswith(video_id + ".") and n.lower().endswith(VIDEO_EXTENSIONS)]
        if len(produced) != 1:
            return "failed", f"expected one video file from yt-dlp, found {sorted(os.listdir(temp_dir))}"
        target = os.path.join(video_path, produced[0])
        os.replace(os.path.join(temp_dir, produced[0]), target)
        return "downloaded", target
    except Exception as e:  # noqa: BLE001 (yt_dlp.utils.DownloadError and anything its extractors raise)
        return "failed", _one_line(e) or type(e).__name__
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def download_videos(video_ids: Iterable[str], video_path: str, workers: int = 4,
                    url_template: str = DEFAULT_URL_TEMPLATE, fmt: str = DEFAULT_FORMAT,
                    failures_path: Optional[str] = None, progress: bool = True) -> DownloadSummary:
    """Downloads every valid id not yet in video_path (threads: the work is network-bound)."""
    if "{id}" not in url_template:
        raise ValueError(f"--url_template must contain {{id}}, got {url_template!r}")
    os.makedirs(video_path, exist_ok=True)
    failures_path = failures_path or os.path.join(video_path, FAILURES_FILE)
    invalid, failed, todo, present = [], [], [], 0
    for video_id in video_ids:
        if not is_valid_id(video_id):
            invalid.append((video_id, "invalid YouTube id (want 11 characters of [A-Za-z0-9_-])"))
            logging.warning("skipping invalid video id %r", video_id)
        elif existing_file(video_path, video_id):
            present += 1
        else:
            todo.append(video_id)

    downloaded = 0
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        futures = {pool.submit(download_one, v, video_path, url_template, fmt): v for v in todo}
        for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc="downloading",
                           disable=not progress):
            status, detail = future.result()
            if status == "downloaded":
                downloaded += 1
            else:
                failed.append((futures[future], detail))
                logging.warning("download of %s failed: %s", futures[future], detail)
    try:
        os.rmdir(os.path.join(video_path, TEMP_DIR))  # only when empty: another run may be using it
    except OSError:
        pass

    failed.sort()
    with open(failures_path, "w") as f:
        for video_id, reason in invalid + failed:
            f.write(json.dumps({"id": video_id, "reason": reason}) + "\n")
    return DownloadSummary(downloaded=downloaded, already_done=present, invalid=invalid, failed=failed,
                           failures_path=failures_path)
