"""The one-line error convention every command-line tool shares (clip_jax/cli_errors.py)."""

import pytest

from clip_jax.cli_errors import UserError, run_cli


def _raise(error):
    def main(argv):
        raise error

    return main


@pytest.mark.parametrize(
    "error, expected",
    [
        (
            UserError("config.batch_size=30 does not divide\n 4 devices"),
            "config.batch_size=30 does not divide 4 devices",
        ),
        (FileNotFoundError(2, "No such file or directory", "x.pt"), "x.pt: No such file or directory"),
        (ValueError("bad value"), "bad value"),
    ],
)
def test_expected_errors_are_one_line_and_exit_2(capsys, error, expected):
    assert run_cli(_raise(error), "clip_jax.tool", []) == 2
    err = capsys.readouterr().err
    assert err == f"clip_jax.tool: error: {expected}\n"


def test_debug_shows_the_traceback_and_is_not_passed_on(monkeypatch):
    seen = []

    def main(argv):
        seen.append(argv)
        raise UserError("boom")

    with pytest.raises(UserError):
        run_cli(main, "tool", ["--x", "--debug"])
    assert seen == [["--x"]]
    monkeypatch.setenv("CLIP_JAX_DEBUG", "1")
    with pytest.raises(UserError):
        run_cli(main, "tool", [])


def test_bugs_keep_their_traceback():
    with pytest.raises(KeyError):
        run_cli(_raise(KeyError("k")), "tool", [])


def test_success_is_0():
    assert run_cli(lambda argv: None, "tool", []) == 0
