"""Instances: open-vocabulary detection on sampled frames, and a tracker that links detections into tracks.

Detection (`HFDetector`, torch through transformers, loaded from a local directory): Grounding DINO
(`model_type` grounding-dino) or OWLv2 (owlv2), told apart by the directory's config.json. Both are post-processed
here the same way: per predicted box, the label whose text scores highest (Grounding DINO: the max sigmoid over that
label's tokens in the ". "-joined prompt; OWLv2: the per-query sigmoid), boxes above `threshold`, per-label NMS,
the `max_detections` best. Labels are queried in chunks of `labels_per_query` (Grounding DINO's text is at most
256 tokens). Any object with `detect(images, labels) -> [[Detection]]` can stand in (the tests' stub does).
Detection.box is (x0, y0, x1, y1) as fractions of the frame's width and height.

Tracking (`track`, pure numpy + scipy's assignment): frames in time order; a detection may extend a live track of
its label when iou_weight * IoU(track's last box, box) + (1 - iou_weight) * cos(track's mean appearance, detection
appearance) >= min_match (IoU alone when there are no appearance features), one-to-one by the Hungarian assignment
of that score; a track not extended for more than `max_gap` frames ends; tracks with fewer than `min_detections`
detections are dropped. Track.span(interval, duration): [first time - interval / 2, last time + interval / 2]
clipped to the video (the true boundary lies anywhere between two samples). Track.click: (time, (x, y)) at its
highest-scoring detection, (x, y) the box centre as fractions of the frame.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Protocol

import numpy as np

# Default vocabulary: the 80 COCO classes (the paper tags frames with RAM; RAM is not in transformers).
COCO_LABELS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


@dataclasses.dataclass(frozen=True)
class Detection:
    box: tuple
    score: float
    label: str


class Detector(Protocol):
    def detect(self, images: list, labels: list) -> list: ...


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _nms(detections: list, iou: float, limit: int) -> list:
    kept = []
    for d in sorted(detections, key=lambda d: -d.score):
        if all(k.label != d.label or box_iou(k.box, d.box) <= iou for k in kept):
            kept.append(d)
        if len(kept) == limit:
            break
    return kept


def _xyxy(cxcywh: np.ndarray, sx: float = 1.0, sy: float = 1.0) -> tuple:
    cx, cy, w, h = (float(v) for v in cxcywh)
    box = ((cx - w / 2) * sx, (cy - h / 2) * sy, (cx + w / 2) * sx, (cy + h / 2) * sy)
    return tuple(min(1.0, max(0.0, v)) for v in box)


class HFDetector:
    """Grounding DINO or OWLv2 from a local Hugging Face directory."""

    def __init__(self, directory: str, threshold: float = 0.3, device: str = "cpu", labels_per_query: int = 16,
                 max_detections: int = 20, nms_iou: float = 0.5):
        import transformers  # noqa: PLC0415

        self.directory, self.threshold, self.device = directory, threshold, device
        self.labels_per_query, self.max_detections, self.nms_iou = labels_per_query, max_detections, nms_iou
        self.model_type = transformers.AutoConfig.from_pretrained(directory).model_type
        if self.model_type not in ("grounding-dino", "owlv2"):
            raise ValueError(f"{directory}: model_type {self.model_type!r}; the engine runs grounding-dino or owlv2")
        self.processor = transformers.AutoProcessor.from_pretrained(directory)
        self.model = transformers.AutoModelForZeroShotObjectDetection.from_pretrained(directory).eval().to(device)

    def detect(self, images: list, labels: list) -> list:
        from PIL import Image  # noqa: PLC0415

        pil = [Image.fromarray(np.asarray(im)) for im in images]
        found = [[] for _ in pil]
        for i in range(0, len(labels), self.labels_per_query):
            chunk = list(labels[i:i + self.labels_per_query])
            run = self._grounding_dino if self.model_type == "grounding-dino" else self._owlv2
            for out, dets in zip(found, run(pil, chunk)):
                out.extend(dets)
        return [_nms(dets, self.nms_iou, self.max_detections) for dets in found]

    def _forward(self, **inputs):
        import torch  # noqa: PLC0415

        with torch.no_grad():
            return self.model(**{k: v.to(self.device) for k, v in inputs.items()})

    def _grounding_dino(self, images: list, labels: list) -> list:
        prompt = ". ".join(labels) + "."
        inputs = self.processor(images=images, text=[prompt] * len(images), return_tensors="pt")
        out = self._forward(**inputs)
        probs = out.logits.sigmoid().float().cpu().numpy()  # [B, Q, T]
        boxes = out.pred_boxes.float().cpu().numpy()
        ids = inputs["input_ids"][0].tolist()
        spans, at = [], 0
        tokenizer = self.processor.tokenizer
        for label in labels:
            piece = tokenizer(label, add_special_tokens=False)["input_ids"]
            for start in range(at, len(ids) - len(piece) + 1):
                if ids[start:start + len(piece)] == piece:
                    spans.append((start, start + len(piece)))
                    at = start + len(piece)
                    break
            else:
                spans.append((0, 0))  # cut off by the text length limit
        results = []
        for b in range(len(images)):
            columns = [probs[b, :, s:e].max(axis=1) if (s, e) != (0, 0) and e <= probs.shape[2]
                       else np.zeros(probs.shape[1]) for s, e in spans]
            per_label = np.stack(columns, axis=1)  # [Q, L]
            results.append(self._pick(per_label, boxes[b], labels, 1.0, 1.0))
        return results

    def _owlv2(self, images: list, labels: list) -> list:
        inputs = self.processor(text=[labels] * len(images), images=images, return_tensors="pt",
                                padding="max_length", truncation=True,
                                max_length=self.model.config.text_config.max_position_embeddings)
        out = self._forward(**inputs)
        probs = out.logits.sigmoid().float().cpu().numpy()  # [B, P, L]
        boxes = out.pred_boxes.float().cpu().numpy()        # relative to the image padded to a square
        results = []
        for b, image in enumerate(images):
            width, height = image.size
            side = max(width, height)
            results.append(self._pick(probs[b], boxes[b], labels, side / width, side / height))
        return results

    def _pick(self, per_label: np.ndarray, boxes: np.ndarray, labels: list, sx: float, sy: float) -> list:
        best = per_label.argmax(axis=1)
        scores = per_label.max(axis=1)
        return [Detection(_xyxy(boxes[q], sx, sy), float(scores[q]), labels[int(best[q])])
                for q in np.flatnonzero(scores >= self.threshold)]


# ---- tracking ----

@dataclasses.dataclass(frozen=True)
class TrackerConfig:
    iou_weight: float = 0.5    # share of IoU in the match score; the rest is appearance cosine
    min_match: float = 0.3     # least match score that extends a track
    max_gap: int = 1           # sampled frames a track may go unmatched before it ends
    min_detections: int = 2    # shorter tracks are dropped

    def __post_init__(self):
        if not 0 <= self.iou_weight <= 1 or self.max_gap < 0 or self.min_detections < 1:
            raise ValueError(f"TrackerConfig: need 0 <= iou_weight <= 1, max_gap >= 0, min_detections >= 1; "
                             f"got {self}")


@dataclasses.dataclass
class Track:
    label: str
    frames: list = dataclasses.field(default_factory=list)   # indices into the sampled frames
    times: list = dataclasses.field(default_factory=list)
    boxes: list = dataclasses.field(default_factory=list)
    scores: list = dataclasses.field(default_factory=list)
    appearance: list = dataclasses.field(default_factory=list)

    def add(self, frame: int, time: float, detection: Detection, appearance: Optional[np.ndarray]) -> None:
        self.frames.append(frame)
        self.times.append(time)
        self.boxes.append(detection.box)
        self.scores.append(detection.score)
        if appearance is not None:
            self.appearance.append(np.asarray(appearance, np.float32))

    def mean_appearance(self) -> Optional[np.ndarray]:
        if not self.appearance:
            return None
        mean = np.mean(self.appearance, axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-8)

    def span(self, interval: float, duration: float) -> list:
        return [round(max(0.0, self.times[0] - interval / 2), 2), round(min(duration, self.times[-1] + interval / 2),
                                                                         2)]

    @property
    def best(self) -> int:
        return int(np.argmax(self.scores))

    def click(self) -> list:
        i = self.best
        x0, y0, x1, y1 = self.boxes[i]
        return [round(self.times[i], 2), [round((x0 + x1) / 2, 3), round((y0 + y1) / 2, 3)]]


def _cosine(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> float:
    if a is None or b is None:
        return 0.0
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-8))


def track(detections: list, times: list, appearance: Optional[list] = None,
          config: TrackerConfig = TrackerConfig()) -> list:
    """detections[f]: [Detection] on sampled frame f at times[f]; appearance[f]: float [len(detections[f]), D] or
    None. Returns the kept tracks, ordered by first appearance."""
    from scipy.optimize import linear_sum_assignment  # noqa: PLC0415

    if len(detections) != len(times) or (appearance is not None and len(appearance) != len(times)):
        raise ValueError("need one detection list (and appearance array) per sampled frame")
    live, done = [], []
    for f, (dets, t) in enumerate(zip(detections, times)):
        feats = appearance[f] if appearance is not None else [None] * len(dets)
        score = np.full((len(live), len(dets)), -np.inf)
        for i, tr in enumerate(live):
            mean = tr.mean_appearance()
            for j, d in enumerate(dets):
                if d.label == tr.label:
                    iou = box_iou(tr.boxes[-1], d.box)
                    score[i, j] = iou if mean is None or feats[j] is None else (
                        config.iou_weight * iou + (1 - config.iou_weight) * _cosine(mean, feats[j]))
        matched_tracks, matched_dets = set(), set()
        if live and dets:
            rows, cols = linear_sum_assignment(np.where(np.isfinite(score), -score, 1e9))
            for i, j in zip(rows, cols):
                if np.isfinite(score[i, j]) and score[i, j] >= config.min_match:
                    live[i].add(f, t, dets[j], feats[j])
                    matched_tracks.add(i)
                    matched_dets.add(j)
        still = []
        for i, tr in enumerate(live):
            (still if i in matched_tracks or f - tr.frames[-1] <= config.max_gap else done).append(tr)
        for j, d in enumerate(dets):
            if j not in matched_dets:
                new = Track(d.label)
                new.add(f, t, d, feats[j])
                still.append(new)
        live = still
    kept = [tr for tr in done + live if len(tr.frames) >= config.min_detections]
    return sorted(kept, key=lambda tr: (tr.times[0], tr.label))
