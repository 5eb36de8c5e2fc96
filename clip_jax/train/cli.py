"""`python -m clip_jax.train --config FILE[:arg] --workdir DIR [--config.field=value ...]`.

The flags are parsed into a FlagValues of their own rather than through absl's `app.run`, which calls
`sys.exit` itself: every expected error (a bad config file, field or value, a missing --workdir, a mesh
that does not fit) reaches `clip_jax.cli_errors.run_cli` and ends in one line and exit status 2, and
`main` can be called in-process by tests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence

from absl import flags

from clip_jax.cli_errors import UserError, run_cli
from clip_jax.train.config import RANDOM_SOURCE

PROG = "clip_jax.train"
USAGE = f"usage: python -m {PROG} --config FILE[:key=value,...] --workdir DIR [--config.FIELD=VALUE ...]"
# Loggers of the libraries whose INFO lines (TFDS's dataset reads, orbax's every save and restore)
# outnumbered clip_jax's own lines 140 to 21 in a 189-step run; they log through absl's Python logger.
THIRD_PARTY_LOGGERS = ("absl", "jax", "orbax", "tensorflow", "tensorflow_datasets", "etils")


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
    """The trainer's flags on `flag_values`. `argv` (with the program name) is where ml_collections
    looks for `--config=FILE` to define the `--config.FIELD` flags of that file's fields."""
    from ml_collections import config_flags

    def define(kind, name, default, help_text):
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=flag_values)

    config_flags.DEFINE_config_file(
        "config",
        None,
        "Config file (configs/*.py[:arg]); its fields are set with --config.FIELD=VALUE "
        "(--help_config lists them).",
        flag_values=flag_values,
        lock_config=True,
        sys_argv=list(argv),
    )
    define(
        "multi_string",
        "set",
        [],
        "FIELD=VALUE for any config field, after --config.*: Python literals (lists, dicts, None) "
        "or text; a dict replaces a section or adds an entry (evals.NAME={...}).",
    )
    define("multi_string", "drop", [], "Remove a config entry before --set: evals.NAME, or evals.* for all.")
    define("string", "workdir", None, "Directory for checkpoints, metrics and the resolved config.")
    define("string", "coordinator_address", None, "host:port of process 0, for multi-process runs.")
    define("integer", "num_processes", None, "Number of processes in a multi-process run.")
    define("integer", "process_id", None, "This process's index in a multi-process run.")
    define("bool", "distributed_auto", False, "Let JAX detect a TPU pod / SLURM / Open MPI cluster.")
    define(
        "bool",
        "verbose_libs",
        False,
        "Show the INFO logs of TFDS, orbax, JAX and TensorFlow (off: their warnings and errors only).",
    )
    define("bool", "help_config", False, "List every config field, its default and meaning, and exit.")


def parse_flags(argv: Sequence[str]) -> flags.FlagValues:
    """The parsed flags of `argv` (without the program name); UserError naming a bad flag or config file."""
    full = [PROG, *argv]
    flag_values = flags.FlagValues()
    define_flags(flag_values, full)
    try:
        flag_values(full)
    except flags.Error as e:
        raise UserError(
            f"{_flag_error_text(e)} ({USAGE.removeprefix('usage: ')}; --help lists the flags)"
        ) from e
    except SyntaxError as e:
        raise UserError(f"--config: {e.filename} line {e.lineno}: {e.msg}") from e
    except ImportError as e:
        raise UserError(f"--config: {_config_path(argv)}: {e}") from e
    except (AttributeError, KeyError, TypeError) as e:
        # ml_collections' errors for a --config.FIELD flag whose path is not in the config.
        raise UserError(
            f"a --config.FIELD flag names no field of the config ({_one_line(e)}); --help_config lists them"
        ) from e
    # A config file that failed to load is a stand-in object holding the error, raised on first use.
    load_error = vars(flag_values.config).get("_error") if flag_values.config is not None else None
    if load_error is not None:
        raise UserError(f"--config: {_last_line(load_error)}")
    return flag_values


def _flag_error_text(error: flags.Error) -> str:
    """One line for absl's error: a config file that raised while loading is reported by its own
    exception (the last line of the traceback absl embeds), not by the traceback."""
    text = str(error)
    if "Traceback (most recent call last)" in text:
        head = text.split(":", 1)[0]  # "flag --config=FILE"
        return f"{head}: {_last_line(text)}"
    return text.replace("Did you mean: config ?", "(is the field name right? --help_config lists them)")


def _config_path(argv: Sequence[str]) -> str:
    """The file of --config FILE[:arg] / --config=FILE[:arg] in argv."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1].split(":", 1)[0]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1].split(":", 1)[0]
    return "the config file"


def _one_line(error: BaseException) -> str:
    """ml_collections' KeyError text, which is the repr of a message: its escapes undone."""
    text = str(error).replace("\\n", " ").replace("\\'", "'")
    return " ".join(text.strip("'\"").split())


def _last_line(error: object) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def help_text() -> str:
    """The usage line and every flag with its default (what `--help` prints)."""
    flag_values = flags.FlagValues()
    define_flags(flag_values, [PROG])
    lines = [USAGE, ""]
    for flag in sorted(flag_values.get_key_flags_for_module(sys.modules[__name__]), key=lambda f: f.name):
        default = "" if flag.default in (None, []) else f" (default: {flag.default!r})"
        lines.append(f"  --{flag.name}: {flag.help}{default}")
    lines += ["", "  --debug: show the traceback of an error (or set CLIP_JAX_DEBUG=1)."]
    return "\n".join(lines)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null meanwhile: C++ libraries write there directly, past Python's
    sys.stderr. Python's own errors raise as usual and are reported after it is restored."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quiet_third_party_logs(verbose: bool) -> None:
    """clip_jax's own logger at INFO; the libraries' INFO chatter off unless `verbose`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("clip_jax").setLevel(logging.INFO)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)


def main(argv: Sequence[str]) -> None:
    """Parse the command line, build the config and train; expected errors raise (see run())."""
    if any(a in ("-h", "--help", "--helpfull", "-?") for a in argv):
        print(help_text())
        return
    if any(a in ("--help_config", "--helpconfig", "--config_help") for a in argv):
        from clip_jax.train.config import describe_fields

        print(describe_fields())
        return
    verbose_libs = "--verbose_libs" in argv or "--verbose_libs=true" in argv
    with contextlib.nullcontext() if verbose_libs else native_stderr_silenced():
        # A config file that imports clip_jax.data imports TensorFlow here, whose C++ start-up banners
        # (oneDNN, CPU instructions, no CUDA driver) are written before its log level can be set.
        flag_values = parse_flags(argv)
        config = flag_values.config
        if config is not None and (config.data.get("source") != RANDOM_SOURCE or config.evals):
            import clip_jax.data  # noqa: F401 (TensorFlow's import, now rather than mid-run)
    if config is None:
        raise UserError(f"--config is required, e.g. --config configs/synthetic_tiny.py ({USAGE})")
    if not flag_values.workdir:
        raise UserError(
            f"--workdir is required: the directory for this run's checkpoints and metrics ({USAGE})"
        )
    quiet_third_party_logs(flag_values.verbose_libs)
    from clip_jax.train import loop
    from clip_jax.train.overrides import apply_overrides, cli_overrides

    loop.initialize_distributed(
        flag_values.coordinator_address,
        flag_values.num_processes,
        flag_values.process_id,
        auto=flag_values.distributed_auto,
    )
    config = apply_overrides(config, cli_overrides(config, flag_values.set, flag_values.drop))
    # Looked up on the module at call time, so that tests (and their hooks) may replace loop.train.
    loop.train(config, flag_values.workdir)


def run(argv: Sequence[str] | None = None) -> int:
    """`python -m clip_jax.train`: main() under clip_jax's one-line error convention; the exit status."""
    return run_cli(main, PROG, argv)
