"""Benchmark suites: figures, not tests. Each prints a table and writes DIR/SUITE.json (figures, hardware, command).

    python -m momentor_jax.tools.bench SUITE [--config=configs/bench.py] [--config.KEY=VALUE ...] [--out DIR]
                                             [suite options]

Suites: peak (matmul FLOP/s, memory bandwidth), train (tokens/s, step time, MFU vs peak), torch (the same
forward+backward the way the public PyTorch code runs it; JAX/PyTorch ratio), decode (KV-cache generation vs
transformers generate), loader (Grain examples/s vs what the train step consumes; extraction vs decode-only),
gpu (train and decode on an NVIDIA GPU; skipped elsewhere). Shared machines are noisy: compare the ratios, which
are measured in the same run. `--config.KEY=VALUE` (or `--config.KEY VALUE`) overrides a key of the config, as
for `momentor_jax.train`; the suites that take a config (all but peak) apply them and record them in the JSON.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

SUITES = ("peak", "train", "torch", "decode", "loader", "gpu")


def split_config_overrides(argv: list) -> tuple[list, list]:
    """(argv without the `--config.KEY=VALUE` / `--config.KEY VALUE` options, those options as KEY=VALUE)."""
    rest, overrides = [], []
    args = iter(argv)
    for arg in args:
        if not arg.startswith("--config."):
            rest.append(arg)
            continue
        key, sep, value = arg.removeprefix("--config.").partition("=")
        if not sep:
            value = next(args, None)
            if value is None:
                raise SystemExit(f"{arg}: missing value (--config.KEY=VALUE)")
        overrides.append(f"{key}={value}")
    return rest, overrides


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUITES:
        print(__doc__, file=sys.stderr)
        print(f"choose a suite: {', '.join(SUITES)}", file=sys.stderr)
        return 2
    suite = argv[0]
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # read when jax first imports (the suite modules import it)
    if suite == "decode":
        from momentor_jax import cli  # noqa: PLC0415 (imports no jax)
        cli.cpu_decode_flags()
    module = importlib.import_module(f"momentor_jax.tools.bench.{suite}")
    parser = argparse.ArgumentParser(prog=f"python -m momentor_jax.tools.bench {suite}",
                                     description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_results", help="directory for SUITE.json")
    module.add_arguments(parser)
    rest, overrides = split_config_overrides(argv[1:])
    args = parser.parse_args(rest)
    if not hasattr(args, "config"):
        if overrides:
            parser.error(f"the {suite} suite takes no config, so no --config.KEY=VALUE")
    else:
        args.overrides = overrides

    from momentor_jax.tools.bench import common  # noqa: PLC0415  (imports jax: after the suite set its env)
    print(f"{suite}: {common.hardware_line()}")
    print(f"command: {common.command_line()}", flush=True)
    result = module.run(args)
    path = common.write_result(args.out, suite, result)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
