"""The Open Inference Protocol server, spoken to over real loopback HTTP (httpx is not a
dependency, so no TestClient): metadata, health, labels equal to the torch model's, JSON errors
for unknown models and endpoints, and the server's binding and lifetime."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from torch import nn

pytest.importorskip("fastapi", reason="misentry serve needs the serve extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="misentry serve needs the serve extra (fastapi, uvicorn)")

from loopback_http import call
from misentry.data import to_pixels, to_unit
from misentry.models import predict
from misentry.serve import create_app, run_server, serve_in_thread
from serve.oipkit import (
    NAME,
    SHAPE,
    as_json,
    assert_no_internals,
    infer,
    labels_of,
    one_image,
    request_body,
)

# --- health and metadata ---------------------------------------------------------------------


def test_health_and_server_metadata(base: str) -> None:
    assert call(f"{base}/v2/health/live")[:2] == (200, {"live": True})
    assert call(f"{base}/v2/health/ready")[:2] == (200, {"ready": True})
    status, meta, _ = call(f"{base}/v2")
    assert status == 200
    assert meta["name"] == "misentry"
    assert isinstance(meta["version"], str)
    assert meta["extensions"] == []


@pytest.mark.parametrize("path", [f"/v2/models/{NAME}", f"/v2/models/{NAME}/versions/1"])
def test_model_metadata(base: str, path: str) -> None:
    status, meta, _ = call(base + path)
    assert status == 200
    assert meta["name"] == NAME
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "pytorch"
    (tensor,) = meta["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("input", "FP32", [-1, *SHAPE])
    assert meta["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [-1]}]


@pytest.mark.parametrize(
    "path", [f"/v2/models/{NAME}/ready", f"/v2/models/{NAME}/versions/1/ready"]
)
def test_model_ready(base: str, path: str) -> None:
    assert call(base + path)[:2] == (200, {"name": NAME, "ready": True})


# --- inference -------------------------------------------------------------------------------


def test_fp32_labels_equal_the_torch_models(
    base: str, model: nn.Module, images: torch.Tensor
) -> None:
    expected = predict(model, images).tolist()
    assert len(set(expected)) >= 3, "the test model must give varied labels"
    status, answer, _ = infer(base, request_body(images, id="req-7"))
    assert status == 200
    assert labels_of(answer) == expected
    assert answer["model_name"] == NAME
    assert answer["model_version"] == "1"
    assert answer["id"] == "req-7"


def test_uint8_labels_equal_the_torch_models_on_the_same_pixels(
    base: str, model: nn.Module, images: torch.Tensor
) -> None:
    expected = predict(model, to_unit(to_pixels(images))).tolist()
    status, answer, _ = infer(base, request_body(images, "UINT8"))
    assert status == 200
    assert labels_of(answer) == expected


def test_versioned_infer_nhwc_and_nested_data_give_the_same_labels(
    base: str, model: nn.Module, images: torch.Tensor
) -> None:
    expected = predict(model, images).tolist()
    channels_last = images.permute(0, 2, 3, 1)
    nested = {"name": "x", "shape": list(channels_last.shape), "datatype": "FP32"}
    nested["data"] = channels_last.tolist()  # nested lists, NHWC
    status, answer, _ = call(
        f"{base}/v2/models/{NAME}/versions/1/infer", json.dumps({"inputs": [nested]}).encode()
    )
    assert status == 200
    assert labels_of(answer) == expected


def test_scores_server_gives_probabilities_whose_argmax_is_the_label(
    model: nn.Module, images: torch.Tensor
) -> None:
    app = create_app(model, name="s", num_classes=10, input_shape=SHAPE, scores=True)
    with serve_in_thread(app) as url:
        meta = call(f"{url}/v2/models/s")[1]
        status, answer, _ = infer(url, request_body(images), name="s")
        only = infer(url, request_body(images, outputs=[{"name": "scores"}]), name="s")[1]
    assert [o["name"] for o in meta["outputs"]] == ["label", "scores"]
    assert status == 200
    label, scores = answer["outputs"]
    assert scores["shape"] == [len(images), 10]
    probs = torch.tensor(scores["data"]).reshape(-1, 10)
    assert torch.allclose(probs.sum(1), torch.ones(len(images)), atol=1e-5)
    assert probs.argmax(1).tolist() == label["data"] == predict(model, images).tolist()
    assert [o["name"] for o in only["outputs"]] == ["scores"]


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/v2/models/nope", 404),
        ("GET", "/v2/models/nope/ready", 404),
        ("POST", "/v2/models/nope/infer", 404),
        ("GET", f"/v2/models/{NAME}/versions/2", 404),
        ("POST", f"/v2/models/{NAME}/versions/2/infer", 404),
        ("GET", "/v3/whatever", 404),
        ("GET", f"/v2/models/{NAME}/infer", 405),
        ("GET", "/docs", 404),
    ],
)
def test_unknown_models_and_endpoints_get_json_errors(
    base: str, method: str, path: str, expected: int
) -> None:
    body = as_json(one_image()) if method == "POST" else None
    status, answer, text = call(base + path, body, method)
    assert status == expected
    assert set(answer) == {"error"}
    assert_no_internals(text)


def test_a_body_over_the_size_limit_is_refused_before_parsing(model: nn.Module) -> None:
    app = create_app(model, name="small", num_classes=10, input_shape=SHAPE, max_batch=1)
    with serve_in_thread(app) as url:
        status, answer, _ = call(f"{url}/v2/models/small/infer", b" " * 100_000)
    assert status == 413
    assert "exceeds" in answer["error"]


class Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("secret detail at /srv/models/weights.bin")


def test_an_internal_failure_is_a_500_with_a_fixed_message() -> None:
    app = create_app(Broken(), name="broken", num_classes=10, input_shape=SHAPE)
    with serve_in_thread(app, log_level="critical") as url:
        status, answer, text = infer(url, one_image(), name="broken")
        still_up = call(f"{url}/v2/health/live")[0]
    assert status == 500
    assert set(answer) == {"error"}
    assert "secret" not in text
    assert "/srv" not in text
    assert "RuntimeError" not in text
    assert_no_internals(text)
    assert still_up == 200


# --- binding ---------------------------------------------------------------------------------


def test_servers_bind_loopback_by_default(base: str) -> None:
    assert base.startswith("http://127.0.0.1:")
    assert inspect.signature(serve_in_thread).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(run_server).parameters["host"].default == "127.0.0.1"


def test_serve_in_thread_stops_the_server_on_exit(model: nn.Module) -> None:
    app = create_app(model, name="m", num_classes=10, input_shape=SHAPE)
    with serve_in_thread(app) as url:
        assert call(f"{url}/v2/health/live")[0] == 200
    with pytest.raises(ConnectionRefusedError):
        call(f"{url}/v2/health/live", timeout=2)


def test_serve_in_thread_reports_a_port_already_taken(model: nn.Module, base: str) -> None:
    app = create_app(model, name="m", num_classes=10, input_shape=SHAPE)
    taken = int(base.rsplit(":", 1)[1])
    with pytest.raises(RuntimeError, match="did not start"), serve_in_thread(app, port=taken):
        pass
