r"""The paper's setup: CLIP ViT-L/14 + LLaMA-7B, 300 frames, 300 temporal tokens, max length 2048, global batch 32,
AdamW lr 2e-5 (cosine, 1% warmup, no weight decay), 2 epochs, bf16 compute over fp32 weights, gradient checkpointing;
the public code's text-embedding detach, tokenization and temporal-table init.

Variants:
  :gesm      stage 1, Grounded Event-Sequence Modeling. `init_from` = the `convert import_hf` output of the
             LLaVA-Lightening-7B (or Vicuna) weights.
  :instruct  stage 2, instruction tuning on Moment-10M. `init_from` = the GESM run's workdir (its final checkpoint).
  :gesm_frames, :instruct_frames   the same with the frozen ViT-L/14 run inside the step on frame records, instead
             of the pre-extracted pooled features the two above read (as the public code trains).

Both stages read pre-extracted features by default: the frozen tower's output is the same for every one of a
video's ~160 instructions, so it is computed once per video (data/extract_features.py writes `<data.dir>/features`
from the frame records with the imported checkpoint's tower) instead of ~4.8e13 FLOPs per example inside the step.
Rows are packed (data/packing.py): batch_size counts rows of 2048 tokens, ~4.2 Moment-10M dialogues each.

    python data/extract_features.py --frames "gs://B/data/gesm/frames/*.tfrecord" \
        --checkpoint gs://B/imported/llava_7b --out_dir gs://B/data/gesm/features
    python -m momentor_jax.train --config=configs/momentor_7b.py:gesm --workdir=gs://B/runs/gesm \
        --config.data.dir=gs://B/data/gesm --config.init_from=gs://B/imported/llava_7b
"""
from configs import base_config, parse_variant
from momentor_jax.models import config as model_configs

VARIANTS = ("gesm", "instruct", "gesm_frames", "instruct_frames")


def get_config(arg=None):
    variant = parse_variant(arg, "gesm", VARIANTS)
    frames = variant.endswith("_frames")
    variant = variant.removesuffix("_frames")
    c = base_config(model_configs.momentor_7b(), num_frames=300, max_length=2048, remat_policy="nothing_saveable")
    c.variant = variant                      # base_config's optimisation settings are the paper's; FSDP over the slice
    c.requires_init_from = True              # a frozen random LLaMA would teach nothing
    c.data.worker_count = 8
    # Packed rows: Moment-10M dialogues are >= ~390 tokens (302 of them the video span), so at most 5 fit in 2048
    # tokens; the length model averages 4.2 (python -m momentor_jax.tools.length_model).
    c.data.packing = True
    c.data.max_segments = c.data.max_videos_per_row = 5
    c.data.use_features = not frames
    c.model.llm.dtype = "bfloat16"
    c.model.vision.dtype = "bfloat16"
    # Trained as the public code trains (README, "Faithful to the paper"): only <vid_start>/<vid_end> of the token
    # table learn from rows with a video, and prompts are tokenized as transformers 4.33 does. New temporal tables
    # come from `convert import_hf --temporal_init public` (its default), N(0, 0.02) as the public trainer's.
    c.model.text_embedding_grad = "video_markers"
    c.model.added_token_whitespace = "strip"
    c.model.temporal_init = "public"
    return c


def sweep(arg=None):
    """Learning-rate and batch-size neighbours of the paper's setting."""
    return [{"learning_rate": lr, "batch_size": bs} for lr in (1e-5, 2e-5, 5e-5) for bs in (32, 64)]
