"""Benchmark suites: figures, not tests. Each prints a table and writes DIR/SUITE.json (figures, hardware, command).

    python -m momentor_jax.tools.bench SUITE [--config=configs/bench.py] [--config.KEY=VALUE ...] [--out DIR]
                                             [suite options]

Suites: peak (matmul FLOP/s, memory bandwidth), train (tokens/s, step time, MFU vs peak), torch (the same
forward+backward the way the public PyTorch code runs it; JAX/PyTorch ratio), decode (KV-cache generation vs
transformers generate), loader (Grain examples/s vs what the train step consumes; extraction vs decode-only),
gpu (train and decode on an NVIDIA GPU; skipped elsewhere). Shared machines are noisy: compare the ratios, which
are measured in the same run. The suites that take a config (all but peak) take it as every command does
(momentor_jax/cli.py): `--config=configs/X.py[:variant]` and `--config.KEY=VALUE` (or `--config.KEY VALUE`), and
record both in the JSON. `train` and `torch`, run as this module, first re-execute themselves with glibc keeping
freed memory for the next step (cli.retain_freed_memory; the hardware line and the JSON's `hardware.malloc` show
it). Exit status: 0; 2 on a bad suite or flag.
"""
from __future__ import annotations

import importlib
import os
import sys

from momentor_jax import cli  # imports no jax: the suite sets its environment first

# Suite name -> module (the `torch` suite's module is not called torch: it imports the real one).
SUITES = {"peak": "peak", "train": "train", "torch": "pytorch_ref", "decode": "decode", "loader": "loader",
          "gpu": "gpu"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUITES:
        print(__doc__, file=sys.stderr)
        print(f"choose a suite: {', '.join(SUITES)}", file=sys.stderr)
        return 2
    suite = argv[0]
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # read when jax first imports (the suite modules import it)
    if suite == "decode":
        cli.cpu_decode_flags()
    module = importlib.import_module(f"momentor_jax.tools.bench.{SUITES[suite]}")

    def define_flags(flag_values, suite_argv):
        from absl import flags  # noqa: PLC0415
        flags.DEFINE_string("out", "bench_results", "directory for SUITE.json", flag_values=flag_values)
        module.define_flags(flag_values, suite_argv)

    args, positional = cli.parse_flags([f"bench {suite}", *argv[1:]], define_flags, module.__doc__)
    if positional:
        cli.fail_usage(f"unexpected arguments {positional}")

    from momentor_jax.tools.bench import common  # noqa: PLC0415  (imports jax: after the suite set its env)
    print(f"{suite}: {common.hardware_line()}")
    print(f"command: {common.command_line()}", flush=True)
    result = module.run(args)
    path = common.write_result(args.out, suite, result)
    print(f"\nwrote {path}")
    return 0


# Suites that time train steps on the CPU, run with glibc keeping freed memory (cli.retain_freed_memory).
RETAINED_MEMORY_SUITES = ("train", "torch")

if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in RETAINED_MEMORY_SUITES:
        cli.retain_freed_memory()
    sys.exit(main())
