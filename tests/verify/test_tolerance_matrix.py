"""What a deployment tolerance promises, end to end: for each tolerance, the strict MiSentry
bundle generated with it changes no label on any stack of its benign matrix (every emulated
stack of its level and the stricter ones, the real ONNX Runtime at every optimization level,
``misentry serve`` over HTTP and MLServer), on the target of ``mnist5k`` (LeNet-5) and of the
3-channel embedded dataset ``mnist5k-color`` (ResNet-20, BatchNorm included).

The targets train briefly and the fingerprints come from zoo-free margin descent on a few
candidates: the tolerance's floor, the screening and the stability record are what is tested,
and they do not depend on the zoo."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("fastapi", reason="misentry serve needs the serve extra")
pytest.importorskip("onnxruntime", reason="the ONNX Runtime stacks need the onnx extra")
pytest.importorskip("mlserver", reason="the MLServer stack needs the interop extra")

from misentry.data import Pools, get_dataset
from misentry.fingerprint.base import SearchContext
from misentry.fingerprint.methods.misentry import Misentry
from misentry.fingerprint.tolerance import Tolerance
from misentry.models import (
    Record,
    TargetConfig,
    TrainConfig,
    model_from_record,
    save_record,
    train_target,
)
from misentry.serve.mlserver_runtime import start_mlserver
from misentry.serve.oip import create_app_from_record, serve_in_thread
from misentry.verify.onnx import export_onnx
from misentry.verify.stability import check_stability

TARGETS = {
    "mnist5k": TargetConfig("mnist5k", "lenet5", train=TrainConfig(epochs=2, batch_size=64)),
    "mnist5k-color": TargetConfig(
        "mnist5k-color", "resnet20", train=TrainConfig(epochs=1, batch_size=64)
    ),
}
CHEAP = {"zoo": (), "steps": 12, "inner_steps": 1, "refine_rounds": 20, "pool_factor": 2}
N = 4
NOISE_IMAGES = 32
"""The owner's ``val`` images the noise is measured on here (all of them outside the tests)."""


@dataclass(frozen=True)
class Served:
    """A target and every real stack it is served on."""

    name: str
    model: nn.Module
    record: Record
    pools: Pools
    onnx: Path
    serve_url: str
    mlserver_url: str


def fewer_val(pools: Pools) -> Pools:
    val = pools["val"].subset(torch.arange(NOISE_IMAGES))
    return Pools(pools.seed, pools.indices, {**pools.sets, "val": val})


@pytest.fixture(scope="module", params=list(TARGETS))
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    name: str = request.param
    record = train_target(TARGETS[name])
    model = model_from_record(record).eval()
    folder = tmp_path_factory.mktemp(name)
    record_dir = save_record(record, folder / "target")
    pools = fewer_val(get_dataset(record.dataset).pools(record.data_seed))
    onnx = export_onnx(model, tuple(pools["source"].x.shape[1:]), folder / "target.onnx")  # type: ignore[arg-type]
    app = create_app_from_record(record, name="target")
    with serve_in_thread(app) as base, start_mlserver(record_dir, "target", timeout=90.0) as ml:
        yield Served(
            name, model, record, pools, onnx, f"{base}/v2/models/target", f"{ml}/v2/models/target"
        )


@pytest.mark.parametrize("tolerance", list(Tolerance))
def test_the_bundle_of_each_tolerance_holds_on_its_whole_matrix(
    served: Served, tolerance: Tolerance
) -> None:
    context = SearchContext(pools=served.pools, record=served.record, tolerance=tolerance)
    generator = Misentry.profile("strict", **CHEAP)
    bundle = generator.generate(served.model, served.pools["source"], N, seed=0, context=context)
    assert bundle.manifest["tolerance"]["tolerance"] == tolerance.value
    report = check_stability(bundle, served.model, onnx=served.onnx, endpoint=served.serve_url)
    within = [row for row in report.rows if row.within]
    assert {row.kind for row in within} >= {"emulated", "endpoint"}
    assert {row.level for row in within} == {t.value for t in Tolerance if tolerance.covers(t)}
    onnx_rows = [row for row in report.rows if row.kind == "onnxruntime"]
    assert len(onnx_rows) == 4
    assert all(row.changed == 0 for row in onnx_rows if row.error is None)
    assert all(row.error is None for row in onnx_rows)
    assert report.ok, [row for row in within if row.changed or row.error]
    assert all(row.changed == 0 for row in within)
    mlserver = check_stability(bundle, served.model, endpoint=served.mlserver_url, levels=["exact"])
    (row,) = [row for row in mlserver.rows if row.kind == "endpoint"]
    assert row.error is None
    assert row.changed == 0
    if tolerance is not Tolerance.EXACT:  # the floor keeps every margin clear of the noise
        floor = bundle.manifest["tolerance"]["floor"]
        assert min(s["margin"] for s in bundle.manifest["samples"]) >= floor > 0
