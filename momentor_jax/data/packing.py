"""Sequence packing: several encoded dialogues (with their videos) in one row of max_length.

A packed row (the per-row layout the model and the loss read; constants.BATCH_KEYS):

    input_ids, targets, loss_mask, placeholder_times, target_times   [L]   the dialogues one after another, then padding
    segment_ids   int32 [L]   k = 1..K for the k-th dialogue of the row, 0 on padding
    positions     int32 [L]   0, 1, 2, ... restarting at every dialogue (rotary embeddings see each one from 0)
    frames        uint8 [V, M, H, W, 3]  or  features float32 [V, M, F]: the row's videos in segment order, zero
                  after the last; the k-th video span (<vid_start> M x <vid_patch> <vid_end>) of the row takes video k
    num_videos    int32 []    how many of the V video slots are real
    durations     float32 [V] the videos' durations in seconds, 0 for empty slots

Dialogues are packed whole: encode_example has already cut an over-long dialogue at a turn boundary, so no video span
and no temporal placeholder is ever split across rows, and every token keeps exactly the context it had unpacked
(attention is causal within a segment, models/llama.py), so its loss is the unpacked loss.

The algorithm packs a window of `buffer_size` consecutive dialogues at a time, at most min(max_segments, max_videos)
dialogues per row (each has its video): best-fit decreasing (longest first, each into the open row with the least
room that takes it), a row-filling search (`_fill_rows`) and full rows first (`_full_rows_first`: rows of exactly
c of the shortest dialogues, then the rest, for each c), keeping whichever needs fewest rows. Rows leave in
the order they were opened; inside a row the dialogues keep their arrival order. Everything is a pure function of
the window, so the packed stream is deterministic for a seed, and the iterator's state is its parent's state at the
start of the current window plus how many of the window's rows have left: a restore re-reads that window and skips
those rows (the resume is exact; it costs one window of reads). A window holds `buffer_size` decoded examples in
memory (with frames, 300 x 224 x 224 x 3 bytes each; with cached features 1.2 MB).
"""
from __future__ import annotations

import bisect
import dataclasses
import heapq
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import grain
import numpy as np

TEXT_KEYS = ("input_ids", "targets", "loss_mask", "placeholder_times", "target_times")
VIDEO_KEYS = ("frames", "features")
SKIPPED_KEY = "_num_skipped"  # = loader.SKIPPED_KEY (not imported: the loader imports this module)
CLIPPED_KEY = "_num_clipped_times"  # = loader.CLIPPED_KEY
COUNT_KEYS = (SKIPPED_KEY, CLIPPED_KEY)  # per-example counts: a row carries their sums


@dataclasses.dataclass(frozen=True)
class PackingOptions:
    """How rows are packed. max_videos <= max_segments; buffer_size >= 1 dialogues per packing window."""
    max_length: int
    max_segments: int = 8
    max_videos: int = 8
    buffer_size: int = 256

    def __post_init__(self):
        for name in ("max_length", "max_segments", "max_videos", "buffer_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"packing: {name} must be >= 1, got {getattr(self, name)}")
        if self.max_videos > self.max_segments:
            raise ValueError(f"packing: max_videos_per_row {self.max_videos} > max_segments {self.max_segments} "
                             "(each video belongs to one segment)")

    @property
    def max_items(self) -> int:
        """Dialogues per row: every dialogue of the training data has its video, so the video slots bound it."""
        return min(self.max_segments, self.max_videos)


# ------------------------------------------------------------------------------------------------ pure packing
def _best_fit_decreasing(lengths: Sequence[int], max_length: int, max_items: int) -> list[list[int]]:
    """Longest first, each into the open row with the least room that takes it (ties: the earliest row)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n, best = lengths[i], -1
        for r in range(len(rows)):
            if room[r] >= n and len(rows[r]) < max_items and (best < 0 or room[r] < room[best]):
                best = r
        if best < 0:
            rows.append([])
            room.append(max_length)
            best = len(rows) - 1
        rows[best].append(i)
        room[best] -= n
    return rows


def _fill_rows(lengths: Sequence[int], max_length: int, max_items: int) -> list[list[int]]:
    """One row at a time: the longest dialogue left, then (while three more could fit) the longest that leaves room
    for two of the shortest, then the pair that fills the rest best (two pointers over the sorted lengths), then
    whatever single dialogue still fits. Best-fit decreasing leaves rows of three long dialogues when lengths are
    all a quarter to a third of the row; this closes them."""
    left = sorted((n, i) for i, n in enumerate(lengths))  # ascending; ties by arrival
    rows = []

    def largest_fitting(room: int) -> int:
        return bisect.bisect_right(left, (room, len(lengths))) - 1

    def best_pair(room: int) -> tuple[int, int, int]:
        lo, hi, best = 0, largest_fitting(room), (-1, -1, -1)
        while lo < hi:
            total = left[lo][0] + left[hi][0]
            if total > room:
                hi -= 1
                continue
            if total > best[0]:
                best = (total, lo, hi)
            if total == room:
                break
            lo += 1
        return best

    while left:
        n, i = left.pop()
        row, room = [i], max_length - n
        while left and len(row) < max_items:
            slots, shortest = max_items - len(row), left[0][0]
            if slots >= 3 and len(left) >= 3 and room >= 3 * shortest:
                j = largest_fitting(room - 2 * shortest)
            elif slots >= 2 and len(left) >= 2 and room >= 2 * shortest and best_pair(room)[0] >= 0:
                total, lo, hi = best_pair(room)
                row += [left.pop(hi)[1], left.pop(lo)[1]]
                room -= total
                continue
            else:
                j = largest_fitting(room)
            if j < 0:
                break
            n, i = left.pop(j)
            row.append(i)
            room -= n
        rows.append(row)
    return rows


def _deal(items: Sequence[tuple[int, int]], rows: int, max_items: int) -> tuple[list[list[int]], int]:
    """(length, index) pairs, exactly rows * max_items of them, dealt longest first each to the row with the fewest
    tokens that still has a free slot (ties: the earliest row) -> (rows, tokens of the fullest row)."""
    groups: list[list[int]] = [[] for _ in range(rows)]
    sums = [0] * rows
    heap = [(0, r) for r in range(rows)]
    for n, i in sorted(items, key=lambda item: (-item[0], item[1])):
        _, r = heapq.heappop(heap)
        groups[r].append(i)
        sums[r] += n
        if len(groups[r]) < max_items:
            heapq.heappush(heap, (sums[r], r))
    return groups, max(sums, default=0)


def _full_rows_first(lengths: Sequence[int], max_length: int, max_items: int, count: int) -> list[list[int]]:
    """As many rows of exactly `count` dialogues as the shortest dialogues can fill, then the rest by the better of
    the two packings above. The number of full rows is the largest k (binary search) for which the k * count
    shortest dialogues, dealt as `_deal` deals them, fit in k rows.

    Where every dialogue is longer than max_length / (count + 1), the dialogue count, not the tokens, bounds a row:
    the packings above then fill a few rows to `count` and leave the rest at count - 1 and short, while each row of
    `count` made from the shortest dialogues saves most of a row (the Moment-10M length model at 300 frames:
    dialogues of 391-658 tokens, rows of 2048 that hold 4 or 5)."""
    ascending = sorted((n, i) for i, n in enumerate(lengths))
    low, high = 0, len(lengths) // count
    while low < high:
        k = (low + high + 1) // 2
        if _deal(ascending[:k * count], k, count)[1] <= max_length:
            low = k
        else:
            high = k - 1
    full, _ = _deal(ascending[:low * count], low, count)
    rest = [i for _, i in ascending[low * count:]]
    if not rest:
        return full
    rest_lengths = [lengths[i] for i in rest]
    packed = min((_best_fit_decreasing(rest_lengths, max_length, max_items),
                  _fill_rows(rest_lengths, max_length, max_items)), key=len)
    return full + [[rest[j] for j in row] for row in packed]


def pack_lengths(lengths: Sequence[int], max_length: int, max_items: int) -> list[list[int]]:
    """Indices into `lengths` grouped into rows of at most `max_length` tokens and `max_items` dialogues: of the
    packings above (full rows first for every count from max_items down to 2), the one with fewest rows (ties: the
    first in that order after best-fit decreasing and the filling search); rows in the order they were opened, each
    row's indices ascending (arrival order). Deterministic."""
    lengths = [int(n) for n in lengths]
    for i, n in enumerate(lengths):
        if not 1 <= n <= max_length:
            raise ValueError(f"packing: dialogue {i} has {n} tokens; expected 1..{max_length}")
    if not lengths:
        return []
    candidates = [_best_fit_decreasing(lengths, max_length, max_items), _fill_rows(lengths, max_length, max_items)]
    candidates += [_full_rows_first(lengths, max_length, max_items, count) for count in range(max_items, 1, -1)]
    best = min(candidates, key=len)
    return [sorted(row) for row in best]


def pack_windows(lengths: Sequence[int], options: PackingOptions) -> list[list[int]]:
    """`pack_lengths` over consecutive windows of options.buffer_size, as the iterator packs a stream."""
    rows = []
    for start in range(0, len(lengths), options.buffer_size):
        window = lengths[start:start + options.buffer_size]
        rows += [[start + i for i in row] for row in pack_lengths(window, options.max_length, options.max_items)]
    return rows


def efficiency(lengths: Sequence[int], rows: Sequence[Sequence[int]], max_length: int) -> float:
    """Real tokens / token slots of the rows."""
    return float(sum(lengths[i] for row in rows for i in row)) / max(1, len(rows) * max_length)


def real_length(element: Mapping[str, Any]) -> int:
    """Tokens of one encoded (fixed-length, right-padded) dialogue."""
    return int(np.count_nonzero(np.asarray(element["segment_ids"])))


def _video_key(element: Mapping[str, Any]) -> Optional[str]:
    keys = [k for k in VIDEO_KEYS if k in element]
    if len(keys) > 1:
        raise ValueError(f"packing: an example carries both {keys}")
    return keys[0] if keys else None


def pack_row(elements: Sequence[Mapping[str, Any]], options: PackingOptions,
             video_template: Optional[tuple[str, tuple, Any]] = None) -> dict:
    """Encoded dialogues (fixed-length arrays from encode_example, plus `frames` or `features` [M, ...] and a
    `durations` scalar each) -> one packed row (the module docstring's layout).

    video_template: (key, per-video shape, dtype) of the video slots when no element of this row has a video (so
    every row of a stream has the same keys and shapes); default: taken from the elements."""
    length, max_videos = options.max_length, options.max_videos
    if len(elements) > options.max_segments:
        raise ValueError(f"packing: {len(elements)} dialogues for a row of at most {options.max_segments}")
    first = elements[0]
    row = {key: np.zeros(length, np.asarray(first[key]).dtype) for key in TEXT_KEYS}
    row["segment_ids"] = np.zeros(length, np.int32)
    row["positions"] = np.zeros(length, np.int32)
    videos, durations = [], []
    template = video_template
    counts = dict.fromkeys(COUNT_KEYS, 0)
    at = 0
    for k, element in enumerate(elements):
        unknown = set(element) - set(TEXT_KEYS) - {"segment_ids", "positions", "durations", *COUNT_KEYS,
                                                   *VIDEO_KEYS}
        if unknown:
            raise ValueError(f"packing: unexpected example keys {sorted(unknown)}")
        n = real_length(element)
        if at + n > length:
            raise ValueError(f"packing: {at + n} tokens for a row of {length}")
        for key in TEXT_KEYS:
            row[key][at:at + n] = np.asarray(element[key])[:n]
        row["segment_ids"][at:at + n] = k + 1
        row["positions"][at:at + n] = np.arange(n, dtype=np.int32)
        key = _video_key(element)
        if key is not None:
            video = np.asarray(element[key])
            if template is None:
                template = (key, video.shape, video.dtype)
            elif (key, video.shape, video.dtype) != template:
                raise ValueError(f"packing: a {key} {video.shape} {video.dtype} in a stream of {template}")
            videos.append(video)
            durations.append(float(element.get("durations", 0.0)))
        for key in COUNT_KEYS:
            counts[key] += int(element.get(key, 0))
        at += n
    if len(videos) > max_videos:
        raise ValueError(f"packing: {len(videos)} videos for a row of at most {max_videos}")
    if template is not None:
        key, shape, dtype = template
        slots = np.zeros((max_videos,) + tuple(shape), dtype)
        for v, video in enumerate(videos):
            slots[v] = video
        row[key] = slots
    row["num_videos"] = np.int32(len(videos))
    row["durations"] = np.zeros(max_videos, np.float32)
    row["durations"][:len(durations)] = durations
    for key in COUNT_KEYS:
        if any(key in e for e in elements):
            row[key] = np.int32(counts[key])
    return row


# ------------------------------------------------------------------------------------------ the grain stage
class PackIterDataset(grain.IterDataset):
    """Encoded dialogues -> packed rows (see the module docstring). Place after decoding and bad-record skipping,
    before batching."""

    def __init__(self, parent: grain.IterDataset, options: PackingOptions):
        super().__init__(parent)
        self._options = options

    def __iter__(self):
        return PackIterator(self._parent.__iter__(), self._options)

    def __str__(self) -> str:
        return f"PackIterDataset({self._options})"


class PackIterator(grain.DatasetIterator):

    def __init__(self, parent: grain.DatasetIterator, options: PackingOptions):
        super().__init__(parent)
        self._options = options
        self._window_start: Optional[dict] = None   # parent state before the current window
        self._rows: list = []                        # the current window's packed rows
        self._emitted = 0                            # rows of the current window handed on
        self._skip_rows = 0                          # after set_state: rows to drop from the re-read window
        self._template = None

    def _load_window(self) -> bool:
        start_state = self._parent.get_state()
        elements = []
        for _ in range(self._options.buffer_size):
            try:
                elements.append(next(self._parent))
            except StopIteration:
                break
        if not elements:
            return False
        for element in elements:
            if self._template is None and _video_key(element) is not None:
                key = _video_key(element)
                video = np.asarray(element[key])
                self._template = (key, video.shape, video.dtype)
        groups = pack_lengths([real_length(e) for e in elements], self._options.max_length, self._options.max_items)
        self._rows = [pack_row([elements[i] for i in group], self._options, self._template) for group in groups]
        self._window_start, self._emitted = start_state, 0
        return True

    def __next__(self) -> dict:
        while self._emitted >= len(self._rows):
            if not self._load_window():
                raise StopIteration
            if self._skip_rows:
                self._emitted, self._skip_rows = min(self._skip_rows, len(self._rows)), 0
        row = self._rows[self._emitted]
        self._rows[self._emitted] = None  # hand the arrays on; the window keeps only what is still to come
        self._emitted += 1
        return row

    def get_state(self) -> dict:
        if self._window_start is not None and self._emitted < len(self._rows):
            return {"parent": self._window_start, "rows_done": self._emitted}
        if self._skip_rows:  # restored, nothing read since
            return {"parent": self._parent.get_state(), "rows_done": self._skip_rows}
        return {"parent": self._parent.get_state(), "rows_done": 0}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._rows, self._emitted, self._window_start = [], 0, None
        self._skip_rows = int(state["rows_done"])

    def __str__(self) -> str:
        return "PackIterator"


# ------------------------------------------------------------------------------------- examples per row
def estimate_examples_per_row(lengths: Sequence[int], options: PackingOptions) -> float:
    """Mean dialogues per packed row over `lengths` packed window by window (for step counts of an epoch)."""
    if not len(lengths):
        raise ValueError("packing: no example lengths to estimate examples per row from")
    rows = pack_windows(list(lengths), options)
    return len(lengths) / len(rows)


def sample_lengths(encode: Callable[[int], Optional[int]], count: int, total: int, seed: int = 0,
                   progress: Optional[Callable[[int], None]] = None) -> list[int]:
    """Lengths of `count` examples drawn without replacement from `total` (seeded): encode(index) -> tokens, or
    None for an example that does not encode (left out)."""
    picks = np.random.default_rng(seed).permutation(total)[:count]
    out = []
    for done, index in enumerate(picks):
        n = encode(int(index))
        if n is not None:
            out.append(int(n))
        if progress is not None:
            progress(done + 1)
    return out


def batch_examples(segment_ids: np.ndarray) -> int:
    """Dialogues in a batch of rows [B, L] (packed or not): each row's largest segment id, summed."""
    segment_ids = np.asarray(segment_ids)
    return int(np.sum(np.max(segment_ids, axis=-1))) if segment_ids.size else 0


def as_lengths(elements: Iterable[Mapping[str, Any]]) -> list[int]:
    return [real_length(e) for e in elements]
