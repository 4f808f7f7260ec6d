"""``misentry verify``: exit codes 0/1/2, JSON output, the ledger, and the wiring of the ONNX and
HTTP oracles (faked here; their own tests are elsewhere)."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from misentry.cli import main
from misentry.data import to_unit
from misentry.fingerprint.bundle import FingerprintSet, save_bundle
from misentry.models import predict
from misentry.models.oracle import LabelOracle
from misentry.verify.ledger import LEDGER_FILE

from .clikit import N


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["verify", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_intact_model_exits_0(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], fingerprints: Path
) -> None:
    code, out, _ = run(capsys, "--fingerprints", str(fingerprints), "--model", str(files["target"]))
    assert code == 0
    assert "INTACT" in out
    assert "all 5 fingerprints" in out


def test_tampered_model_exits_1_and_lists_the_mismatches(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], fingerprints: Path
) -> None:
    code, out, _ = run(
        capsys, "--fingerprints", str(fingerprints), "--model", str(files["tampered"]), "--all"
    )
    assert code == 1
    assert "TAMPERED" in out
    assert f"{N} of {N} fingerprints changed label" in out
    assert "fingerprints whose label changed" in out


def test_json_output_has_the_verdict_mismatches_and_ledger(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], fingerprints: Path
) -> None:
    argv = ["--fingerprints", str(fingerprints), "--model", str(files["tampered"]), "--json"]
    code, out, _ = run(capsys, *argv, "--ns", "1,3", "--ns", "6", "--seed", "4")
    data = json.loads(out)
    assert code == data["exit"] == 1
    assert data["verdict"] == "tampered"
    assert data["ns"] == [1, 3, 6]
    assert data["seed"] == 4
    assert data["queries"] == 6
    assert len(data["mismatches"]) == 6
    assert all(m["returned"] == 0 for m in data["mismatches"])
    assert data["fresh_left"] == N - 6
    assert data["ledger"] == str(fingerprints / LEDGER_FILE)
    code, out, _ = run(capsys, *argv, "--ns", "4")
    assert json.loads(out)["fresh_left"] == N - 10


def test_no_ledger_writes_no_file(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], fingerprints: Path
) -> None:
    argv = ["--fingerprints", str(fingerprints), "--model", str(files["target"])]
    code, out, _ = run(capsys, *argv, "--no-ledger", "--json")
    assert code == 0
    assert json.loads(out)["ledger"] is None
    assert not (fingerprints / LEDGER_FILE).exists()
    ledger = fingerprints.parent / "elsewhere.json"
    code, out, _ = run(capsys, *argv, "--ledger", str(ledger), "--name", "prod", "--json")
    assert code == 0
    assert json.loads(out)["endpoint_id"] == "prod"
    assert ledger.is_file()
    assert not (fingerprints / LEDGER_FILE).exists()
    unwritable = fingerprints / "manifest.json" / "ledger.json"
    code, out, _ = run(capsys, *argv, "--ledger", str(unwritable), "--json")
    assert code == 2
    assert json.loads(out)["reason"] == "ledger"


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--budget", "3"], "budget"),
        (["--ns", f"{N + 1}"], "usage"),
        (["--header", "X: 1"], "usage"),
        (["--no-ledger", "--ledger", "x.json"], "usage"),
    ],
)
def test_inconclusive_and_errors_exit_2_with_a_reason(
    capsys: pytest.CaptureFixture[str],
    files: dict[str, Path],
    fingerprints: Path,
    extra: list[str],
    reason: str,
) -> None:
    argv = ["--fingerprints", str(fingerprints), "--model", str(files["target"]), *extra]
    code, out, _ = run(capsys, *argv, "--json")
    data = json.loads(out)
    assert code == data["exit"] == 2
    assert data["verdict"] == "inconclusive"
    assert data["reason"] == reason
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert "INCONCLUSIVE" in out + err


def test_a_bad_bundle_model_or_key_exits_2(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], fingerprints: Path, tmp_path: Path
) -> None:
    model = ["--model", str(files["target"])]
    code, _, err = run(capsys, "--fingerprints", str(tmp_path / "missing"), *model)
    assert code == 2
    assert "not found" in err
    signed = save_bundle(
        FingerprintSet(
            torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
            torch.ones(2, dtype=torch.int64),
            torch.arange(2),
        ),
        tmp_path / "signed",
        key=b"owner secret",
    )
    code, _, err = run(capsys, "--fingerprints", str(signed), *model)
    assert code == 2
    assert "give the key" in err
    code, out, _ = run(
        capsys, "--fingerprints", str(signed), *model, "--key-file", str(files["key"]), "--json"
    )
    assert code in (0, 1)
    assert json.loads(out)["queries"] == 2
    code, out, _ = run(capsys, "--fingerprints", str(fingerprints), "--model", str(tmp_path))
    assert code == 2
    assert (
        json.loads(
            run(capsys, "--fingerprints", str(fingerprints), "--model", str(tmp_path), "--json")[1]
        )["reason"]
        == "model"
    )
    # a changed bundle: its hash check fails
    manifest = json.loads((fingerprints / "manifest.json").read_text())
    manifest["tensors_sha256"] = "0" * 64
    (fingerprints / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run(capsys, "--fingerprints", str(fingerprints), *model)
    assert code == 2
    assert "hash check failed" in err


class FakeOracle(LabelOracle):
    """Stands in for the HTTP and ONNX oracles: remembers its arguments and answers with the
    labels of a model (or raises what it is told to)."""

    made: ClassVar[list[dict[str, Any]]] = []
    model: ClassVar[nn.Module | None] = None
    fail: ClassVar[Exception | None] = None

    def __init__(self, where: Any, **kwargs: Any) -> None:
        names = ("num_classes", "batch_size", "budget", "deadline")
        limits = {k: kwargs.pop(k) for k in names if k in kwargs}
        super().__init__(**limits)
        FakeOracle.made.append({"where": where, **kwargs, **limits})
        if FakeOracle.fail is not None:
            raise FakeOracle.fail

    def _query(self, images: torch.Tensor) -> torch.Tensor:
        assert FakeOracle.model is not None
        return predict(FakeOracle.model, to_unit(images))


@pytest.fixture
def fake_oracles(monkeypatch: pytest.MonkeyPatch, target: nn.Module) -> type[FakeOracle]:
    monkeypatch.setattr(FakeOracle, "made", [])
    monkeypatch.setattr(FakeOracle, "model", target)
    monkeypatch.setattr(FakeOracle, "fail", None)
    monkeypatch.setitem(
        sys.modules, "misentry.verify.http", types.SimpleNamespace(HttpOracle=FakeOracle)
    )
    monkeypatch.setitem(
        sys.modules, "misentry.verify.onnx", types.SimpleNamespace(OnnxOracle=FakeOracle)
    )
    return FakeOracle


def test_endpoint_options_reach_the_http_oracle(
    capsys: pytest.CaptureFixture[str], fingerprints: Path, fake_oracles: type[FakeOracle]
) -> None:
    url = "http://localhost:9/v2/models/lenet"
    code, out, _ = run(
        capsys,
        *("--fingerprints", str(fingerprints), "--endpoint", url, "--json"),
        *("--header", "Authorization: Bearer T", "--header", "X-Team:ml"),
        *("--datatype", "UINT8", "--layout", "NHWC", "--output", "scores"),
        *("--output-name", "logits", "--input-name", "x", "--timeout", "3"),
        *("--budget", "50", "--deadline", "9", "--batch-size", "4"),
    )
    assert code == 0
    made = fake_oracles.made[0]
    assert made["where"] == url
    assert made["headers"] == {"Authorization": "Bearer T", "X-Team": "ml"}
    assert (made["datatype"], made["layout"], made["output"]) == ("UINT8", "NHWC", "scores")
    assert (made["output_name"], made["input_name"], made["timeout"]) == ("logits", "x", 3.0)
    assert (made["budget"], made["deadline"], made["batch_size"]) == (50, 9.0, 4)
    assert made["num_classes"] == 10  # from the bundle's dataset
    assert json.loads(out)["endpoint_id"] == url


def test_onnx_and_a_failing_oracle_setup(
    capsys: pytest.CaptureFixture[str],
    fingerprints: Path,
    fake_oracles: type[FakeOracle],
    tmp_path: Path,
) -> None:
    code, out, _ = run(
        capsys, "--fingerprints", str(fingerprints), "--onnx", str(tmp_path / "m.onnx"), "--json"
    )
    assert code == 0
    assert json.loads(out)["endpoint_id"] == f"onnx:{tmp_path / 'm.onnx'}"
    fake_oracles.fail = ValueError("not an OIP model URL")
    code, out, _ = run(
        capsys, "--fingerprints", str(fingerprints), "--endpoint", "ftp://x", "--json"
    )
    assert code == 2
    assert json.loads(out)["reason"] == "oracle"
    fake_oracles.fail = ImportError("No module named 'onnxruntime'")
    code, _, err = run(capsys, "--fingerprints", str(fingerprints), "--onnx", "m.onnx")
    assert code == 2
    assert "onnxruntime" in err


def test_help_has_exit_codes_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["verify", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for text in ("exit status", "inconclusive", "examples:", "--endpoint", "--ns", "ledger"):
        assert text in out


def test_help_shows_the_http_oracles_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from misentry.verify.http import HttpOracle

    oracle = HttpOracle("http://127.0.0.1:9/v2/models/m")
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"images per request ({oracle.batch_size})" in out
    assert f"seconds per request ({oracle.options.timeout:g})" in out
    assert f"input tensor name ({oracle.options.input_name})" in out
    assert f"(default {oracle.options.datatype})" in out
    assert f"tensor layout ({oracle.options.layout})" in out
    assert f"(default {oracle.options.output})" in out
    assert re.search(r"\{[a-z_:]+\}", out) is None  # every placeholder filled


# --- the verdict with its error rate ----------------------------------------------------------


def declare(fingerprints: Path, tolerance: str, rate: object) -> Path:
    """Give the saved (unsigned) bundle a tolerance and ``rate`` for every fingerprint, as a
    generated bundle's manifest has them."""
    path = fingerprints / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["tolerance"] = {"tolerance": tolerance, "noise": 0.05, "floor": 0.2}
    manifest["samples"] = [{"margin": 1.0, "flip_rate": rate} for _ in range(manifest["count"])]
    path.write_text(json.dumps(manifest))
    return fingerprints


def test_a_bundle_without_tolerance_prints_a_zero_false_alarm(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], fingerprints: Path
) -> None:
    argv = ["--fingerprints", str(fingerprints), "--model", str(files["tampered"]), "--ns", "1"]
    code, out, _ = run(capsys, *argv)
    assert code == 1
    text = " ".join(out.split())
    assert (
        "TAMPERED 1 of 1 fingerprints changed label; false-alarm probability 0 under tolerance "
        "exact (limit 1e-06)"
    ) in text
    code, out, _ = run(capsys, "--fingerprints", str(fingerprints), "--model", str(files["target"]))
    assert code == 0
    assert "(tolerance exact)" in out


def test_likely_mismatches_are_inconclusive_with_the_probability(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], fingerprints: Path
) -> None:
    declare(fingerprints, "fp16", 0.3)
    argv = ["--fingerprints", str(fingerprints), "--model", str(files["tampered"]), "--ns", "1"]
    code, out, _ = run(capsys, *argv)
    assert code == 2
    text = " ".join(out.split())
    assert "INCONCLUSIVE false_alarm: 1 of 1 fingerprints changed label, but an untampered " in text
    assert "within tolerance fp16 gives 1 or more with probability 0.3 (>= the limit 1e-06)" in text
    assert "fingerprints whose label changed" in out  # the mismatches are still listed
    code, out, _ = run(capsys, *argv, "--json")
    data = json.loads(out)
    assert code == data["exit"] == 2
    assert (data["verdict"], data["reason"], data["tolerance"]) == (
        "inconclusive",
        "false_alarm",
        "fp16",
    )
    assert data["false_alarm"] == pytest.approx(0.3)
    assert data["max_false_alarm"] == 1e-6
    assert len(data["mismatches"]) == 1


def test_max_false_alarm_sets_the_limit(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], fingerprints: Path
) -> None:
    declare(fingerprints, "tf32", 0.3)
    argv = ["--fingerprints", str(fingerprints), "--model", str(files["tampered"])]
    code, out, _ = run(capsys, *argv, "--ns", "1,3", "--max-false-alarm", "0.5")
    assert code == 1
    text = " ".join(out.split())
    assert (
        "TAMPERED 3 of 3 fingerprints changed label; false-alarm probability 0.027 under "
        "tolerance tf32 (limit 0.5)"
    ) in text
    assert "false alarm" in out  # the checks table's column
    assert "tf32, false-alarm limit 0.5" in text  # the summary
    code, out, _ = run(capsys, *argv, "--ns", "3", "--json")
    data = json.loads(out)
    assert (code, data["verdict"], data["reason"]) == (2, "inconclusive", "false_alarm")
    assert data["false_alarm"] == pytest.approx(0.3**3)
    assert data["max_false_alarm"] == 1e-6


@pytest.mark.parametrize("limit", ["0", "1.5", "-1", "nan"])
def test_a_limit_outside_0_1_exits_2(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], fingerprints: Path, limit: str
) -> None:
    argv = ["--fingerprints", str(fingerprints), "--model", str(files["target"])]
    code, out, _ = run(capsys, *argv, "--max-false-alarm", limit, "--json")
    data = json.loads(out)
    assert (code, data["reason"]) == (2, "usage")
    assert "max_false_alarm" in data["message"]
    assert not (fingerprints / LEDGER_FILE).exists()  # nothing was sent


def test_malformed_flip_rates_exit_2_with_reason_bundle(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], fingerprints: Path
) -> None:
    declare(fingerprints, "tf32", "high")
    argv = ["--fingerprints", str(fingerprints), "--model", str(files["target"])]
    code, out, _ = run(capsys, *argv, "--json")
    data = json.loads(out)
    assert (code, data["reason"]) == (2, "bundle")
    assert "flip_rate" in data["message"]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "not a number in [0, 1]" in " ".join(err.split())


def test_help_explains_max_false_alarm(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--max-false-alarm P" in out
    assert "(default 1e-06)" in out
    assert "tolerance" in out
