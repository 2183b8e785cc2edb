"""One rule for video ids, wherever they come from (file names, annotation keys, frame records).

From a file name: the name without its video extension, matched case-insensitively (`clip.v1.mp4` -> `clip.v1`,
`VIDEO.MP4` -> `VIDEO`); hidden files and other extensions are not videos. Two files that give one id (`a.mp4` and
`a.MKV`) are an error, never a silent pick.

A usable id is a non-empty string without path separators, control characters (newlines, tabs, NUL) or surrounding
whitespace, and is not `.` or `..`: ids name files (`<id>.mp4`, `per_video/<id>.json`) and log lines.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")


class VideoIdCollision(ValueError):
    """Two video files map to one id."""


def video_id_from_filename(name: str) -> Optional[str]:
    """The id of a video file name (a base name), or None when the name is not a video file."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if base.startswith("."):
        return None
    lower = base.lower()
    for ext in VIDEO_EXTENSIONS:
        if lower.endswith(ext) and len(base) > len(ext):
            return base[:-len(ext)]
    return None


def group_video_files(names: Iterable[str]) -> dict:
    """{video_id: [names]} of the video files among `names` (sorted), others left out."""
    grouped: dict = {}
    for name in sorted(names):
        video_id = video_id_from_filename(name)
        if video_id is not None:
            grouped.setdefault(video_id, []).append(name)
    return grouped


def list_video_files(video_dir: str, listdir: Callable[[str], list], join: Callable[..., str]) -> dict:
    """{video_id: path} for the video files of a directory; VideoIdCollision names every id with several files."""
    grouped = group_video_files(listdir(video_dir))
    collisions = {v: names for v, names in grouped.items() if len(names) > 1}
    if collisions:
        shown = "; ".join(f"{v}: {', '.join(names)}" for v, names in sorted(collisions.items())[:5])
        raise VideoIdCollision(f"{video_dir}: {len(collisions)} video ids have several files ({shown}); "
                               "keep one file per video")
    return {v: join(video_dir, names[0]) for v, names in grouped.items()}


def id_problem(video_id) -> Optional[str]:
    """Why `video_id` cannot be a video id, or None when it can."""
    if not isinstance(video_id, str):
        return f"video id {video_id!r} is not a string"
    if not video_id:
        return "empty video id"
    if video_id != video_id.strip():
        return f"video id {video_id!r} has surrounding whitespace"
    if "/" in video_id or "\\" in video_id:
        return f"video id {video_id!r} contains a path separator"
    if video_id in (".", ".."):
        return f"video id {video_id!r} names a directory"
    if any(ord(c) < 32 or ord(c) == 127 for c in video_id):
        return f"video id {video_id!r} contains a control character (newline, tab, ...)"
    return None
