"""The one answer parser: answer text (times in seconds) -> windows and captioned events.

`predict` (its --json windows, and batch answers) and `evaluate` (every task's submission) both read answers here,
so an answer means the same to both. Generation renders each temporal token as seconds ("12.3s"), and text-timestamp
models write times in the public script's templates ("12.30s-15.00s", "12 seconds to 15 seconds", "12s~15s"); an
LLM may also say "between 12.3s and 15.0s". A window is two times joined by one of those words; loose times that
are not joined ("26.0s 8.3s 7.2s") are not windows, and an answer without a window is unparsable.
Reversed windows are swapped; with a duration, both ends are clipped to [0, duration]. `time_mentions` finds where
in the text each time is said (the web demo links each one to the player).
"""
from __future__ import annotations

import re
from typing import List, Optional, Tuple

_NUMBER = r"(\d+(?:\.\d+)?)"
_UNIT = r"(?:\s*(?:s\b|secs?\b|seconds?\b))?"
_JOINED = rf"{_NUMBER}{_UNIT}\s*(?:to|-|~|–|—)\s*{_NUMBER}{_UNIT}"
_BETWEEN = rf"between\s+{_NUMBER}{_UNIT}\s+and\s+{_NUMBER}{_UNIT}"
_WINDOW = re.compile(rf"{_BETWEEN}|{_JOINED}", re.IGNORECASE)
_TIME = re.compile(rf"{_NUMBER}\s*(?:s\b|secs?\b|seconds?\b)", re.IGNORECASE)
_UNIT_AFTER = re.compile(rf"{_UNIT}", re.IGNORECASE)


def _windows_in(text: str, duration: Optional[float]):
    """(start, end, match) for every window in order of appearance."""
    for match in _WINDOW.finditer(text):
        groups = [g for g in match.groups() if g is not None]
        start, end = float(groups[0]), float(groups[1])
        if end < start:
            start, end = end, start
        if duration is not None:
            start, end = min(max(start, 0.0), duration), min(max(end, 0.0), duration)
        yield start, end, match


def parse_windows(text: str, duration: Optional[float] = None) -> List[Tuple[float, float]]:
    """All windows in order of appearance (see the module docstring)."""
    return [(start, end) for start, end, _ in _windows_in(text, duration)]


def parse_events(text: str, duration: Optional[float] = None) -> List[Tuple[float, float, str]]:
    """Captioned events "<window>: caption" in order; a caption runs from its window to the next one."""
    found = list(_windows_in(text, duration))
    events = []
    for i, (start, end, match) in enumerate(found):
        stop = found[i + 1][2].start() if i + 1 < len(found) else len(text)
        caption = text[match.end():stop].strip().lstrip(":,").strip().rstrip(".,;").strip()
        events.append((start, end, caption))
    return events


def time_mentions(text: str) -> List[Tuple[int, int, float]]:
    """(first char, end char, seconds) of every time the text says, in order: each end of a window, and every
    number with a time unit ("12.3s", "4 seconds"). The span covers the number and a unit right after it."""
    spans = {}
    for match in _WINDOW.finditer(text):
        for group in range(1, len(match.groups()) + 1):
            if match.group(group) is not None:
                start, end = match.span(group)
                end += len(_UNIT_AFTER.match(text, end).group(0))
                spans[start] = (start, end, float(match.group(group)))
    for match in _TIME.finditer(text):
        if not any(s <= match.start() < e for s, e, _ in spans.values()):
            spans[match.start()] = (match.start(), match.end(), float(match.group(1)))
    return [spans[k] for k in sorted(spans)]
