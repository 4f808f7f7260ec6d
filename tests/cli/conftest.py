"""Shared fixtures of the command-line tests: the CLI run in-process as a user types it, the
digits target saved as a record folder, a tampered copy and a bundle of its fingerprints."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from misentry.cli import main
from misentry.data import Pools, to_unit
from misentry.fingerprint.bundle import FingerprintSet, save_bundle
from misentry.models import InputSpec, Record, last_linear, model_record, predict, save_record

from .clikit import Cli, N


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``misentry ARGV...`` through :func:`misentry.cli.main`; returns its exit status
    and what it printed."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def target_dir(digits_record: Record, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared digits target (tests/conftest.py) saved as a record folder."""
    return save_record(digits_record, tmp_path_factory.mktemp("target") / "target")


@pytest.fixture(scope="module")
def files(
    tmp_path_factory: pytest.TempPathFactory, record: Record, target: nn.Module
) -> dict[str, Path]:
    """The target's record, a tampered record (every image gets label 0) and a signed key."""
    root = tmp_path_factory.mktemp("verify-cli")
    tampered = copy.deepcopy(target)
    with torch.no_grad():
        last_linear(tampered)[1].bias[0] += 1000.0
    assert record.input is not None
    tampered_record = model_record(
        tampered,
        kind="tampered",
        dataset=record.dataset,
        architecture=str(record.architecture),
        spec=InputSpec.from_json(record.input),
        data_seed=record.data_seed,
        model_seed=record.model_seed,
        params={"test": "bias of label 0 raised"},
        parent=record.record_id,
    )
    (root / "key").write_text("owner secret\n")
    return {
        "target": save_record(record, root / "target"),
        "tampered": save_record(tampered_record, root / "tampered"),
        "key": root / "key",
    }


@pytest.fixture
def fingerprints(tmp_path: Path, target: nn.Module, digits_pools: Pools) -> Path:
    """A fresh unsigned bundle (no ledger yet) of 16 natural fingerprints, none labelled 0."""
    source = digits_pools["source"].images
    labels = predict(target, to_unit(source))
    keep = (labels != 0).nonzero().flatten()[:N]
    fps = FingerprintSet(source[keep], labels[keep], keep, {"dataset": "digits"})
    return save_bundle(fps, tmp_path / "fp")
