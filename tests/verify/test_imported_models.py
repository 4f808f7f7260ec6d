"""Verification of an imported model (``misentry import``) end to end: MiSentry bundles made for
the user's TorchScript model say intact on it, in-process (``--model``), through ``misentry
serve``, through MLServer and on the user's own ONNX file (which takes the contract-encoded
input), and the strict bundle says tampered on an ``ft_last_lr1e-4`` instance of it. That
instance changes 1 of the 358 test labels: the covert bundle, at this tiny budget, flags it in
none of its 24 fingerprints, so only its intact verdicts are asserted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from misentry.cli import main
from misentry.data import Pools
from misentry.fingerprint.service import make_bundle
from misentry.models import Record, load_model, predict, save_record
from misentry.tamper.builder import Workspace, build_all
from misentry.tamper.registry import select
from user_model.saved import CONTRACT, SavedModel

QUICK = {
    "steps": 3,
    "inner_steps": 1,
    "refine_rounds": 3,
    "refine_moves": 4,
    "zoo": ("ft_last:1e-4x1",),
    "pool_factor": 4,
}
"""MiSentry with few search steps: seconds per bundle."""

N = 24
PROFILES = {"strict": "misentry", "covert": "misentry-covert"}


@pytest.fixture(scope="module")
def folders(imported_record: Record, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The imported target and its ``ft_last_lr1e-4`` instance as record folders, and a
    bundle per MiSentry profile (tolerance ``exact``: every check here serves the target on
    the stack it was fingerprinted on, and the tampering is subtler than TF32's noise)."""
    root = tmp_path_factory.mktemp("imported-verify")
    paths = {"target": save_record(imported_record, root / "target")}
    (event,) = build_all(Workspace.load(imported_record), select("ft_last_lr1e-4"), [0], root)
    assert event.record is not None
    paths["tampered"] = event.path
    for profile, method in PROFILES.items():
        make_bundle(paths["target"], method, N, root / profile, overrides=QUICK, tolerance="exact")
        paths[profile] = root / profile
    return paths


def verify(
    bundle: Path, *source: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    code = main(
        ["verify", "--fingerprints", str(bundle), *source, "--all", "--no-ledger", "--json"]
    )
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_the_bundle_records_the_contract_and_the_dataset(folders: dict[str, Path]) -> None:
    for profile in PROFILES:
        manifest = json.loads((folders[profile] / "manifest.json").read_text())
        assert manifest["input_contract"] == CONTRACT.to_json()
        assert manifest["dataset"] == "digits"
        assert manifest["num_classes"] == 10
        assert manifest["architecture"] == "imported:torchscript"


EXPECTED = {("strict", "target"): 0, ("strict", "tampered"): 1, ("covert", "target"): 0}
"""(profile, model) -> the exit status of ``misentry verify`` (0 intact, 1 tampered)."""


@pytest.mark.parametrize(("profile", "model"), list(EXPECTED))
def test_in_process_verdicts(
    profile: str, model: str, folders: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, result = verify(folders[profile], "--model", str(folders[model]), capsys=capsys)
    assert code == EXPECTED[profile, model]
    assert result["verdict"] == ("intact" if code == 0 else "tampered")


@pytest.fixture(scope="module")
def served(folders: dict[str, Path]) -> Iterator[dict[str, str]]:
    """``misentry serve``'s app of the target and of the instance, each in a thread: model URLs."""
    pytest.importorskip("fastapi", reason="misentry serve needs the serve extra")
    from misentry.models import load_record
    from misentry.serve import create_app_from_record, serve_in_thread

    apps = {
        m: create_app_from_record(load_record(folders[m]), name=m) for m in ("target", "tampered")
    }
    with serve_in_thread(apps["target"]) as a, serve_in_thread(apps["tampered"]) as b:
        yield {"target": f"{a}/v2/models/target", "tampered": f"{b}/v2/models/tampered"}


@pytest.mark.parametrize(("profile", "model"), list(EXPECTED))
def test_verdicts_through_misentry_serve(
    profile: str,
    model: str,
    folders: dict[str, Path],
    served: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, result = verify(folders[profile], "--endpoint", served[model], capsys=capsys)
    assert code == EXPECTED[profile, model], result


def test_the_server_takes_the_contract_encoded_input_only(served: dict[str, str]) -> None:
    from loopback_http import call

    status, metadata, _ = call(served["target"])
    assert status == 200
    assert metadata["inputs"][0]["parameters"]["contract"] == CONTRACT.to_json()
    pixels = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "UINT8", "data": [0] * 64}
    status, answer, _ = call(f"{served['target']}/infer", json.dumps({"inputs": [pixels]}).encode())
    assert status == 400
    assert "FP32" in answer["error"]


def test_verify_onnx_of_the_users_own_file_says_intact(
    user_model: SavedModel, folders: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime", reason="--onnx needs the onnx extra")
    assert user_model.onnx is not None
    code, result = verify(folders["strict"], "--onnx", str(user_model.onnx), capsys=capsys)
    assert (code, result["verdict"]) == (0, "intact")


def test_exported_onnx_of_the_record_takes_the_contract_input(
    folders: dict[str, Path], digits_pools: Pools, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime", reason="export needs the onnx extra")
    from misentry.verify.onnx import OnnxOracle, check_export, export_onnx

    model, _ = load_model(folders["tampered"])
    path = export_onnx(model, (1, 8, 8), tmp_path / "tampered.onnx")
    images = digits_pools["test"].images[:200]
    assert check_export(model, path, images).agreement == 1.0
    oracle = OnnxOracle(path, contract=CONTRACT)
    assert oracle.input_shape[1:] == [1, 8, 8]
    assert torch.equal(oracle.labels(images), predict(model, digits_pools["test"].x[:200]))


def test_mlserver_serves_the_contract_input_and_verifies_intact(
    folders: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("mlserver", reason="the MLServer interop test needs the interop extra")
    from misentry.serve.mlserver_runtime import start_mlserver

    with start_mlserver(folders["tampered"], "suspect", timeout=60.0) as base:
        url = f"{base}/v2/models/suspect"
        code, result = verify(folders["strict"], "--endpoint", url, capsys=capsys)
    assert (code, result["verdict"]) == (1, "tampered")
