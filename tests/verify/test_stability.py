"""The owner's stability check on the digits target: near-tie fingerprints keep their labels on
the exact stacks and lose them under looser numerics, natural images keep them everywhere (ONNX
Runtime and a served endpoint included), and a check that cannot be made says so."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from misentry.data import Pools, to_unit
from misentry.fingerprint.base import weights_digest
from misentry.fingerprint.bundle import FingerprintSet
from misentry.models import Record, last_linear, logits, predict
from misentry.models.oracle import ModuleOracle
from misentry.models.stacks import ALL_STACKS, LEVELS
from misentry.verify.stability import (
    SHOWN_INDICES,
    StabilityError,
    StabilityReport,
    check_stability,
)

N = 12
"""Fingerprints per bundle."""

CLEAR = 1e-4
"""The smallest margin of a near tie: ten times the exact stacks' noise."""


def top_margins(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Top-1 logit minus the runner-up's, of uint8 images."""
    top = logits(model, to_unit(images)).double().topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def near_tie_images(model: nn.Module, images: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` 8-bit images on which ``model``'s top two logits nearly tie (margins about 1e-2
    and below, the largest pixel step short of the boundary): blends of two images of different
    labels, bisected to the boundary. Margins under :data:`CLEAR` are left out, so the ``exact``
    stacks (noise about 1e-5) keep every label: a cheap stand-in for a boundary generator run
    with tolerance exact."""
    labels = predict(model, to_unit(images))
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randperm(len(images), generator=gen), torch.randperm(len(images), generator=gen)
    keep = (labels[a] != labels[b]).nonzero().flatten()[: 2 * n]
    start, end = images[a[keep]].double(), images[b[keep]].double()
    lo, hi = torch.zeros(len(keep), dtype=torch.float64), torch.ones(len(keep), dtype=torch.float64)
    for _ in range(14):
        mid = (lo + hi) / 2
        blend = torch.round(start + mid.view(-1, 1, 1, 1) * (end - start)).to(torch.uint8)
        same = predict(model, to_unit(blend)) == labels[a[keep]]
        lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
    x = torch.round(start + lo.view(-1, 1, 1, 1) * (end - start)).to(torch.uint8)
    x = x[top_margins(model, x) >= CLEAR]
    assert len(x) >= n, "too few near ties"
    return x[:n]


def make_bundle(model: nn.Module, images: torch.Tensor, tolerance: str | None) -> FingerprintSet:
    """A bundle of ``images`` labelled by ``model``, declaring ``tolerance`` (None: none, as a
    bundle made before tolerances)."""
    manifest: dict[str, Any] = {"dataset": "digits", "target_weights_sha256": weights_digest(model)}
    if tolerance is not None:
        manifest["tolerance"] = {"tolerance": tolerance}
    labels = predict(model, to_unit(images))
    return FingerprintSet(images, labels, torch.full((len(images),), -1), manifest)


@pytest.fixture(scope="module")
def ties(target: nn.Module, digits_pools: Pools) -> torch.Tensor:
    return near_tie_images(target, digits_pools["source"].images, N)


@pytest.fixture(scope="module")
def natural(target: nn.Module, digits_pools: Pools) -> torch.Tensor:
    """Source images the target labels with a wide margin."""
    images = digits_pools["source"].images
    return images[top_margins(target, images) > 2.0][:N]


@pytest.fixture(scope="module")
def exact_report(target: nn.Module, ties: torch.Tensor) -> tuple[StabilityReport, list[Any]]:
    seen: list[Any] = []
    bundle = make_bundle(target, ties, "exact")
    report = check_stability(bundle, target, progress=lambda *step: seen.append(step))
    return report, seen


def test_near_ties_made_exact_hold_on_the_exact_stacks_and_change_beyond(
    exact_report: tuple[StabilityReport, list[Any]],
) -> None:
    report, seen = exact_report
    assert report.tolerance == "exact"
    assert [row.stack for row in report.rows] == [stack.name for stack in ALL_STACKS]
    assert all(row.within == (row.level == "exact") for row in report.rows)
    assert all(row.changed == 0 for row in report.rows if row.within)
    assert report.ok
    assert not report.failed
    assert len(report.checked) == sum(stack.level == "exact" for stack in ALL_STACKS)
    half = [row for row in report.rows if row.level in ("fp16", "bf16")]
    assert sum(row.changed for row in half) > 0  # looser serving breaks near ties, and we see it
    assert seen == [("emulated", i, len(ALL_STACKS)) for i in range(1, len(ALL_STACKS) + 1)]


def lost(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether another class's logit reaches the label's (a tie may be served either way)."""
    own = z.gather(1, labels[:, None]).squeeze(1)
    return z.scatter(1, labels[:, None], -torch.inf).max(1).values >= own


def test_the_same_fingerprints_declared_bf16_fail_where_the_labels_change(
    target: nn.Module, ties: torch.Tensor
) -> None:
    bundle = make_bundle(target, ties, "bf16")
    report = check_stability(bundle, target, levels=["bf16"])
    assert {row.level for row in report.rows} == {"bf16"}
    assert not report.ok
    assert report.failed
    served = []
    for row in report.rows:
        stack = next(s for s in ALL_STACKS if s.name == row.stack)
        draws = [stack.run(target, bundle.x, seed) for seed in range(stack.draws)]
        changed = torch.stack([lost(z, bundle.labels) for z in draws]).any(0)
        assert row.changed_indices == tuple(changed.nonzero().flatten().tolist())[:SHOWN_INDICES]
        assert row.changed == int(changed.sum())
        assert row.total == N
        served += [bool((z.argmax(1) != bundle.labels).any()) for z in draws]
    assert any(served)  # a bf16 server answers other labels, not only ties


def test_natural_images_hold_everywhere_onnx_runtime_and_the_endpoint_included(
    target: nn.Module, record: Record, natural: torch.Tensor, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("fastapi", reason="misentry serve needs the serve extra")
    from misentry.serve.oip import create_app_from_record, serve_in_thread
    from misentry.verify.onnx import export_onnx

    channels, height, width = natural.shape[1:]
    onnx = export_onnx(target, (channels, height, width), tmp_path / "target.onnx")
    bundle = make_bundle(target, natural, "tf32")
    with serve_in_thread(create_app_from_record(record, name="digits")) as base:
        endpoint = f"{base}/v2/models/digits"
        report = check_stability(bundle, target, onnx=onnx, endpoint=endpoint, levels=["exact"])
    assert report.ok
    real = [row for row in report.rows if row.kind != "emulated"]
    assert [(row.stack, row.level, row.within) for row in real] == [
        ("onnxruntime-noopt-1t", "fp32", True),
        ("onnxruntime-noopt-2t", "fp32", True),
        ("onnxruntime-opt-1t", "fp32", True),
        ("onnxruntime-opt-2t", "fp32", True),
        ("endpoint", "tf32", True),
    ]
    assert all(row.changed == 0 and row.error is None and row.total == N for row in real)
    assert json.loads(json.dumps(report.to_json()))["rows"][-1]["kind"] == "endpoint"


def test_an_endpoint_serving_other_weights_fails_the_check(
    target: nn.Module, natural: torch.Tensor
) -> None:
    bundle = make_bundle(target, natural, "exact")
    other = copy.deepcopy(target)
    with torch.no_grad():
        last_linear(other)[1].bias[0] += 1000.0  # every image becomes a 0
    report = check_stability(bundle, target, endpoint=ModuleOracle(other), levels=["exact"])
    (row,) = report.failed
    assert row.stack == "endpoint"
    assert row.changed == int((bundle.labels != 0).sum()) > 0
    assert not report.ok


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_endpoint_that_does_not_answer_fails_closed(
    target: nn.Module, natural: torch.Tensor
) -> None:
    bundle = make_bundle(target, natural, "exact")
    url = f"http://127.0.0.1:{free_port()}/v2/models/digits"
    options = {"retries": 0, "timeout": 2.0}
    report = check_stability(bundle, target, endpoint=url, http_options=options, levels=["exact"])
    (row,) = report.errors
    assert row.stack == "endpoint"
    assert str(row.error).startswith("transport")
    assert not report.failed
    assert not report.ok


def test_a_bad_url_is_an_unchecked_endpoint_too(target: nn.Module, natural: torch.Tensor) -> None:
    bundle = make_bundle(target, natural, "exact")
    report = check_stability(bundle, target, endpoint="ftp://example", levels=["exact"])
    assert [row.stack for row in report.errors] == ["endpoint"]
    assert not report.ok


def test_another_model_is_refused(target: nn.Module, natural: torch.Tensor) -> None:
    bundle = make_bundle(target, natural, "exact")
    other = copy.deepcopy(target)
    with torch.no_grad():
        last_linear(other)[1].bias[3] += 1e-3
    with pytest.raises(StabilityError, match="not those the fingerprints were made for"):
        check_stability(bundle, other)


def test_a_bundle_without_a_tolerance_is_exact(target: nn.Module, natural: torch.Tensor) -> None:
    report = check_stability(make_bundle(target, natural, None), target, levels=["exact", "fp16"])
    assert report.tolerance == "exact"
    assert {row.level: row.within for row in report.rows} == {"exact": True, "fp16": False}


@pytest.mark.parametrize("entry", [{"tolerance": "fp8"}, {"noise": 0.1}, "tf32"])
def test_an_unreadable_tolerance_is_refused(
    target: nn.Module, natural: torch.Tensor, entry: object
) -> None:
    bundle = make_bundle(target, natural, None)
    bundle.manifest["tolerance"] = entry
    with pytest.raises(StabilityError, match="tolerance"):
        check_stability(bundle, target, levels=["exact"])


def test_an_emulated_stack_that_cannot_run_the_model_is_reported_not_failed(
    target: nn.Module, natural: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_trace(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("data-dependent control flow")

    monkeypatch.setattr(torch.jit, "trace", no_trace)
    report = check_stability(make_bundle(target, natural, "tf32"), target, levels=["fp32"])
    unavailable = {row.stack: row.error for row in report.unavailable}
    assert set(unavailable) == {"torchscript-trace", "torchscript-freeze"}
    assert all("does not trace" in str(error) for error in unavailable.values())
    assert all(row.within for row in report.unavailable)
    assert report.ok  # emulated numerics this model cannot run are no finding
    assert not report.errors


def test_levels_are_checked(target: nn.Module, natural: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="tolerances: " + ", ".join(LEVELS)):
        check_stability(make_bundle(target, natural, "exact"), target, levels=["fp64"])
