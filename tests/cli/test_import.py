"""``misentry import`` end to end through :func:`misentry.cli.main`: every form of the user's
model gives the same record accuracy, the help names every option, and a model or an option
that cannot be imported is refused in one line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from misentry.cli import build_parser
from misentry.data import Pools
from misentry.models import load_model, predict
from user_model.saved import CONTRACT_ARGS, SavedModel
from user_model.usernet import make_net

from .clikit import Cli

FORMS = ("module", "torchscript", "exported")


def form_args(saved: SavedModel, form: str) -> list[str]:
    """The options that give ``misentry import`` the user model in ``form``."""
    if form == "module":
        return ["--module", saved.factory, "--weights", str(saved.safetensors)]
    return [f"--{form}", str(getattr(saved, form))]


def import_argv(model: list[str], out: Path, *extra: str) -> list[str]:
    return ["import", *model, *CONTRACT_ARGS, "--dataset", "digits", "--out", str(out), *extra]


def test_every_form_gives_the_same_test_accuracy(
    cli: Cli, user_model: SavedModel, digits_pools: Pools, tmp_path: Path
) -> None:
    expected = float((user_model.test_labels == digits_pools["test"].y).float().mean())
    for form in FORMS:
        out = tmp_path / form
        code, printed, err = cli(*import_argv(form_args(user_model, form), out))
        assert code == 0, err
        model, record = load_model(out)
        assert record.architecture == f"imported:{form}"
        assert record.metrics["test_accuracy"] == pytest.approx(expected)
        assert f"{expected:.2%}" in printed
        assert torch.equal(predict(model, digits_pools["test"].x), user_model.test_labels)


def test_another_model_into_a_record_folder_needs_force(
    cli: Cli, user_model: SavedModel, tmp_path: Path
) -> None:
    out = tmp_path / "t"
    assert cli(*import_argv(form_args(user_model, "torchscript"), out))[0] == 0
    assert cli(*import_argv(form_args(user_model, "torchscript"), out))[0] == 0  # the same record
    code, printed, err = cli(*import_argv(form_args(user_model, "exported"), out))
    assert code == 1
    assert err.startswith("error:")
    assert "Traceback" not in printed + err
    assert load_model(out)[1].architecture == "imported:torchscript"
    assert cli(*import_argv(form_args(user_model, "exported"), out, "--force"))[0] == 0
    assert load_model(out)[1].architecture == "imported:exported"


def import_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = verbs.choices["import"]
    return found


def test_help_names_every_option(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli("import", "--help")
    assert exited.value.code == 0
    text = capsys.readouterr().out
    options = [o for a in import_parser()._actions for o in a.option_strings if o.startswith("--")]
    assert len(options) >= 15
    missing = [o for o in options if o not in text]
    assert missing == []


def refused(cli: Cli, *argv: str) -> str:
    """Run a refused import; its one-line error, with no traceback."""
    code, out, err = cli(*argv)
    assert code == 1
    assert err.startswith("error:")
    assert "Traceback" not in out + err
    return " ".join(err.split())


def test_onnx_is_refused_with_the_reason(cli: Cli, tmp_path: Path) -> None:
    onnx = tmp_path / "net.onnx"
    onnx.write_bytes(b"not read")
    err = refused(cli, *import_argv(["--onnx", str(onnx)], tmp_path / "t"))
    assert "torchvision" in err  # why: the ONNX-to-torch converters need it
    assert "misentry verify" in err  # what to do instead
    assert "--onnx FILE" in err
    assert not (tmp_path / "t").exists()


def test_a_model_with_another_class_count_is_refused(cli: Cli, tmp_path: Path) -> None:
    five = tmp_path / "five.ts"
    torch.jit.save(torch.jit.script(make_net(classes=5).eval()), str(five))
    err = refused(cli, *import_argv(["--torchscript", str(five)], tmp_path / "t"))
    assert "5 outputs" in err
    assert "10 classes" in err
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("arg", ["1x=3", "width", "=8"])
def test_a_bad_arg_is_refused(cli: Cli, user_model: SavedModel, tmp_path: Path, arg: str) -> None:
    model = [*form_args(user_model, "module"), "--arg", arg]
    err = refused(cli, *import_argv(model, tmp_path / "t"))
    assert f"--arg {arg!r}" in err
    assert "KEY=VALUE" in err
