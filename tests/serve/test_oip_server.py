"""The Open Inference Protocol server, spoken to over real loopback HTTP (httpx is not a
dependency, so no TestClient): metadata, health, labels equal to the torch model's, and a JSON
4xx for every malformed request."""

from __future__ import annotations

import argparse
import inspect
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("fastapi", reason="misentry serve needs the serve extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="misentry serve needs the serve extra (fastapi, uvicorn)")

from loopback_http import call
from misentry import cli
from misentry.cli.serve import add_serve, is_loopback, serve_command
from misentry.data import ImageSet, to_pixels, to_unit
from misentry.models import (
    RecordError,
    build_model,
    input_spec,
    model_record,
    predict,
    save_record,
)
from misentry.serve import create_app, default_model_name, run_server, serve_in_thread

NAME = "digits-linear"
SHAPE = (1, 8, 8)
MAX_BATCH = 16


def linear_model() -> nn.Module:
    """A seeded linear classifier of 8x8 digits: no training, yet varied labels."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return linear_model()


@pytest.fixture(scope="module")
def base(model: nn.Module) -> Iterator[str]:
    app = create_app(
        model, name=NAME, version="1", num_classes=10, input_shape=SHAPE, max_batch=MAX_BATCH
    )
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def images(digits: ImageSet) -> torch.Tensor:
    return digits.x[:MAX_BATCH]


def request_body(x: torch.Tensor, datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    values = to_pixels(x) if datatype == "UINT8" else x
    tensor = {"name": "input", "shape": list(values.shape), "datatype": datatype}
    tensor["data"] = values.reshape(-1).tolist()
    return {"inputs": [tensor], **extra}


def infer(base: str, document: Any, name: str = NAME) -> tuple[int, Any, str]:
    return call(f"{base}/v2/models/{name}/infer", json.dumps(document).encode())


def labels_of(document: dict[str, Any]) -> list[int]:
    (output,) = [o for o in document["outputs"] if o["name"] == "label"]
    assert output["datatype"] == "INT64"
    assert output["shape"] == [len(output["data"])]
    return list(output["data"])


# --- health and metadata ----------------------------------------------------------------------


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


# --- inference --------------------------------------------------------------------------------


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


# --- refusals ---------------------------------------------------------------------------------


def _one(**overrides: Any) -> dict[str, Any]:
    """A valid one-image FP32 request with fields of its input replaced."""
    tensor: dict[str, Any] = {"name": "input", "shape": [1, *SHAPE], "datatype": "FP32"}
    tensor["data"] = [0.5] * math.prod(SHAPE)
    tensor.update(overrides)
    return {"inputs": [tensor]}


def _json(document: Any) -> bytes:
    return json.dumps(document).encode()


BAD_REQUESTS: dict[str, tuple[bytes, int]] = {
    "not JSON": (b"inputs=1", 400),
    "not UTF-8": (b"\xff\xfe{", 400),
    "empty body": (b"", 400),
    "a JSON array": (b"[]", 400),
    "no inputs": (_json({"outputs": []}), 400),
    "two inputs": (_json({"inputs": _one()["inputs"] * 2}), 400),
    "input not an object": (_json({"inputs": [[0.5]]}), 400),
    "no name": (_json(_one(name=None)), 400),
    "datatype INT32": (_json(_one(datatype="INT32")), 400),
    "datatype missing": (_json(_one(datatype=None)), 400),
    "wrong image shape": (_json(_one(shape=[1, 1, 8, 9], data=[0.5] * 72)), 400),
    "three dimensions": (_json(_one(shape=[1, 8, 8])), 400),
    "shape of strings": (_json(_one(shape=["1", "1", "8", "8"])), 400),
    "empty batch": (_json(_one(shape=[0, *SHAPE], data=[])), 400),
    "too few values": (_json(_one(data=[0.5] * 63)), 400),
    "too many values": (_json(_one(data=[0.5] * 65)), 400),
    "data not a list": (_json(_one(data="0.5")), 400),
    "strings in data": (_json(_one(data=["0.5"] * 64)), 400),
    "booleans in data": (_json(_one(data=[True] * 64)), 400),
    "nested too deep": (_json(_one(data=[[[[[[0.5]]]]]] * 64)), 400),
    "FP32 above 1": (_json(_one(data=[1.5] + [0.5] * 63)), 400),
    "FP32 below 0": (_json(_one(data=[-0.01] + [0.5] * 63)), 400),
    "FP32 NaN": (
        b'{"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", '
        b'"data": [NaN' + b", 0.5" * 63 + b"]}]}",
        400,
    ),
    "UINT8 floats": (_json(_one(datatype="UINT8", data=[0.5] * 64)), 400),
    "UINT8 above 255": (_json(_one(datatype="UINT8", data=[256] + [0] * 63)), 400),
    "UINT8 negative": (_json(_one(datatype="UINT8", data=[-1] + [0] * 63)), 400),
    "a huge integer": (_json(_one(datatype="UINT8", data=[10**30] + [0] * 63)), 400),
    "id not a string": (_json({**_one(), "id": 7}), 400),
    "scores from a label server": (_json({**_one(), "outputs": [{"name": "scores"}]}), 400),
    "batch over max_batch": (
        _json(_one(shape=[MAX_BATCH + 1, *SHAPE], data=[0.5] * 64 * (MAX_BATCH + 1))),
        413,
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_every_bad_request_gets_a_json_4xx_without_internals(base: str, case: str) -> None:
    body, expected = BAD_REQUESTS[case]
    status, answer, text = call(f"{base}/v2/models/{NAME}/infer", body)
    assert status == expected, text
    assert set(answer) == {"error"}
    assert isinstance(answer["error"], str)
    assert answer["error"]
    assert_no_internals(text)


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
    body = _json(_one()) if method == "POST" else None
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
        status, answer, text = infer(url, _one(), name="broken")
        still_up = call(f"{url}/v2/health/live")[0]
    assert status == 500
    assert set(answer) == {"error"}
    assert "secret" not in text
    assert "/srv" not in text
    assert "RuntimeError" not in text
    assert_no_internals(text)
    assert still_up == 200


def assert_no_internals(text: str) -> None:
    assert "Traceback" not in text
    assert not re.search(r'File "[^"]+", line \d+', text)
    assert "misentry/" not in text
    assert "site-packages" not in text


# --- binding and the command line -------------------------------------------------------------


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


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained LeNet-5 digits record: the CLI only needs a loadable model."""
    spec = input_spec("digits")
    model = build_model("lenet5", spec, 0)
    record = model_record(
        model,
        kind="target",
        dataset="digits",
        architecture="lenet5",
        spec=spec,
        data_seed=0,
        model_seed=0,
        params={"note": "untrained, for the serve tests"},
    )
    return save_record(record, tmp_path_factory.mktemp("serve") / "target")


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="misentry")
    add_serve(parser.add_subparsers(), cli._verb)
    return parser


def test_serve_defaults_to_loopback_port_8080_labels_only(record_dir: Path) -> None:
    args = serve_parser().parse_args(["serve", "--model", str(record_dir)])
    assert (args.host, args.port, args.name, args.scores) == ("127.0.0.1", 8080, None, False)
    assert args.handler is serve_command


def test_serve_prints_the_model_url_and_serves_the_record(
    record_dir: Path, images: torch.Tensor, capsys: pytest.CaptureFixture[str]
) -> None:
    from misentry.models import load_model

    args = serve_parser().parse_args(["serve", "--model", str(record_dir)])
    served: list[tuple[Any, str, int]] = []
    assert serve_command(args, runner=lambda app, host, port: served.append((app, host, port))) == 0
    out, err = capsys.readouterr()
    model, record = load_model(record_dir)
    name = default_model_name(record)
    assert name == f"digits-{record.record_id[:16]}"
    assert f"http://127.0.0.1:8080/v2/models/{name}" in out
    assert "warning" not in err
    ((app, host, port),) = served
    assert (host, port) == ("127.0.0.1", 8080)
    with serve_in_thread(app) as url:  # the app handed to the runner serves the record
        status, answer, _ = infer(url, request_body(images), name=name)
    assert status == 200
    assert labels_of(answer) == predict(model, images).tolist()


def test_serve_warns_in_yellow_off_loopback(
    record_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--model", str(record_dir), "--host", "0.0.0.0", "--port", "9000"]
    argv += ["--name", "lenet", "--scores"]
    args = serve_parser().parse_args(argv)
    served: list[tuple[str, int]] = []
    serve_command(args, runner=lambda _app, host, port: served.append((host, port)))
    out, err = capsys.readouterr()
    assert served == [("0.0.0.0", 9000)]
    assert "http://0.0.0.0:9000/v2/models/lenet" in out
    assert "warning" in err
    assert "not on loopback" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["serve"],
        ["serve", "--model", "x", "--port", "0"],
        ["serve", "--model", "x", "--port", "70000"],
        ["serve", "--model", "x", "--name", "a/b"],
        ["serve", "--model", "x", "--name", "-lead"],
    ],
)
def test_serve_rejects_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        serve_parser().parse_args(argv)
    assert exit_info.value.code == 2
    capsys.readouterr()


def test_serve_of_a_missing_record_is_a_record_error(tmp_path: Path) -> None:
    args = serve_parser().parse_args(["serve", "--model", str(tmp_path / "none")])
    with pytest.raises(RecordError):
        serve_command(args, runner=lambda *_: None)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True),
     ("[::1]", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
     ("example.org", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
