"""Length histogram of the Moment-10M length model, the padding of unpacked rows and the efficiency of packed ones.

    python -m momentor_jax.tools.length_model [--examples 20000] [--max_length 2048] [--num_frames 300]
        [--max_segments 8] [--max_videos_per_row 8] [--buffer_size 256] [--tokenizer DIR] [--json OUT]

The examples come from data/length_model.py (the ten data types, single and multi-turn, converted as
data/convert_data.py converts and encoded with the real template and M frame slots). --tokenizer takes a
MomentorTokenizer directory (data/make_tokenizer.py writes one from LLaMA's tokenizer.model); without it a stand-in
BPE model is trained on text of the same kind (cached under --work_dir). Exit status 2 on bad flags.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

from absl import flags

from momentor_jax import cli

FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_integer("examples", 20000, "dialogues to draw", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "seed of the draw")
    flags.DEFINE_integer("max_length", 2048, "tokens per row", lower_bound=16)
    flags.DEFINE_integer("num_frames", 300, "<vid_patch> slots per video (M)", lower_bound=1)
    flags.DEFINE_integer("max_segments", 8, "packed: dialogues per row at most", lower_bound=1)
    flags.DEFINE_integer("max_videos_per_row", 8, "packed: videos per row at most", lower_bound=1)
    flags.DEFINE_integer("buffer_size", 256, "packed: dialogues per packing window", lower_bound=1)
    flags.DEFINE_string("tokenizer", None, "MomentorTokenizer directory (default: a stand-in BPE model)")
    flags.DEFINE_string("work_dir", os.path.join(tempfile.gettempdir(), "momentor_length_model"),
                        "where the stand-in tokenizer is trained and kept")
    flags.DEFINE_string("json", None, "also write the figures here as JSON")


def report(figures: dict) -> str:
    lines = [f"{figures['examples']} dialogues, max_length {figures['max_length']}, tokenizer "
             f"{figures['tokenizer']} ({figures['tokens_per_word']:.2f} tokens per word of dialogue text)",
             f"tokens per dialogue (video span included): mean {figures['mean']:.1f}, median {figures['median']:.0f}, "
             f"p5 {figures['p5']:.0f}, p95 {figures['p95']:.0f}, min {figures['min']}, max {figures['max']}",
             "histogram (tokens: dialogues):"]
    peak = max(count for _, _, count in figures["histogram"])
    for low, high, count in figures["histogram"]:
        lines.append(f"  {low:5d}-{high - 1:<5d} {count:7d} {'#' * max(1, round(40 * count / peak))}")
    lines.append(f"unpacked rows: padding fraction {100 * figures['unpacked_padding_fraction']:.1f}% "
                 f"(real tokens / slots {100 * (1 - figures['unpacked_padding_fraction']):.1f}%)")
    lines.append(f"packed rows (max_segments {figures['max_segments']}, max_videos_per_row "
                 f"{figures['max_videos_per_row']}, buffer {figures['buffer_size']}): packing efficiency "
                 f"{100 * figures['packed_efficiency']:.1f}%, {figures['examples_per_row']:.2f} dialogues per row, "
                 f"{figures['useful_token_gain']:.2f}x the useful tokens of unpacked rows")
    return "\n".join(lines)


def main(argv) -> int:
    if len(argv) > 1:
        raise cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    from momentor_jax.data import length_model, packing  # noqa: PLC0415
    from momentor_jax.data.tokenizer import MomentorTokenizer  # noqa: PLC0415

    try:
        options = packing.PackingOptions(FLAGS.max_length, FLAGS.max_segments, FLAGS.max_videos_per_row,
                                         FLAGS.buffer_size)
    except ValueError as e:
        raise cli.usage_error(str(e)) from None
    if FLAGS.tokenizer:
        try:
            tokenizer = MomentorTokenizer.load(FLAGS.tokenizer)
        except (OSError, ValueError) as e:
            raise cli.usage_error(f"--tokenizer={FLAGS.tokenizer}: {e}") from None
        name = FLAGS.tokenizer
    else:
        with cli.phase("training the stand-in tokenizer"):
            tokenizer = length_model.stand_in_tokenizer(FLAGS.work_dir)
        name = f"stand-in BPE, {tokenizer.base_vocab_size} pieces"
    with cli.phase(f"encoding {FLAGS.examples} dialogues"):
        try:
            lengths = length_model.lengths(FLAGS.examples, tokenizer, FLAGS.num_frames, FLAGS.max_length,
                                           FLAGS.seed)
        except ValueError as e:
            raise cli.usage_error(str(e)) from None
    figures = length_model.summary(lengths, FLAGS.max_length, options)
    figures.update(tokenizer=name, tokens_per_word=length_model.tokens_per_word(tokenizer),
                   num_frames=FLAGS.num_frames, max_segments=FLAGS.max_segments,
                   max_videos_per_row=FLAGS.max_videos_per_row, buffer_size=FLAGS.buffer_size, seed=FLAGS.seed)
    print(report(figures), flush=True)
    if FLAGS.json:
        from momentor_jax import fileio  # noqa: PLC0415
        fileio.write_text(FLAGS.json, json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    _define_flags()
    cli.run(lambda argv: sys.exit(main(argv)))
