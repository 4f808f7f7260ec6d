"""``misentry`` itself: its help, and how errors become exit statuses."""

from __future__ import annotations

import argparse

import pytest

from misentry.cli import CliError, exit_status, main
from misentry.cli.common import fraction, integers, names, port
from misentry.models import RecordError

from .clikit import Cli


def test_help_explains_the_tool_and_its_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "top-1 labels" in out
    for verb in ("data", "models", "train", "record"):
        assert verb in out


def test_no_verb_prints_help(cli: Cli) -> None:
    code, out, _ = cli()
    assert code == 0
    assert "usage: misentry" in out


def test_unknown_dataset_is_an_error_not_a_traceback(cli: Cli) -> None:
    code, _, err = cli("data", "show", "nope")
    assert code == 1
    assert "known datasets" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "err",
    [
        CliError("x"),
        KeyError("x"),
        ValueError("x"),
        RecordError("x"),
        FileNotFoundError("x"),
        ImportError("x"),
    ],
)
def test_library_errors_exit_1_and_bugs_show_their_traceback(err: Exception) -> None:
    assert exit_status(err) == 1
    assert exit_status(ZeroDivisionError()) is None
    assert exit_status(RuntimeError("x")) is None


def test_shared_argument_types() -> None:
    assert names(" natural, misentry ,") == ("natural", "misentry")
    assert integers("1,5,20") == (1, 5, 20)
    assert fraction("8/255") == pytest.approx(8 / 255)
    assert fraction("0.5") == 0.5
    assert port("8080") == 8080
    for parse, text in ((names, " , "), (integers, "1,x"), (fraction, "1/0"), (port, "70000")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
