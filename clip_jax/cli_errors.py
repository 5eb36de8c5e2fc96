"""One-line errors for every command-line tool (train, convert, predict, the eval CLIs, sweep).

An expected error (a missing or damaged file, a bad config value, a device/mesh/batch mismatch, an
unwritable output) ends the tool with one line on stderr, `<tool>: error: <what>`, naming the file,
field or value and what to do, and exit status 2 (argparse's status for bad usage). A traceback is
for bugs: `--debug` (anywhere on the command line) or `CLIP_JAX_DEBUG=1` shows it for expected errors
too.

Code raises `UserError` (or the built-in OSError / ValueError family with a message that already names
the thing) and never prints-and-exits itself, so the same functions raise normally when called from
Python and tests can assert on the exception.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

DEBUG_ENV = "CLIP_JAX_DEBUG"
EXIT_USAGE = 2


class UserError(Exception):
    """An error the user can fix from the command line; its message is the whole report."""


# What counts as expected: the user's input or environment, not a bug in clip_jax. OSError covers a
# missing/unreadable/unwritable file or a full disk; ValueError bad values and mismatched checkpoints.
# FloatingPointError is the trainer's non-finite stop, whose message names the step and the checkpoint.
EXPECTED = (UserError, OSError, ValueError, FloatingPointError)


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """True when `--debug` is on the command line or CLIP_JAX_DEBUG is set to a true value."""
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")


def strip_debug(argv: Sequence[str]) -> list[str]:
    return [a for a in argv if a != "--debug"]


def one_line(error: BaseException) -> str:
    """The message of `error` as one line, newlines folded: an OSError raised by the system as
    "<file>: <reason>", and the cause's text when the error itself says nothing."""
    text = str(error).strip()
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    if not text and error.__cause__ is not None:
        text = str(error.__cause__).strip()
    return " ".join(text.split()) or type(error).__name__


def run_cli(main: Callable[[list[str]], Any], prog: str, argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)` (argv without the program name and `--debug`) as the tool `prog`.

    Returns 0 on success, 2 after printing an expected error as one line; anything else propagates
    with its traceback (a bug), as does an expected error under --debug / CLIP_JAX_DEBUG.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    try:
        main(strip_debug(argv))
    except EXPECTED as e:
        if debug:
            raise
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0
