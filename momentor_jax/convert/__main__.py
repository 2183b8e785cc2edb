"""python -m momentor_jax.convert {import_hf, export_hf, check_logits} ...

  import_hf     --llama HF_DIR [--clip HF_DIR] [--reference_weights FILE] --out CKPT
                [--num_temporal_tokens 300] [--num_frames 300] [--base_vocab_size B] [--no_scan_layers]
                [--dtype bfloat16] [--seed 0] [--temporal_init public|torch_default]
  export_hf     --checkpoint CKPT --out DIR
  check_logits  --checkpoint CKPT --hf_llama HF_DIR [--hf_clip HF_DIR] [--tolerance 1e-4]
                [--batch_size 2] [--length 32] [--seed 0]   (exits 1 when a max |diff| exceeds the tolerance)

CKPT for export_hf and check_logits: a training workdir (its latest step), one of its step directories
(WORKDIR/checkpoints/<step>) or a converted checkpoint (import_hf's --out), as predict and evaluate take it.
`python -m momentor_jax.convert COMMAND --help` describes every argument. Exit status: 0; 1 when check_logits
fails; 2 on bad arguments or input (a message naming the file).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # conversion runs on the host; set JAX_PLATFORMS to override

CHECKPOINT_HELP = ("Momentor checkpoint: a training workdir (latest step), a step directory "
                   "(WORKDIR/checkpoints/<step>) or a converted checkpoint (import_hf --out)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m momentor_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    imp = commands.add_parser("import_hf", help="HF LLaMA (+ CLIP) dirs -> Momentor parameter checkpoint",
                              description="Build a converted Momentor checkpoint (params/ + momentor_config.json "
                                          "+ tokenizer.model) from Hugging Face directories.")
    imp.add_argument("--llama", required=True, help="HF LlamaForCausalLM dir (config.json + weights), or an "
                                                    "export_hf OUT/llm dir")
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
    imp.add_argument("--dtype", default="bfloat16", help="compute dtype recorded in the config (default bfloat16)")
    imp.add_argument("--seed", type=int, default=0, help="seed for the randomly initialised parts (default 0)")
    imp.add_argument("--temporal_init", default="public", choices=("public", "torch_default"),
                     help="new temporal tables: N(0, 0.02) as the public trainer, or torch's defaults N(0, 1) / "
                          "U(+-1/sqrt(D)) (MomentorConfig.temporal_init)")

    exp = commands.add_parser("export_hf", help="Momentor checkpoint -> HF dirs (llm, vision) + extras",
                              description="Write OUT/llm (LlamaForCausalLM with V + N rows, tokenizer files when "
                                          "the checkpoint has a sentencepiece tokenizer), OUT/vision "
                                          "(CLIPVisionModel) and OUT/momentor_extras.safetensors (projector, "
                                          "temporal tables).")
    exp.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    exp.add_argument("--out", required=True, help="directory to write llm/, vision/ and the extras into")

    chk = commands.add_parser("check_logits", help="compare fp32 logits / pooler_output with Hugging Face",
                              description="Run our fp32 forward and Hugging Face's on the same random inputs and "
                                          "print the largest absolute differences.")
    chk.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    chk.add_argument("--hf_llama", required=True, help="HF LlamaForCausalLM dir to compare the logits with")
    chk.add_argument("--hf_clip", help="HF CLIPVisionModel dir to compare the vision tower's pooler_output with")
    chk.add_argument("--tolerance", type=float, default=1e-4, help="largest max |diff| that passes (default 1e-4)")
    chk.add_argument("--batch_size", type=int, default=2, help="random sequences compared (default 2)")
    chk.add_argument("--length", type=int, default=32, help="tokens per sequence (default 32)")
    chk.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from momentor_jax import cli  # noqa: PLC0415 (after argument errors, which need no imports)
    from momentor_jax.convert import commands  # noqa: PLC0415

    cli.quiet_libraries()
    try:
        if args.command == "import_hf":
            commands.import_hf(args.llama, args.out, clip_dir=args.clip, reference_weights=args.reference_weights,
                               num_temporal_tokens=args.num_temporal_tokens, num_frames=args.num_frames,
                               base_vocab_size=args.base_vocab_size, scan_layers=args.scan_layers,
                               dtype=args.dtype, seed=args.seed, temporal_init=args.temporal_init,
                               log=cli.progress)
            return 0
        if args.command == "export_hf":
            commands.export_hf(args.checkpoint, args.out, log=cli.progress)
            return 0
        diffs = commands.check_logits(args.checkpoint, args.hf_llama, args.hf_clip, batch_size=args.batch_size,
                                      length=args.length, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        cli.fail_storage(e)
        print(f"error: {e}", file=sys.stderr, flush=True)
        return cli.EXIT_USAGE
    except Exception as e:  # noqa: BLE001 (a storage failure gets its one line; anything else is re-raised)
        cli.fail_storage(e)
        raise
    failed = {name: value for name, value in diffs.items() if not value <= args.tolerance}
    for name, value in failed.items():
        print(f"FAIL: {name} max |diff| {value:.3g} > tolerance {args.tolerance:g}", file=sys.stderr)
    if not failed:
        print(f"OK: all max |diff| <= {args.tolerance:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
