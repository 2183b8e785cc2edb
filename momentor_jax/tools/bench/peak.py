"""`peak`: the machine's measured matmul FLOP/s in the train step's dtype and its memory bandwidth.

A large square `jnp.dot` (warmed up, median of repeats) gives the FLOP/s that MFU is measured against; a large
array copy (read + write) gives the bandwidth. Both run on the default JAX backend with all its devices' threads.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from momentor_jax.tools.bench import common


def matmul_flops(size: int, dtype: str, repeats: int) -> dict:
    key = jax.random.PRNGKey(0)
    a = jax.random.normal(key, (size, size), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.fold_in(key, 1), (size, size), jnp.float32).astype(dtype)
    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=x.dtype))
    timing = common.time_repeats(lambda: dot(a, b).block_until_ready(), repeats=repeats, warmup=2)
    flops = 2.0 * size ** 3
    return {"size": size, "dtype": dtype, "flops_per_s": flops / timing["median_s"],
            "best_flops_per_s": flops / timing["min_s"], **timing}


def memory_bandwidth(megabytes: int, repeats: int) -> dict:
    n = megabytes * 1024 * 1024 // 4
    x = jnp.asarray(np.random.default_rng(0).standard_normal(n, dtype=np.float32))
    scale = jax.jit(lambda v: v * 1.0001)  # reads and writes every byte once
    timing = common.time_repeats(lambda: scale(x).block_until_ready(), repeats=repeats, warmup=2)
    moved = 2.0 * n * 4
    return {"megabytes": megabytes, "bytes_per_s": moved / timing["median_s"], **timing}


def measure(dtype: str = "float32", size: int = 2048, repeats: int = 7, megabytes: int = 256) -> dict:
    """{'matmul': ..., 'memory': ..., 'peak_flops_per_s': median matmul FLOP/s} (the MFU denominator)."""
    matmul = matmul_flops(size, dtype, repeats)
    memory = memory_bandwidth(megabytes, repeats)
    return {"matmul": matmul, "memory": memory, "peak_flops_per_s": matmul["flops_per_s"]}


def define_flags(flag_values, argv) -> None:
    flags.DEFINE_string("dtype", "float32", "matmul dtype (the bench config's step dtype)", flag_values=flag_values)
    flags.DEFINE_integer("size", 2048, "square matmul side", flag_values=flag_values)
    flags.DEFINE_integer("repeats", 7, "timed repeats after warm-up", flag_values=flag_values)


def run(args) -> dict:
    result = measure(args.dtype, args.size, args.repeats)
    m, mem = result["matmul"], result["memory"]
    common.print_table("peak (median of repeats after warm-up)", [
        {"what": f"matmul {m['size']}^3 {m['dtype']}", "figure": f"{m['flops_per_s'] / 1e9:.1f} GFLOP/s",
         "best": f"{m['best_flops_per_s'] / 1e9:.1f} GFLOP/s", "median ms": m["median_s"] * 1e3},
        {"what": f"copy {mem['megabytes']} MiB f32", "figure": f"{mem['bytes_per_s'] / 1e9:.1f} GB/s",
         "best": f"{2 * mem['megabytes'] * 2 ** 20 / mem['min_s'] / 1e9:.1f} GB/s", "median ms": mem["median_s"] * 1e3},
    ], ["what", "figure", "best", "median ms"])
    return result
