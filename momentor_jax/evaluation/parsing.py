"""Turn answer text (times rendered in seconds) back into windows and captioned events.

Generation renders each temporal token as seconds ("12.3s"), and text-timestamp models write times themselves in
the public script's templates ("12.30s-15.00s", "12 seconds to 15 seconds", ...). Both parse the same way here.
"""
from __future__ import annotations

import re
from typing import List, Optional, Tuple

_NUMBER = r"(\d+(?:\.\d+)?)"
_UNIT = r"\s*(?:s\b|sec(?:ond)?s?\b)?"
_WINDOW = re.compile(_NUMBER + _UNIT + r"\s*(?:to|-|~|–)\s*" + _NUMBER + _UNIT)
# An event of a GESM / dense-captioning answer: "<window>: caption" up to the next window or the end.
_EVENT = re.compile(_WINDOW.pattern + r"\s*[:,]?\s*(.*?)(?=\s*" + _NUMBER + _UNIT + r"\s*(?:to|-|~|–)\s*" + _NUMBER
                    + "|$)", re.S)


def parse_windows(text: str, duration: Optional[float] = None) -> List[Tuple[float, float]]:
    """All "<start> to <end>" windows in order of appearance; start/end swapped if reversed, clipped to duration."""
    windows = []
    for match in _WINDOW.finditer(text):
        start, end = float(match.group(1)), float(match.group(2))
        if end < start:
            start, end = end, start
        if duration is not None:
            start, end = min(max(start, 0.0), duration), min(max(end, 0.0), duration)
        windows.append((start, end))
    return windows


def parse_events(text: str, duration: Optional[float] = None) -> List[Tuple[float, float, str]]:
    """Captioned events "<start> to <end>: caption" in order; the caption runs to the next window."""
    events = []
    for match in _EVENT.finditer(text):
        start, end = float(match.group(1)), float(match.group(2))
        if end < start:
            start, end = end, start
        if duration is not None:
            start, end = min(max(start, 0.0), duration), min(max(end, 0.0), duration)
        caption = match.group(3).strip().rstrip(".,;").strip()
        events.append((start, end, caption))
    return events
