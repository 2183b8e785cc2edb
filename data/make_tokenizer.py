"""A LLaMA sentencepiece model -> the MomentorTokenizer directory training reads (`<data.dir>/tokenizer`).

    python data/make_tokenizer.py --sentencepiece /path/to/llama-7b-hf/tokenizer.model --out data/tokenizer
        [--num_temporal_tokens 300]

The directory holds a byte-identical copy of the sentencepiece model and `added_tokens.json` (the added tokens at ids
B..V-1, their layout checked when it is loaded; the N temporal tokens live in the TPM tables, not in this vocabulary).
`convert import_hf` copies the LLaMA directory's tokenizer.model into its output, so `--sentencepiece
ckpt/imported/tokenizer.model` works too. `--sentencepiece` and `--out` may be gs:// paths.
Exit status: 0; 2 on bad arguments, a file that is not a sentencepiece model, or an --out that already holds a
different tokenizer.
"""
import argparse
import sys



def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentencepiece", required=True,
                        help="the LLaMA tokenizer.model (a sentencepiece model file; local or gs://)")
    parser.add_argument("--out", required=True, help="the tokenizer directory to write, e.g. data/tokenizer")
    parser.add_argument("--num_temporal_tokens", type=int, default=300,
                        help="N, the model's temporal tokens (the paper: 300); recorded for the consistency check "
                             "against model.num_temporal_tokens at training start")
    args = parser.parse_args(argv)
    if args.num_temporal_tokens < 1:
        parser.error(f"--num_temporal_tokens must be positive, got {args.num_temporal_tokens}")

    from momentor_jax import fileio  # noqa: PLC0415 (after argument parsing: --help stays fast)
    from momentor_jax.data import tokenizer as tokenizer_lib  # noqa: PLC0415

    if not fileio.isfile(args.sentencepiece):
        print(f"error: --sentencepiece {args.sentencepiece}: no such file", file=sys.stderr)
        return 2
    try:
        tokenizer = tokenizer_lib.MomentorTokenizer(args.sentencepiece, args.num_temporal_tokens)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: --sentencepiece {args.sentencepiece}: not a sentencepiece model ({e})", file=sys.stderr)
        return 2
    info_path = fileio.join(args.out, tokenizer_lib.ADDED_TOKENS_FILENAME)
    if fileio.exists(info_path):
        try:
            existing = tokenizer_lib.MomentorTokenizer.load(args.out)
        except (OSError, ValueError, RuntimeError) as e:
            print(f"error: --out {args.out} holds an unreadable tokenizer ({e}); choose another directory",
                  file=sys.stderr)
            return 2
        same = (existing.num_temporal_tokens == tokenizer.num_temporal_tokens
                and fileio.read_bytes(fileio.join(args.out, tokenizer_lib.MODEL_FILENAME))
                == fileio.read_bytes(args.sentencepiece))
        if not same:
            print(f"error: --out {args.out} already holds a different tokenizer; choose another directory",
                  file=sys.stderr)
            return 2
        print(f"{args.out} already holds this tokenizer (V = {tokenizer.vocab_size})")
        return 0
    tokenizer.save(args.out)
    print(f"wrote {args.out}: base vocabulary B = {tokenizer.base_vocab_size}, V = {tokenizer.vocab_size} "
          f"({tokenizer.vocab_size - tokenizer.base_vocab_size} added tokens), "
          f"N = {tokenizer.num_temporal_tokens} temporal tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
