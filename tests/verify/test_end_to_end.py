"""The nightly check end to end: `misentry verify --endpoint` against real servers and against a
misbehaving one.

- Interop: the same digits record, intact and tampered, served by `misentry serve`'s app and by
  a real MLServer (when the ``interop`` extra is installed), verified through ``HttpOracle``.
- Faults: every failure of the endpoint ends INCONCLUSIVE with exit 2 and a reason, within the
  deadline; the same server behaving well gives exit 0, so the checks can fail.
- The demo's nightly check: both models served, verified under the names the ledger keeps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("fastapi", reason="misentry serve needs the serve extra")

from misentry.cli import main
from misentry.data import Pools
from misentry.fingerprint.bundle import FingerprintSet, save_bundle
from misentry.fingerprint.registry import get_method
from misentry.models import (
    Record,
    last_linear,
    model_from_record,
    save_record,
)
from misentry.serve.oip import create_app_from_record, serve_in_thread
from misentry.verify.http import HttpOracle
from misentry.verify.verifier import Verdict, verify
from verify.faultkit import NUM_CLASSES, FaultServer, rule_labels


@pytest.fixture(scope="module")
def tampered(digits_record: Record) -> Record:
    """The target with its output layer's bias for class 0 raised: a crude, obvious change."""
    name, layer = last_linear(model_from_record(digits_record))
    assert layer.bias is not None
    tensors = dict(digits_record.tensors)
    key = f"{name}.bias"
    changed = tensors[key].clone()
    changed[0] += 25.0
    tensors[key] = changed
    return replace(digits_record, tensors=tensors, parent=digits_record.record_id)


@pytest.fixture(scope="module")
def bundle(target: nn.Module, digits_pools: Pools) -> FingerprintSet:
    """30 natural fingerprints of the digits target."""
    return get_method("natural").generate(target, digits_pools["source"], 30, seed=0)


@pytest.fixture(scope="module")
def folders(
    digits_record: Record, tampered: Record, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("records")
    save_record(digits_record, root / "target")
    save_record(tampered, root / "tampered")
    return root


def misentry_server(folder: Path, name: str) -> AbstractContextManager[str]:
    from misentry.models import load_record

    return serve_in_thread(create_app_from_record(load_record(folder), name=name))


def mlserver(folder: Path, name: str) -> AbstractContextManager[str]:
    pytest.importorskip("mlserver", reason="the MLServer interop test needs the interop extra")
    from misentry.serve.mlserver_runtime import start_mlserver

    return start_mlserver(folder, name, timeout=60.0)


@pytest.mark.parametrize("serve", [misentry_server, mlserver], ids=["misentry-serve", "mlserver"])
def test_a_served_record_verifies_intact_and_its_tampered_copy_tampered(
    serve: Callable[[Path, str], AbstractContextManager[str]],
    folders: Path,
    bundle: FingerprintSet,
) -> None:
    verdicts = {}
    for which in ("target", "tampered"):
        with serve(folders / which, which) as base:
            url = f"{base}/v2/models/{which}"
            with HttpOracle(url, num_classes=10, batch_size=8) as oracle:
                result = verify(bundle, oracle, ns=(5, len(bundle)), seed=0, select="random")
        verdicts[which] = result
        assert result.queries == len(bundle)
    assert verdicts["target"].verdict is Verdict.INTACT
    assert not verdicts["target"].mismatches
    assert verdicts["tampered"].verdict is Verdict.TAMPERED
    # the served tampered model disagrees exactly where the in-process one does
    local = model_from_record(_tampered_record(folders))
    expected = {
        i
        for i in range(len(bundle))
        if int(local(bundle.x[i : i + 1]).argmax()) != int(bundle.labels[i])
    }
    assert {m.index for m in verdicts["tampered"].mismatches} == expected


def _tampered_record(folders: Path) -> Record:
    from misentry.models import load_record

    return load_record(folders / "tampered")


def test_the_cli_verifies_a_served_record_with_exit_codes_0_and_1(
    folders: Path, bundle: FingerprintSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_bundle(bundle, tmp_path / "fp")
    codes = {}
    for which in ("target", "tampered"):
        with misentry_server(folders / which, which) as base:
            argv = ["verify", "--fingerprints", str(tmp_path / "fp"), "--endpoint"]
            codes[which] = main([*argv, f"{base}/v2/models/{which}", "--ns", "30", "--json"])
        capsys.readouterr()
    assert codes == {"target": 0, "tampered": 1}


# -- a misbehaving endpoint ---------------------------------------------------------------------


@pytest.fixture
def fault_bundle(tmp_path: Path) -> Path:
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (12, 3, 4, 4), dtype=torch.uint8, generator=gen)
    fps = FingerprintSet(images, rule_labels(images), torch.full((12,), -1), {"method": "test"})
    return save_bundle(fps, tmp_path / "fp")


FAULTS = {
    "500": {"fault": "500"},
    "slow": {"fault": "slow", "delay": 3.0},
    "bad_json": {"fault": "bad_json"},
    "no_outputs": {"fault": "empty_outputs"},
    "short": {"fault": "short"},
    "out_of_range": {"fault": "out_of_range"},
}


def run_verify(
    bundle: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, object], float]:
    argv = ["verify", "--fingerprints", str(bundle), "--endpoint", url, "--ns", "12"]
    options = ["--num-classes", str(NUM_CLASSES), "--output-name", "label", "--timeout", "0.5"]
    started = time.perf_counter()
    code = main([*argv, *options, "--deadline", "4", "--no-ledger", "--json"])
    seconds = time.perf_counter() - started
    out = capsys.readouterr().out
    return code, json.loads(out), seconds


def test_a_well_behaved_endpoint_is_intact(
    fault_server: FaultServer, fault_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result, _ = run_verify(fault_bundle, fault_server.url, capsys)
    assert code == 0
    assert result["verdict"] == "intact"


@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_fault_is_inconclusive_with_exit_2_within_the_deadline(
    fault: str,
    fault_server: FaultServer,
    fault_bundle: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in FAULTS[fault].items():
        setattr(fault_server.state, key, value)
    code, result, seconds = run_verify(fault_bundle, fault_server.url, capsys)
    assert code == 2
    assert result["verdict"] == "inconclusive"
    assert result["reason"]
    assert seconds < 6.0  # the deadline is 4 s; retries and backoff stay inside it


def test_a_refused_connection_is_inconclusive(
    fault_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nobody listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, result, seconds = run_verify(
        fault_bundle, f"http://127.0.0.1:{port}/v2/models/tiny", capsys
    )
    assert code == 2
    assert result["reason"] == "transport"
    assert seconds < 6.0


def test_both_models_served_are_verified_under_the_names_the_ledger_keeps(
    folders: Path, bundle: FingerprintSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What ``misentry demo`` does after its benchmark: serve the target and a tampered copy on
    loopback and verify each over HTTP under its own endpoint name."""
    save_bundle(bundle, tmp_path / "fp")
    codes = {}
    for which in ("target", "tampered"):
        with misentry_server(folders / which, which) as base:
            argv = ["verify", "--fingerprints", str(tmp_path / "fp"), "--name", which]
            codes[which] = main([*argv, "--endpoint", f"{base}/v2/models/{which}", "--ns", "30"])
    out = capsys.readouterr().out
    assert codes == {"target": 0, "tampered": 1}
    assert "INTACT" in out
    assert "TAMPERED" in out
    ledger = json.loads((tmp_path / "fp" / "ledger.json").read_text())
    assert "target" in json.dumps(ledger)  # the endpoints are kept under the names given
