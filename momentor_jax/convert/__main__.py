"""python -m momentor_jax.convert {import_hf, export_hf, check_logits} ...

  import_hf     --llama HF_DIR [--clip HF_DIR] [--reference_weights FILE] --out CKPT
                [--num_temporal_tokens 300] [--num_frames 300] [--base_vocab_size B] [--no_scan_layers]
                [--temporal_init public|torch_default]
  export_hf     --checkpoint CKPT --out DIR
  check_logits  --checkpoint CKPT --hf_llama HF_DIR [--hf_clip HF_DIR] [--tolerance 1e-4]
                (exits 1 when a max |diff| exceeds the tolerance)
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # conversion runs on the host; set JAX_PLATFORMS to override


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m momentor_jax.convert", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    imp = commands.add_parser("import_hf", help="HF LLaMA (+ CLIP) dirs -> Momentor parameter checkpoint")
    imp.add_argument("--llama", required=True, help="HF LlamaForCausalLM dir (config.json + weights)")
    imp.add_argument("--clip", help="HF CLIPVisionModel or CLIPModel dir (its vision tower is taken)")
    imp.add_argument("--reference_weights", help="extra weights: the public trainer's mm_projector.bin or an "
                                                 "export's momentor_extras.safetensors")
    imp.add_argument("--out", required=True, help="checkpoint directory to write")
    imp.add_argument("--num_temporal_tokens", type=int, default=None,
                     help="N (default: the imported temporal tables' size, else 300)")
    imp.add_argument("--num_frames", type=int, default=None, help="M frames per video (default 300)")
    imp.add_argument("--base_vocab_size", type=int, default=None,
                     help="sentencepiece vocabulary size B (default: from the --llama dir's tokenizer.model; "
                          "required without one)")
    imp.add_argument("--no_scan_layers", dest="scan_layers", action="store_false",
                     help="store layers as layers_0, layers_1, ... instead of stacked for nn.scan")
    imp.add_argument("--dtype", default="bfloat16", help="compute dtype recorded in the config")
    imp.add_argument("--seed", type=int, default=0, help="seed for the randomly initialised parts")
    imp.add_argument("--temporal_init", default="public", choices=("public", "torch_default"),
                     help="new temporal tables: N(0, 0.02) as the public trainer, or torch's defaults N(0, 1) / "
                          "U(+-1/sqrt(D)) (MomentorConfig.temporal_init)")

    exp = commands.add_parser("export_hf", help="Momentor checkpoint -> HF dirs (llm, vision) + extras")
    exp.add_argument("--checkpoint", required=True)
    exp.add_argument("--out", required=True)

    chk = commands.add_parser("check_logits", help="compare fp32 logits / pooler_output with Hugging Face")
    chk.add_argument("--checkpoint", required=True)
    chk.add_argument("--hf_llama", required=True)
    chk.add_argument("--hf_clip")
    chk.add_argument("--tolerance", type=float, default=1e-4)
    chk.add_argument("--batch_size", type=int, default=2)
    chk.add_argument("--length", type=int, default=32)
    chk.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from momentor_jax.convert import commands  # noqa: PLC0415 (after argument errors, which need no imports)

    if args.command == "import_hf":
        commands.import_hf(args.llama, args.out, clip_dir=args.clip, reference_weights=args.reference_weights,
                           num_temporal_tokens=args.num_temporal_tokens, num_frames=args.num_frames,
                           base_vocab_size=args.base_vocab_size, scan_layers=args.scan_layers, dtype=args.dtype,
                           seed=args.seed, temporal_init=args.temporal_init)
        return 0
    if args.command == "export_hf":
        commands.export_hf(args.checkpoint, args.out)
        return 0
    diffs = commands.check_logits(args.checkpoint, args.hf_llama, args.hf_clip, batch_size=args.batch_size,
                                  length=args.length, seed=args.seed)
    failed = {name: value for name, value in diffs.items() if not value <= args.tolerance}
    for name, value in failed.items():
        print(f"FAIL: {name} max |diff| {value:.3g} > tolerance {args.tolerance:g}", file=sys.stderr)
    if not failed:
        print(f"OK: all max |diff| <= {args.tolerance:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
