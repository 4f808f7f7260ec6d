"""The command line, run in-process as a user would type it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from misentry.cli import main
from misentry.data import DATASETS
from misentry.models import ARCHITECTURES, load_model, load_record


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_explains_the_tool_and_its_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "top-1 labels" in out
    for verb in ("data", "models", "train", "record"):
        assert verb in out


def test_no_verb_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 0
    assert "usage: misentry" in out


def test_data_list_shows_every_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "data", "list")
    assert code == 0
    for name in DATASETS:
        assert name in out


def test_data_show_prints_the_pool_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "data", "show", "mnist5k")
    assert code == 0
    for pool, size in (("owner_train", "2500"), ("attacker", "1000"), ("source", "250")):
        line = next(row for row in out.splitlines() if pool in row)
        assert size in line


def test_data_show_of_a_folder_dataset_explains_the_layout(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "data", "show", "cifar10")
    assert code == 0
    assert "data_batch_1.bin" in out
    code, _, err = run(capsys, "data", "show", "cifar10", "--root", str(tmp_path))
    assert code == 1
    assert "data_batch_1.bin" in err


def test_unknown_dataset_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "data", "show", "nope")
    assert code == 1
    assert "known datasets" in err
    assert "Traceback" not in err


def test_models_list_shows_every_architecture(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "list")
    assert code == 0
    for name in ARCHITECTURES:
        assert name in out
    assert "44,426" in out  # LeNet-5 on 28x28


def test_train_writes_a_record_and_reuses_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "target"
    args = ("train", "--dataset", "digits", "--epochs", "20", "--out", str(out_dir))
    code, out, _ = run(capsys, *args)
    assert code == 0
    record = load_record(out_dir)
    assert record.kind == "target"
    assert record.params["train"]["epochs"] == 20
    assert f"{record.metrics['test_accuracy']:.2%}" in out
    assert record.metrics["test_accuracy"] > 0.8
    stamp = (out_dir / "weights.safetensors").stat().st_mtime_ns

    code, out, _ = run(capsys, *args)
    assert code == 0
    assert "reused" in out
    assert (out_dir / "weights.safetensors").stat().st_mtime_ns == stamp

    code, out, _ = run(capsys, *args, "--json")
    assert code == 0
    assert json.loads(out)["id"] == record.record_id

    code, _, err = run(
        capsys, "train", "--dataset", "digits", "--epochs", "5", "--out", str(out_dir)
    )
    assert code == 1
    assert "--force" in err


def test_record_show_verifies_and_refuses_a_changed_record(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "target"
    assert (
        run(capsys, "train", "--dataset", "digits", "--epochs", "1", "--out", str(out_dir))[0] == 0
    )
    code, out, _ = run(capsys, "record", "show", str(out_dir))
    assert code == 0
    assert "verified" in out
    weights = out_dir / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, _, err = run(capsys, "record", "show", str(out_dir))
    assert code == 1
    assert "weights.safetensors" in err
    assert "changed" in err


@pytest.mark.slow
def test_demo_target_reaches_96_percent_on_mnist5k(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """What `make demo` runs: LeNet-5 on mnist5k, model seed 0, to >= 96 % test accuracy."""
    out_dir = tmp_path / "demo"
    code, out, _ = run(
        capsys,
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
    from misentry.data import get_dataset
    from misentry.models import evaluate

    test = get_dataset("mnist5k").pools(record.data_seed)["test"]
    assert evaluate(model, test).accuracy == pytest.approx(record.metrics["test_accuracy"])


# --- tamper -----------------------------------------------------------------------------------


def test_tamper_list_shows_every_variant(capsys: pytest.CaptureFixture[str]) -> None:
    from misentry.tamper.registry import VARIANTS

    code, out, _ = run(capsys, "tamper", "list", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [row["slug"] for row in rows] == list(VARIANTS)
    assert {row["kind"] for row in rows} == {"benign", "malicious"}
    code, out, _ = run(capsys, "tamper", "list")
    assert code == 0
    assert "ft_last_lr1e-5" in out


def test_tamper_build_builds_resumes_and_refuses_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "target"
    assert (
        run(capsys, "train", "--dataset", "digits", "--epochs", "20", "--out", str(target))[0] == 0
    )
    out_dir = tmp_path / "bench"
    args = ("tamper", "build", "--target", str(target), "--out", str(out_dir), "--json")
    code, out, _ = run(capsys, *args, "--variant", "identity,ft_all_lr1e-3", "--instances", "2")
    assert code == 0
    summary = {row["variant"]: row for row in json.loads(out)}
    assert summary["identity"]["built"] == 2
    assert summary["identity"]["observable"] == 0
    assert summary["ft_all_lr1e-3"]["observable"] == 2
    for index in (0, 1):
        assert load_record(out_dir / "ft_all_lr1e-3" / f"{index:04d}").kind == "tampered"

    code, out, _ = run(capsys, *args, "--variant", "identity,ft_all_lr1e-3", "--instances", "2")
    assert code == 0
    assert all(row["skipped"] == 2 for row in json.loads(out))

    code, _, err = run(capsys, *args, "--variant", "nope")
    assert code == 1
    assert "valid variants" in err
    code, _, err = run(
        capsys,
        "tamper",
        "build",
        "--target",
        str(out_dir / "identity" / "0000"),
        "--out",
        str(tmp_path / "x"),
    )
    assert code == 1
    assert "not a target" in err
