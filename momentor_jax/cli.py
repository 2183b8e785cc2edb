"""Command-line conventions shared by the entry points (train, predict, evaluate, convert, tools.aot).

    run(main)                  absl's app.run, except that a bad flag, a --config file that is not there or a
                               UsageError raised by `main` prints one line "error: ..." and a pointer to --help on
                               stderr and exits with EXIT_USAGE (2), as argparse commands do; a Cloud Storage
                               failure (gcs.StorageError: missing bucket or object, credentials, permission, the
                               server unreachable after retries) prints its one line and exits with EXIT_STORAGE (4)
    parse_flags(argv, define)  the same for commands whose main(argv) is called in-process (demo, sweep, bench): a
                               fresh absl FlagValues that `define` fills, argv parsed into it, --help printing the
                               command's docstring and flags
    define_config(flag_values) `--config=configs/X.py[:variant]` plus `--config.KEY=VALUE` (ml_collections
                               config_flags), the one way every command with a config takes it
    define_answer_flags(...)   --checkpoint, --max_new_tokens and --system_prompt of the commands that answer
                               questions about videos (predict, evaluate, serve), with sampling --temperature,
                               --top_p and --seed
    override_args(holder)      the `--config.KEY=VALUE` a command was given, written back as arguments for the
                               commands it runs (demo's training stages, sweep's runs)
    resolve_config_arg(argv)   `--config=configs/X.py[:variant]` taken relative to the working directory, else to the
                               repository, so commands work from any directory
    quiet_libraries()          drops log lines of other libraries below WARNING (orbax logs ~10 INFO lines on every
                               checkpoint read, jax and grain a few per run) and their warnings that say nothing a
                               user can act on; our own INFO lines and every real warning still pass
    skip_absent_tpu()          libtpu is installed for AOT compilation; on a host without TPU chips (and without a
                               jax GPU plugin) jax's TPU probe prints ~5 lines of libtpu errors, so with
                               JAX_PLATFORMS unset such a host is told to use the CPU
    cpu_decode_flags()         for commands that decode (predict, evaluate, the decode bench): on the CPU, XLA's
                               small-while-loop hoisting off (the batch-1 decode loop 1.86x faster), unless XLA_FLAGS
                               already sets backend options
    retain_freed_memory()      for the bench suites that time train steps on the CPU: re-executes the command with
                               glibc's allocator keeping freed memory for reuse (MALLOC_* variables, read only at
                               process start), unless the environment already sets them
    progress(message)          one timestamped line on stderr (stdout stays for results, e.g. predict --json)
    phase(what)                progress lines when a long phase starts and when it ends, with its seconds
"""
from __future__ import annotations

import contextlib
import glob
import importlib.util
import logging
import os
import sys
import time
import warnings
from typing import Any, Callable, Optional, Sequence

EXIT_USAGE = 2
EXIT_STORAGE = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
CONFIG_HELP = ("configs/FILE.py[:variant], relative to the working directory or the repository; --config.KEY=VALUE "
               "overrides a key")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OURS = tuple(os.path.join(REPO_ROOT, folder) + os.sep for folder in ("momentor_jax", "data", "launch"))
# Library warnings that fire on every normal run and name nothing the user can change.
_NOISE = (
    "_CHECKPOINT_METADATA",                       # orbax: metadata file notes on every restore
    "Couldn't find sharding info under RestoreArgs",  # orbax: restoring to host numpy arrays, as we ask
    "Sharding info not provided when restoring",
    "Type handler registry type",                 # orbax: registers its jax.Array handler once per process
)


def usage_error(message: str):
    """The exception `run` turns into "error: message" and exit status 2."""
    from absl import app  # noqa: PLC0415
    return app.UsageError(message, EXIT_USAGE)


def _program() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return f"python {os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0] else 'COMMAND'}"


def fail_usage(message: str) -> None:
    print(f"error: {message}\n(see {_program()} --help)", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def fail_storage(error: BaseException) -> None:
    """Exits with EXIT_STORAGE and the error's one line when `error` is (or was caused by) a Cloud Storage failure;
    returns otherwise. Local file errors keep their own handling."""
    gcs = sys.modules.get("momentor_jax.gcs")  # never imported by a run that touched no gs:// path
    seen = error
    while gcs is not None and seen is not None:
        if isinstance(seen, gcs.StorageError):
            print(f"error: {seen}", file=sys.stderr, flush=True)
            sys.exit(EXIT_STORAGE)
        seen = seen.__cause__ or seen.__context__


def resolve_config_arg(argv: Sequence[str], flag: str = "config") -> list[str]:
    """argv with `--config=PATH[:variant]` (or `--config PATH`) pointing at an existing file: PATH as given when it
    exists, else PATH under the repository; exits 2 naming both places when neither has it."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        for prefix in (f"--{flag}=", f"-{flag}="):
            if arg.startswith(prefix):
                argv[i] = prefix + _resolve(arg[len(prefix):], flag)
        if arg in (f"--{flag}", f"-{flag}") and i + 1 < len(argv):
            argv[i + 1] = _resolve(argv[i + 1], flag)
    return argv


def _resolve(spec: str, flag: str) -> str:
    path, colon, variant = spec.partition(":")
    if not path or os.path.isfile(path):
        return spec
    in_repo = os.path.join(REPO_ROOT, path)
    if not os.path.isabs(path) and os.path.isfile(in_repo):
        return in_repo + colon + variant
    where = path if os.path.isabs(path) else f"{os.path.abspath(path)} nor {in_repo}"
    fail_usage(f"--{flag}={spec}: no such config file ({where})")
    return spec


def define_config(flag_values=None, argv: Optional[Sequence[str]] = None, default: Optional[str] = None,
                  lock_config: bool = True):
    """The `--config` flag (ml_collections config_flags) on `flag_values` (absl's global FLAGS when None); `argv`
    is where the `--config.KEY=VALUE` overrides are read (sys.argv when None)."""
    from absl import flags  # noqa: PLC0415
    from ml_collections import config_flags  # noqa: PLC0415
    return config_flags.DEFINE_config_file("config", default, CONFIG_HELP,
                                           flag_values=flags.FLAGS if flag_values is None else flag_values,
                                           lock_config=lock_config, sys_argv=None if argv is None else list(argv))


def define_answer_flags(sampling: bool) -> None:
    """Defines, in absl's global FLAGS, the flags every command that answers questions about videos takes;
    `sampling` adds those of sampled decoding. The command lists them in its --help by
    `flags.adopt_module_key_flags(cli)`."""
    from absl import flags  # noqa: PLC0415

    flags.DEFINE_string("checkpoint", None, "training workdir, step directory or converted checkpoint")
    flags.DEFINE_integer("max_new_tokens", 128, "longest answer in tokens (>= 1)")
    flags.DEFINE_string("system_prompt", None, "override the checkpoint's system prompt")
    if sampling:
        flags.DEFINE_float("temperature", 0.0, "sampling temperature >= 0 (0: greedy decoding)")
        flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass in (0, 1] (used with temperature > 0)")
        flags.DEFINE_integer("seed", 0, "sampling seed")


def format_override(value: Any) -> str:
    """How a value is written after `--config.KEY=` (config_flags parses it by the field's type)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def override_args(config_flag) -> list[str]:
    """`--config.KEY=VALUE` for each override the config flag (`flag_values["config"]`) was given, in order."""
    from ml_collections import config_flags  # noqa: PLC0415
    return [f"--config.{key}={format_override(value)}"
            for key, value in config_flags.get_override_values(config_flag).items()]


def flag_error(error: Exception) -> str:
    """One line for a flag error; a config file that raised while loading is named with its exception's last line
    (config_flags puts the whole traceback in the message)."""
    message = str(error).strip()
    if "Error whilst parsing config file" in message:
        return f"{message.split(': Error whilst', 1)[0]}: {message.splitlines()[-1]}"
    return message


def parse_flags(argv: Sequence[str], define: Callable, doc: str = ""):
    """A fresh absl FlagValues: `define(flag_values, argv)` defines the command's flags, then `argv` (argv[0] is the
    program) is parsed into it. Returns (flag_values, the positional arguments). --help prints `doc` and the flags
    and exits 0; a bad flag or config prints one line and exits 2."""
    from absl import flags  # noqa: PLC0415

    argv = resolve_config_arg(argv)
    flag_values = flags.FlagValues()
    wants_help = any(arg in ("-h", "--help", "--helpshort", "--helpfull") for arg in argv[1:])
    try:  # a config with a default is loaded, and its overrides checked, when the flag is defined
        define(flag_values, [arg for arg in argv if not wants_help or not arg.startswith("--config.")])
        if wants_help:
            print(f"{doc.strip()}\n\nflags:\n{flag_values.get_help(include_special_flags=False)}")
            sys.exit(0)
        positional = flag_values(argv)[1:]
    except flags.Error as e:
        fail_usage(flag_error(e))
    except (KeyError, AttributeError) as e:  # config_flags: an override of a key the config does not have
        fail_usage(f"the config has no key {str(e).strip(chr(34))} (--config.KEY=VALUE overrides existing keys)")
    except (TypeError, ValueError) as e:  # config_flags: a config file that fails to load
        fail_usage(f"--config: {str(e).strip().splitlines()[-1]}")
    return flag_values, positional


class _QuietLibraries(logging.Filter):
    """Passes our own records and other libraries' warnings; drops the rest and the known noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        if any(noise in str(record.msg) for noise in _NOISE):
            return False
        return record.levelno >= logging.WARNING or record.pathname.startswith(_OURS)


_FILTER = _QuietLibraries()


def quiet_libraries() -> None:
    """Installs the filter on the root logger's handlers (absl's among them) and silences noisy warnings."""
    try:
        from absl import logging as absl_logging  # noqa: PLC0415
        handlers = [absl_logging.get_absl_handler()]
    except ImportError:
        handlers = []
    for handler in [*logging.getLogger().handlers, *handlers]:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    for noise in _NOISE:
        warnings.filterwarnings("ignore", message=f".*{noise}.*")


def skip_absent_tpu() -> None:
    """Sets JAX_PLATFORMS=cpu when it is unset, libtpu is installed, and the host has neither TPU device files
    (/dev/accel*, /dev/vfio/<n>) nor a jax GPU plugin; call it before jax is imported."""
    if os.environ.get("JAX_PLATFORMS") is not None or importlib.util.find_spec("libtpu") is None:
        return
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return
    if any(importlib.util.find_spec(name) for name in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm_plugin")):
        return
    os.environ["JAX_PLATFORMS"] = "cpu"


CPU_DECODE_OPTION = "xla_cpu_small_while_loop_byte_threshold=0"


def cpu_decode_flags() -> bool:
    """Adds `--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=0` to XLA_FLAGS when JAX will run
    on the CPU and XLA_FLAGS sets no backend options of its own; returns whether it did. Call before JAX starts
    its backend (XLA reads the flags then).

    At batch 1 the decode `while_loop` is small enough for XLA:CPU to compile it as one "small call" whose matmuls
    skip the threaded runtime; with the threshold at 0 a decode step ran 1.86x faster (README, Performance)."""
    current = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_extra_options" in current:
        return False
    skip_absent_tpu()
    platforms = os.environ.get("JAX_PLATFORMS")
    if platforms is None:
        accelerator = any(importlib.util.find_spec(name) for name in (
            "libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm_plugin"))
        if accelerator:
            return False
    elif platforms.split(",")[0].strip() != "cpu":
        return False
    os.environ["XLA_FLAGS"] = f"{current} --xla_backend_extra_options={CPU_DECODE_OPTION}".strip()
    return True


# XLA:CPU allocates each step's temporaries as one block (2.76 GB for configs/bench.py's step), and PyTorch's
# eager step many large tensors. By default glibc maps every block over 32 MiB fresh and unmaps it when freed, so
# each step the kernel zero-fills the same memory again: 700-900K page faults and 1-1.5 s of system time per
# step of either side on the bench config. One arena, no mmap and no trimming keep freed memory in the heap for the
# next step (README, Performance). Only for benchmark processes: one arena would serialize the allocations of many
# host threads.
RETAINED_MEMORY_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def retained_memory_settings() -> dict:
    """The RETAINED_MEMORY_ENV variables this process was started with (for the printed line and the JSON)."""
    return {name: os.environ[name] for name in RETAINED_MEMORY_ENV if name in os.environ}


def retain_freed_memory() -> None:
    """Re-executes this command (same interpreter, options and arguments) with RETAINED_MEMORY_ENV, unless one of
    those variables is already set (the first run's own re-execution included, or a user's choice) or the system is
    not Linux. Call first thing under `if __name__ == "__main__"`: the process is replaced."""
    if sys.platform != "linux" or retained_memory_settings():
        return
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **RETAINED_MEMORY_ENV})


def progress(message: str) -> None:
    name = _program().rsplit(".", 1)[-1].rsplit("/", 1)[-1].removesuffix(".py")
    print(f"[{name} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def phase(what: str):
    """`with phase("loading the model"):` prints "loading the model ..." then "loading the model: 3.2 s"."""
    start = time.perf_counter()
    progress(f"{what} ...")
    yield
    progress(f"{what}: {time.perf_counter() - start:.1f} s")


def run(main: Callable, flags_argv: Optional[Sequence[str]] = None) -> None:
    """absl app.run(main) with the conventions above (usage errors exit 2 in one line; libraries quiet)."""
    from absl import app, flags  # noqa: PLC0415

    skip_absent_tpu()

    def parse(argv):
        argv = resolve_config_arg(argv)
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            fail_usage(flag_error(e))

    def wrapped(argv):
        quiet_libraries()
        try:
            return main(argv)
        except app.UsageError as e:
            fail_usage(str(e))
        except Exception as e:  # noqa: BLE001 (only storage failures are handled; the rest is re-raised)
            fail_storage(e)
            raise

    app.run(wrapped, argv=flags_argv, flags_parser=parse)
