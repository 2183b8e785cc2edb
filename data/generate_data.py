"""Generates Moment-10M-style instruction data from a folder of untrimmed videos (momentor_jax/datagen/engine.py).

    python data/generate_data.py --video_dir DIR --out DIR --clip HF_DIR [--detector HF_DIR] [--captioner HF_DIR]
        [--llm HF_DIR] [--labels person,dog,... | --labels_file FILE] [--device cpu|cuda] [--sample_fps 1]

Every model is a local Hugging Face directory (nothing is downloaded): --clip a CLIPModel (e.g.
openai/clip-vit-large-patch14), --detector Grounding DINO or OWLv2, --captioner BLIP-2 or any image-text-to-text
model, --llm any causal LM (e.g. a Vicuna). Without --captioner no caption-based data type is written; without
--detector no instance-based one; without --llm questions and answers come from templates.
Writes OUT/moment10m.json and OUT/gesm.json (inputs of data/convert_data.py and data/convert_data_gesm.py),
OUT/per_video/*.json (a rerun skips these videos), OUT/generate_failures.jsonl, OUT/generate_metadata.json.
"""
import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the CLIP tower is small next to the torch models; override to move it

from momentor_jax.datagen import engine, events, instances, shots  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video_dir", required=True, help="folder of videos (local or gs://); id: name up to the first dot")
    p.add_argument("--out", required=True, help="output folder (local or gs://)")
    p.add_argument("--clip", required=True, help="HF CLIPModel directory")
    p.add_argument("--detector", help="HF Grounding DINO or OWLv2 directory")
    p.add_argument("--captioner", help="HF BLIP-2 / image-text-to-text directory")
    p.add_argument("--llm", help="HF causal LM directory (question and answer writing)")
    p.add_argument("--device", default=None, help="torch device for the HF models (default: cuda when available)")
    p.add_argument("--labels", help="comma-separated detector vocabulary (default: the 80 COCO classes)")
    p.add_argument("--labels_file", help="detector vocabulary, one label a line")
    p.add_argument("--detection_threshold", type=float, default=0.3)
    p.add_argument("--max_detections", type=int, default=20, help="per frame, after per-label NMS")
    p.add_argument("--caption_tokens", type=int, default=30, help="most new tokens per caption")
    p.add_argument("--llm_tokens", type=int, default=40, help="most new tokens per question or answer")
    p.add_argument("--shot_threshold", type=float, default=shots.ShotConfig.threshold,
                   help="PySceneDetect ContentDetector threshold")
    p.add_argument("--min_shot_seconds", type=float, default=shots.ShotConfig.min_shot_seconds)
    p.add_argument("--sample_fps", type=float, default=shots.ShotConfig.sample_fps,
                   help="frames per second sampled for features, detection and captions")
    p.add_argument("--max_side", type=int, default=shots.ShotConfig.max_side, help="longer side of sampled frames")
    p.add_argument("--event_threshold", type=float, default=events.EventConfig.threshold,
                   help="cosine similarity for a shot to join the current event")
    p.add_argument("--min_event_seconds", type=float, default=events.EventConfig.min_event_seconds)
    p.add_argument("--max_instances", type=int, default=engine.EngineConfig.max_instances)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_progress", action="store_true")
    return p


def _labels(args, parser) -> tuple:
    if args.labels and args.labels_file:
        parser.error("give --labels or --labels_file, not both")
    if args.labels_file:
        with open(args.labels_file, encoding="utf-8") as f:
            labels = [line.strip() for line in f if line.strip()]
    elif args.labels:
        labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    else:
        return instances.COCO_LABELS
    if not labels:
        parser.error("the label vocabulary is empty")
    return tuple(labels)


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    labels = _labels(args, parser)
    try:
        config = engine.EngineConfig(
            shots=shots.ShotConfig(threshold=args.shot_threshold, min_shot_seconds=args.min_shot_seconds,
                                   sample_fps=args.sample_fps, max_side=args.max_side),
            events=events.EventConfig(threshold=args.event_threshold, min_event_seconds=args.min_event_seconds),
            labels=labels, max_instances=args.max_instances, seed=args.seed)
    except ValueError as e:
        parser.error(str(e))
    device = args.device
    if device is None:
        import torch  # noqa: PLC0415

        device = "cuda" if torch.cuda.is_available() else "cpu"
    models = engine.Models.load(args.clip, args.detector, args.captioner, args.llm, device=device,
                                detection_threshold=args.detection_threshold, max_detections=args.max_detections,
                                caption_tokens=args.caption_tokens, llm_tokens=args.llm_tokens)
    try:
        summary = engine.run(args.video_dir, args.out, models, config, progress=not args.no_progress)
    except ValueError as e:  # a missing video folder, or an --out made with other models or config
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.line(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
