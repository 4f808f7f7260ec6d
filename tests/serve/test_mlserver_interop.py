"""A real MLServer (Seldon, 1.7) serving a trained digits record through MisentryRuntime: its
labels over the Open Inference Protocol equal the torch model's, and it refuses bad requests as
our own server does. Skipped when the ``interop`` extra (mlserver) is not installed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("mlserver", reason="the MLServer interop test needs the interop extra")

from loopback_http import call
from misentry.data import ImageSet, Pools, to_pixels, to_unit
from misentry.models import (
    Record,
    model_from_record,
    predict,
    save_record,
)
from misentry.serve.mlserver_runtime import start_mlserver, write_mlserver_config

NAME = "digits-target"


@pytest.fixture(scope="module")
def record_dir(record: Record, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_record(record, tmp_path_factory.mktemp("mlserver") / "target")


@pytest.fixture(scope="module")
def server(record_dir: Path) -> Iterator[tuple[str, float]]:
    """(base URL, seconds from launch to model ready)."""
    started = time.perf_counter()
    with start_mlserver(record_dir, NAME, timeout=60.0) as base:
        yield base, time.perf_counter() - started


@pytest.fixture(scope="module")
def images(digits_pools: Pools) -> torch.Tensor:
    test: ImageSet = digits_pools["test"]
    return test.x[:64]


def post(url: str, document: Any) -> tuple[int, Any]:
    status, answer, _ = call(url, json.dumps(document).encode())
    return status, answer


def body(x: torch.Tensor, datatype: str = "FP32") -> dict[str, Any]:
    values = to_pixels(x) if datatype == "UINT8" else x
    return {
        "inputs": [
            {
                "name": "input",
                "shape": list(values.shape),
                "datatype": datatype,
                "data": values.reshape(-1).tolist(),
            }
        ]
    }


def test_mlserver_starts_on_loopback_quickly(server: tuple[str, float]) -> None:
    base, seconds = server
    assert base.startswith("http://127.0.0.1:")
    assert seconds < 60
    assert call(f"{base}/v2/models/{NAME}")[1]["name"] == NAME


@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
def test_mlserver_labels_equal_the_torch_models(
    server: tuple[str, float], record: Record, images: torch.Tensor, datatype: str
) -> None:
    model = model_from_record(record)
    sent = to_unit(to_pixels(images)) if datatype == "UINT8" else images
    expected = predict(model, sent).tolist()
    assert len(set(expected)) >= 5
    status, answer = post(f"{server[0]}/v2/models/{NAME}/infer", body(images, datatype))
    assert status == 200
    (output,) = answer["outputs"]
    assert output["name"] == "label"
    assert output["datatype"] == "INT64"
    assert output["shape"] == [len(images), 1]  # MLServer's numpy codec keeps a column
    assert output["data"] == expected


@pytest.mark.parametrize(
    ("name", "document", "expected"),
    [
        (NAME, {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                            "data": [2.0] * 64}]}, 400),
        (NAME, {"inputs": [{"name": "input", "shape": [1, 1, 8, 9], "datatype": "FP32",
                            "data": [0.5] * 72}]}, 400),
        ("nope", {"inputs": []}, 404),
    ],
)  # fmt: skip
def test_mlserver_refuses_bad_requests_with_json_errors(
    server: tuple[str, float], name: str, document: Any, expected: int
) -> None:
    status, answer = post(f"{server[0]}/v2/models/{name}/infer", document)
    assert status == expected
    assert isinstance(answer["error"], str)


def test_mlserver_stops_with_the_context(record_dir: Path) -> None:
    with start_mlserver(record_dir, "second") as base:
        assert call(f"{base}/v2/health/live", timeout=5)[0] == 200
    with pytest.raises(ConnectionRefusedError):
        call(f"{base}/v2/health/live", timeout=2)


def test_config_binds_loopback_without_parallel_workers(tmp_path: Path, record_dir: Path) -> None:
    folder = write_mlserver_config(tmp_path, record_dir, NAME, 18080, 18081, 18082)
    settings = json.loads((folder / "settings.json").read_text())
    model = json.loads((folder / "model-settings.json").read_text())
    assert settings["host"] == "127.0.0.1"
    assert settings["parallel_workers"] == 0
    assert (settings["http_port"], settings["grpc_port"], settings["metrics_port"]) == (
        18080,
        18081,
        18082,
    )
    assert model["implementation"] == "misentry.serve.mlserver_runtime.MisentryRuntime"
    assert Path(model["parameters"]["uri"]) == record_dir.resolve()


def test_a_base_url_finds_the_model_in_mlservers_repository_index(
    server: tuple[str, float],
) -> None:
    from misentry.verify.discovery import resolve_endpoint

    base, _ = server
    assert resolve_endpoint(base) == f"{base}/v2/models/{NAME}"
