"""The web demo's HTML: the player, the dialogue with every time a link that seeks the player, the timelines.

Pure functions from the demo's state to HTML strings (every text from a user or the model is escaped); SEEK_JS is
the one script, installed once per page, that makes any element with `data-seek="SECONDS"` seek the player
(`video#momentor-video`) there: it sets currentTime, and leaves playing or paused as it was.

    player_html(url, name, duration, note)           the HTML5 player of the current video
    dialogue_html(turns, duration, ground_truth)     every turn: question, linked answer, timeline of its windows
    status_html(request, error)                       the outcome of a request: its error, if any, in a box
"""
from __future__ import annotations

import html
from typing import Optional, Sequence

from momentor_jax.evaluation import parsing

PLAYER_ID = "momentor-video"
SEEK_JS = f"""
if (!window.momentorSeekInstalled) {{
  window.momentorSeekInstalled = true;
  document.addEventListener('click', (event) => {{
    const link = event.target.closest('[data-seek]');
    if (!link) return;
    event.preventDefault();
    const video = document.getElementById('{PLAYER_ID}');
    if (!video) return;
    const seconds = parseFloat(link.dataset.seek);
    const seek = () => {{ video.currentTime = seconds; }};
    if (video.readyState >= 1) seek(); else video.addEventListener('loadedmetadata', seek, {{once: true}});
    video.scrollIntoView({{block: 'nearest'}});
  }});
}}
"""
CSS = """
.momentor-player video { width: 100%; max-height: 420px; background: #000; border-radius: 6px; }
.momentor-caption { font-size: 0.85em; color: #666; margin-top: 4px; }
.momentor-empty { padding: 60px 10px; text-align: center; color: #888; border: 1px dashed #bbb; border-radius: 6px; }
.momentor-turn { border-bottom: 1px solid #e5e5e5; padding: 8px 0 10px; }
.momentor-question { color: #333; margin-bottom: 4px; }
.momentor-answer { margin-bottom: 6px; }
.momentor-time { color: #c45500; font-weight: 600; text-decoration: underline; cursor: pointer; }
.momentor-lane { position: relative; height: 16px; background: #f1f1f1; border-radius: 3px; margin: 3px 0; }
.momentor-lane-label { font-size: 0.75em; color: #555; }
.momentor-window { position: absolute; top: 0; height: 16px; border-radius: 3px; cursor: pointer; min-width: 3px; }
.momentor-predicted { background: #f28e2b; }
.momentor-truth { background: #59a14f; }
.momentor-tick { position: absolute; top: 0; width: 3px; height: 16px; background: #c45500; cursor: pointer; }
.momentor-axis { display: flex; justify-content: space-between; font-size: 0.7em; color: #777; }
.momentor-note { font-size: 0.8em; color: #a33; }
.momentor-error { background: #fdecea; color: #8a1c12; border: 1px solid #f5c2bd; border-radius: 6px; padding: 8px; }
"""


def _seconds(value: float) -> str:
    return f"{value:.1f}s"


def player_html(url: Optional[str], name: str = "", duration: float = 0.0, note: str = "") -> str:
    if not url:
        return ('<div class="momentor-player"><div class="momentor-empty">Upload a video or type its path, '
                'then ask about it.</div></div>')
    caption = " · ".join(part for part in (html.escape(name), f"{duration:.1f} s", html.escape(note)) if part)
    return (f'<div class="momentor-player"><video id="{PLAYER_ID}" src="{html.escape(url, quote=True)}" controls '
            f'preload="metadata" playsinline data-duration="{duration:.3f}"></video>'
            f'<div class="momentor-caption">{caption}</div></div>')


def linked_answer(text: str, duration: float) -> str:
    """The answer as HTML with every time it says a link (`data-seek`, clipped to the video)."""
    out, cursor = [], 0
    for start, end, seconds in parsing.time_mentions(text):
        out.append(html.escape(text[cursor:start]))
        target = min(max(seconds, 0.0), duration)
        out.append(f'<a href="#" class="momentor-time" data-seek="{target:.3f}" '
                   f'title="play from {_seconds(target)}">{html.escape(text[start:end])}</a>')
        cursor = end
    out.append(html.escape(text[cursor:]))
    return "".join(out)


def _percent(seconds: float, duration: float) -> float:
    return 100.0 * min(max(seconds, 0.0), duration) / duration if duration > 0 else 0.0


def _lane(label: str, windows: Sequence[Sequence[float]], duration: float, kind: str, titles=None) -> str:
    bars = []
    for i, (start, end) in enumerate(windows):
        left, right = _percent(start, duration), _percent(end, duration)
        title = f"{_seconds(start)} to {_seconds(end)}" + (f": {titles[i]}" if titles else "")
        bars.append(f'<span class="momentor-window momentor-{kind}" data-seek="{start:.3f}" '
                    f'data-start="{start:.3f}" data-end="{end:.3f}" style="left:{left:.2f}%;width:{right - left:.2f}%" '
                    f'title="{html.escape(title, quote=True)}"></span>')
    return (f'<div class="momentor-lane-label">{html.escape(label)}</div>'
            f'<div class="momentor-lane">{"".join(bars)}</div>')


def timeline_html(windows, times, duration: float, truth_label: str = "", truth_windows=(), truth_titles=None) -> str:
    """Predicted windows (or, when the answer states none, its loose times as ticks) over [0, duration], and the
    ground truth in a lane below when there is some."""
    parts = ['<div class="momentor-timeline">']
    if windows:
        parts.append(_lane("predicted", windows, duration, "predicted"))
    else:
        ticks = "".join(f'<span class="momentor-tick" data-seek="{min(max(t, 0.0), duration):.3f}" '
                        f'style="left:{_percent(t, duration):.2f}%" title="{_seconds(t)}"></span>' for t in times)
        parts.append(f'<div class="momentor-lane-label">predicted: no window stated'
                     f'{" (times said: ticks)" if times else ""}</div><div class="momentor-lane">{ticks}</div>')
    if truth_windows:
        parts.append(_lane(truth_label or "ground truth", truth_windows, duration, "truth", truth_titles))
    parts.append(f'<div class="momentor-axis"><span>0s</span><span>{_seconds(duration / 2)}</span>'
                 f'<span>{_seconds(duration)}</span></div></div>')
    return "".join(parts)


def turn_html(index: int, question: str, answer: str, windows, times, duration: float, truth=None) -> str:
    """One dialogue turn. truth: None, or (label, windows, titles) for the ground-truth lane."""
    label, truth_windows, titles = truth or ("", (), None)
    return (f'<div class="momentor-turn" data-turn="{index}">'
            f'<div class="momentor-question"><b>You:</b> {html.escape(question)}</div>'
            f'<div class="momentor-answer"><b>Momentor:</b> {linked_answer(answer, duration)}</div>'
            f'{timeline_html(windows, times, duration, label, truth_windows, titles)}</div>')


def dialogue_html(turns_html: Sequence[str]) -> str:
    if not turns_html:
        return '<div class="momentor-dialogue"></div>'
    return f'<div class="momentor-dialogue">{"".join(turns_html)}</div>'


def status_html(request: int, error: str = "") -> str:
    """The outcome of the request numbered `request` (numbers are never reused): its error in a box, or nothing to
    see (a new number tells a script driving the page that its request was handled)."""
    box = f'<div class="momentor-error" role="alert">{html.escape(error)}</div>' if error else ""
    return f'<div class="momentor-status" data-request="{request}">{box}</div>'
