"""``misentry demo``: after its benchmark (stubbed here; the bench tests run the real one), it
serves the target and a tampered copy on loopback and verifies both over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from misentry.cli import demo

from .clikit import Cli

pytest.importorskip("fastapi", reason="the demo serves with the serve extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="the demo serves with the serve extra (fastapi, uvicorn)")


def test_serve_and_verify_finds_the_target_intact_and_the_copy_tampered(
    files: dict[str, Path], fingerprints: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = demo.serve_and_verify(Console(), fingerprints, files["target"], files["tampered"], 5)
    out = capsys.readouterr().out
    assert code == 0
    assert "INTACT" in out
    assert "TAMPERED" in out
    ledger = json.loads((fingerprints / "ledger.json").read_text())
    for name in ("target", "tampered"):  # the endpoints are kept under the demo's names
        assert name in json.dumps(ledger)


def test_demo_verifies_the_run_of_its_benchmark(
    cli: Cli,
    files: dict[str, Path],
    fingerprints: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def benchmark(out: Path, executor: str) -> None:
        """What the benchmark leaves behind: run.json with the target, bundles, instances."""
        assert executor == "local"
        run = {
            "target": str(files["target"]),
            "bundles": {demo.METHOD: str(fingerprints)},
            "instances": [
                {"variant": demo.TAMPERING, "index": 1, "path": str(files["target"])},
                {"variant": demo.TAMPERING, "index": 0, "path": str(files["tampered"])},
            ],
        }
        out.mkdir(parents=True)
        (out / "run.json").write_text(json.dumps(run))

    monkeypatch.setattr(demo, "benchmark", benchmark)
    code, out, _ = cli("demo", "--out", str(tmp_path / "demo"), "--ns", "3")
    assert code == 0
    assert f"--preset {demo.PRESET}" in out
    assert "INTACT" in out
    assert "TAMPERED" in out
    assert "all 3 fingerprints gave their expected labels" in out
