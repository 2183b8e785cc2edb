"""Evaluation metrics equal to the field's reference code; each takes plain dicts/lists and returns a dict.

grounding: R1@{0.3,0.5,0.7} and mIoU of the top-1 window. highlights: moment_detr's QVHighlights "brief" block.
segmentation: ms-tcn's Acc, Edit, F1@{10,25,50}. dense_captioning: densevid_eval's localisation P/R, METEOR and
CIDEr, plus SODA_c (soda). caption_scorers: the PTB tokenizer, METEOR and CIDEr runners they share.
"""
from momentor_jax.evaluation.metrics.caption_scorers import JAVA_SKIPPED_NOTE, CaptionScorers, java_available
from momentor_jax.evaluation.metrics.dense_captioning import evaluate_dense_captioning
from momentor_jax.evaluation.metrics.grounding import evaluate_grounding, top1_ious, window_iou
from momentor_jax.evaluation.metrics.highlights import evaluate_highlights
from momentor_jax.evaluation.metrics.segmentation import evaluate_segmentation
from momentor_jax.evaluation.metrics.soda import soda_c

__all__ = ["JAVA_SKIPPED_NOTE", "CaptionScorers", "java_available", "evaluate_dense_captioning", "evaluate_grounding",
           "top1_ious", "window_iou", "evaluate_highlights", "evaluate_segmentation", "soda_c"]
