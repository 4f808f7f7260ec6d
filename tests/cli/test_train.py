"""``misentry train``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from misentry.data import get_dataset
from misentry.models import evaluate, load_model, load_record

from .clikit import Cli


def test_train_writes_a_record_and_reuses_it(cli: Cli, tmp_path: Path) -> None:
    out_dir = tmp_path / "target"
    args = ("train", "--dataset", "digits", "--epochs", "20", "--out", str(out_dir))
    code, out, _ = cli(*args)
    assert code == 0
    record = load_record(out_dir)
    assert record.kind == "target"
    assert record.params["train"]["epochs"] == 20
    assert f"{record.metrics['test_accuracy']:.2%}" in out
    assert record.metrics["test_accuracy"] > 0.8
    stamp = (out_dir / "weights.safetensors").stat().st_mtime_ns

    code, out, _ = cli(*args)
    assert code == 0
    assert "reused" in out
    assert (out_dir / "weights.safetensors").stat().st_mtime_ns == stamp

    code, out, _ = cli(*args, "--json")
    assert code == 0
    assert json.loads(out)["id"] == record.record_id

    code, _, err = cli("train", "--dataset", "digits", "--epochs", "5", "--out", str(out_dir))
    assert code == 1
    assert "--force" in err


def test_train_refuses_a_folder_that_is_not_a_record(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = cli("train", "--dataset", "digits", "--out", str(tmp_path))
    assert code == 1
    assert "not an intact record" in err
    assert "--force" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_demo_target_reaches_96_percent_on_mnist5k(cli: Cli, tmp_path: Path) -> None:
    """What `make demo` runs: LeNet-5 on mnist5k, model seed 0, to >= 96 % test accuracy."""
    out_dir = tmp_path / "demo"
    code, out, _ = cli(
        "train",
        "--dataset",
        "mnist5k",
        "--arch",
        "lenet5",
        "--seed",
        "0",
        "--out",
        str(out_dir),
    )
    assert code == 0
    model, record = load_model(out_dir)
    assert record.metrics["test_accuracy"] >= 0.96
    assert "test accuracy" in out
    # the reloaded model reproduces the recorded accuracy on the test pool
    test = get_dataset("mnist5k").pools(record.data_seed)["test"]
    assert evaluate(model, test).accuracy == pytest.approx(record.metrics["test_accuracy"])
