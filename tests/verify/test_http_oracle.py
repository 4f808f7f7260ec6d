"""HttpOracle against a tiny Open Inference Protocol server that misbehaves on request.

The server (stdlib ``ThreadingHTTPServer`` on 127.0.0.1) serves one model, ``tiny``, whose label
is a position-weighted pixel sum mod 10, so a layout or scaling mix-up changes the labels. It
checks the request's datatype, layout and exact float32 pixel values, counts TCP connections and
requests, and can be switched to a fault. Every fault test asserts the error's reason and that it
came back in bounded time.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
import torch

from misentry.models.oracle import OracleError
from misentry.verify.http import HttpOracle, parse_model_url

NUM_CLASSES = 10


def rule_labels(images: torch.Tensor) -> torch.Tensor:
    """The served model: a position-weighted pixel sum mod 10 of (N, C, H, W) uint8 images."""
    flat = images.reshape(images.shape[0], -1).to(torch.int64)
    return (flat * torch.arange(1, flat.shape[1] + 1)).sum(1) % NUM_CLASSES


@dataclass
class ServerState:
    """What the server expects and does; the counters are what it saw."""

    datatype: str = "FP32"
    layout: str = "NCHW"
    channels: int = 3
    output: str = "labels"  # see _outputs
    fault: str = "none"
    fail_first: int = 0  # answer 500 to this many requests first
    delay: float = 0.0  # seconds before answering (fault "slow")
    token: str | None = None
    ready: bool = True
    connections: int = 0
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client that gave up makes the slow handler's write fail, as intended."""


class _OipHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 3  # an idle kept-alive connection is closed after this many seconds
    wbufsize = 1 << 16  # headers and body in one send (no Nagle / delayed-ACK stall)
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.state.lock:
            self.server.state.connections += 1

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, document: Any, *, raw: bytes | None = None) -> None:
        body = raw if raw is not None else json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        state = self.server.state
        state.paths.append(self.path)
        if self.path == "/v2/health/ready":
            self.reply(200 if state.ready else 503, {} if state.ready else {"error": "loading"})
        elif self.path == "/v2/models/tiny":
            meta = {"name": "tiny", "versions": ["1"], "platform": "test", "inputs": []}
            self.reply(200, meta)
        else:
            self.reply(404, {"error": f"Model {self.path} not found"})

    def do_POST(self) -> None:
        state = self.server.state
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with state.lock:
            state.paths.append(self.path)
            fail = state.fail_first > 0
            state.fail_first -= 1
        if state.token is not None and self.headers["Authorization"] != f"Bearer {state.token}":
            return self.reply(401, {"error": "missing or wrong token"})
        if self.path not in ("/v2/models/tiny/infer", "/v2/models/tiny/versions/3/infer"):
            return self.reply(404, {"error": "Model nope not found"})
        if fail or state.fault == "500":
            return self.reply(500, {"error": "boom"})
        if state.fault == "503":
            return self.reply(503, {"error": "overloaded"})
        if state.fault == "drop":
            self.close_connection = True
            return None
        if state.fault == "slow":
            time.sleep(state.delay)
        try:
            images = self.decode(json.loads(body)["inputs"][0])
        except ValueError as err:
            return self.reply(400, {"error": str(err)})
        if state.fault == "bad_json":
            return self.reply(200, None, raw=b"<html>oops</html>")
        self.reply(200, {"model_name": "tiny", "outputs": self.outputs(rule_labels(images))})
        if state.fault == "close_after":  # as a server's keep-alive timeout would, unannounced
            self.close_connection = True
        return None

    def decode(self, tensor: dict[str, Any]) -> torch.Tensor:
        """The request's images as uint8 (N, C, H, W), or ValueError saying what is wrong."""
        state = self.server.state
        if tensor["name"] != "input":
            raise ValueError(f"unknown input {tensor['name']!r}")
        if tensor["datatype"] != state.datatype:
            raise ValueError(f"input must be {state.datatype}, not {tensor['datatype']}")
        shape = tensor["shape"]
        channel_axis = 1 if state.layout == "NCHW" else 3
        if len(shape) != 4 or shape[channel_axis] != state.channels:
            raise ValueError(f"input must be {state.layout} with {state.channels} channels")
        data = np.asarray(tensor["data"])
        if state.datatype == "FP32":
            pixels = np.rint(data * 255.0)
            exact = np.float32(data) == pixels.astype(np.float32) / np.float32(255.0)
            if not exact.all():
                raise ValueError("FP32 data must be float32 pixel / 255")
        else:
            pixels = data
        if pixels.min() < 0 or pixels.max() > 255 or not (pixels == np.rint(pixels)).all():
            raise ValueError("pixels must be integers in 0..255")
        images = torch.from_numpy(pixels.astype(np.uint8)).reshape(shape)
        return images if state.layout == "NCHW" else images.permute(0, 3, 1, 2)

    def outputs(self, labels: torch.Tensor) -> Any:
        state = self.server.state
        values: list[Any] = labels.tolist()
        if state.fault == "short":
            values = values[:-1]
        if state.fault == "long":
            values = [*values, 0]
        if state.fault == "out_of_range":
            values[0] = NUM_CLASSES + 2
        if state.fault == "fractional":
            values[0] = 1.5
        n = len(values)
        if state.fault == "no_outputs":
            return None
        if state.fault == "empty_outputs":
            return []
        if state.fault == "no_data":
            return [{"name": "label", "shape": [n], "datatype": "INT64"}]
        if state.fault == "bytes":
            return [{"name": "label", "shape": [n], "datatype": "BYTES", "data": ["a"] * n}]
        if state.output == "scores":
            scores = [-abs(c - v) for v in values for c in range(NUM_CLASSES)]  # argmax: v
            shape = [n, NUM_CLASSES] if state.fault != "bad_shape" else [n, NUM_CLASSES + 1]
            return [{"name": "scores", "shape": shape, "datatype": "FP32", "data": scores}]
        if state.fault == "wide":
            return [{"name": "label", "shape": [n // 2, 2], "datatype": "INT64", "data": values}]
        formats: dict[str, dict[str, Any]] = {
            # MLServer's numpy codec: a 1-D array comes back as [N, 1] INT64
            "labels": {"shape": [n, 1], "datatype": "INT64", "data": values},
            "labels_flat": {"shape": [n], "datatype": "INT32", "data": values},
            "labels_nested": {"shape": [n, 1], "datatype": "INT64", "data": [[v] for v in values]},
            "labels_float": {"shape": [n], "datatype": "FP32", "data": [float(v) for v in values]},
        }
        probe = {"name": "probe", "shape": [1], "datatype": "FP32", "data": [0.5]}
        return [probe, {"name": "label", **formats[state.output]}]


@dataclass
class FaultServer:
    state: ServerState
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/models/tiny"

    @property
    def infers(self) -> int:
        return sum(path.endswith("/infer") for path in self.state.paths)

    def oracle(self, **kwargs: Any) -> HttpOracle:
        kwargs.setdefault("num_classes", NUM_CLASSES)
        kwargs.setdefault("output_name", "label")
        kwargs.setdefault("backoff", 0.01)
        return HttpOracle(kwargs.pop("url", self.url), **kwargs)


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    server = _Server(("127.0.0.1", 0), _OipHandler)
    server.state = ServerState()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield FaultServer(server.state, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def http_images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8, generator=gen)


def failure(oracle: HttpOracle, images: torch.Tensor) -> tuple[OracleError, float]:
    """The error a query raises, and the seconds it took to raise it."""
    start = time.monotonic()
    with pytest.raises(OracleError) as info:
        oracle.labels(images)
    oracle.close()
    return info.value, time.monotonic() - start


# --- answers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("served", "output", "output_name"),
    [
        ("labels", "labels", "label"),
        ("labels_flat", "labels", "label"),
        ("labels_nested", "labels", "label"),
        ("labels_float", "labels", "label"),
        ("scores", "scores", None),
    ],
)
def test_labels_match_the_served_model(
    fault_server: FaultServer,
    http_images: torch.Tensor,
    served: str,
    output: str,
    output_name: str | None,
) -> None:
    fault_server.state.output = served
    with fault_server.oracle(output=output, output_name=output_name, batch_size=4) as oracle:
        labels = oracle.labels(http_images)
    assert labels.dtype == torch.int64
    assert torch.equal(labels, rule_labels(http_images))
    assert fault_server.infers == 3
    assert oracle.queries == 10


@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_datatype_and_layout_reach_the_server(
    fault_server: FaultServer, http_images: torch.Tensor, datatype: str, layout: str
) -> None:
    fault_server.state.datatype, fault_server.state.layout = datatype, layout
    right = fault_server.oracle(datatype=datatype, layout=layout)
    assert torch.equal(right.labels(http_images), rule_labels(http_images))
    other = {"FP32": "UINT8", "UINT8": "FP32"}[datatype]
    error, seconds = failure(fault_server.oracle(datatype=other, layout=layout), http_images)
    assert error.reason == "server"
    assert f"must be {datatype}" in str(error)
    assert "HTTP 400" in str(error)
    assert seconds < 2


def test_a_versioned_address_posts_to_that_version(
    fault_server: FaultServer, http_images: torch.Tensor
) -> None:
    oracle = fault_server.oracle(url=fault_server.url + "/versions/3")
    assert torch.equal(oracle.labels(http_images), rule_labels(http_images))
    assert fault_server.state.paths == ["/v2/models/tiny/versions/3/infer"]


def test_the_auth_header_is_sent(fault_server: FaultServer, http_images: torch.Tensor) -> None:
    fault_server.state.token = "s3cret"
    oracle = fault_server.oracle(headers={"Authorization": "Bearer s3cret"})
    assert torch.equal(oracle.labels(http_images), rule_labels(http_images))
    error, seconds = failure(fault_server.oracle(), http_images)
    assert error.reason == "server"
    assert seconds < 2
    assert "401" in str(error)
    assert "wrong token" in str(error)
    assert fault_server.infers == 2  # one each: a 4xx is never retried


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "text"), [("500", "boom"), ("503", "overloaded")])
@pytest.mark.parametrize("retries", [0, 2])
def test_5xx_is_retried_then_a_server_error(
    fault_server: FaultServer, http_images: torch.Tensor, fault: str, text: str, retries: int
) -> None:
    fault_server.state.fault = fault
    error, seconds = failure(fault_server.oracle(retries=retries), http_images)
    assert error.reason == "server"
    assert f"HTTP {fault}" in str(error)
    assert text in str(error)
    assert fault_server.infers == 1 + retries
    assert seconds < 2


def test_500_then_ok_succeeds_after_retries(
    fault_server: FaultServer, http_images: torch.Tensor
) -> None:
    fault_server.state.fail_first = 2
    oracle = fault_server.oracle(retries=2)
    assert torch.equal(oracle.labels(http_images), rule_labels(http_images))
    assert fault_server.infers == 3


def test_a_404_is_a_server_error_without_retry(
    fault_server: FaultServer, http_images: torch.Tensor
) -> None:
    url = fault_server.url.replace("tiny", "nope")
    error, seconds = failure(fault_server.oracle(url=url, retries=3), http_images)
    assert error.reason == "server"
    assert "HTTP 404" in str(error)
    assert "Model nope not found" in str(error)
    assert fault_server.infers == 1
    assert seconds < 2


def test_a_slow_answer_is_a_timeout_without_retry(
    fault_server: FaultServer, http_images: torch.Tensor
) -> None:
    fault_server.state.fault, fault_server.state.delay = "slow", 1.0
    error, seconds = failure(fault_server.oracle(timeout=0.3, retries=2), http_images)
    assert error.reason == "timeout"
    assert "0.3 s" in str(error)
    assert 0.25 < seconds < 3
    assert fault_server.infers == 1


def test_a_closed_port_is_a_transport_error(http_images: torch.Tensor) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v2/models/tiny"
    error, seconds = failure(HttpOracle(url, retries=2, backoff=0.01), http_images)
    assert error.reason == "transport"
    assert "refused" in str(error)
    assert "3 tries" in str(error)
    assert seconds < 2


def test_a_dropped_connection_is_retried_on_a_new_one(
    fault_server: FaultServer, http_images: torch.Tensor
) -> None:
    fault_server.state.fault = "drop"
    error, seconds = failure(fault_server.oracle(retries=1), http_images)
    assert error.reason == "transport"
    assert "closed the connection" in str(error)
    assert (fault_server.infers, fault_server.state.connections) == (2, 2)
    assert seconds < 2


@pytest.mark.parametrize(
    ("fault", "options", "reason", "text"),
    [
        ("bad_json", {}, "malformed", "not JSON"),
        ("no_outputs", {}, "malformed", "no 'outputs'"),
        ("empty_outputs", {}, "malformed", "no 'outputs'"),
        ("no_data", {}, "malformed", "no data"),
        ("none", {"output_name": "logits"}, "malformed", "no output named 'logits'"),
        ("bytes", {}, "malformed", "BYTES"),
        ("fractional", {}, "malformed", "integers"),
        ("wide", {}, "malformed", "output='scores'"),
        ("bad_shape", {"output": "scores", "output_name": None}, "malformed", "values"),
        ("short", {}, "short", "9 labels came back for 10"),
        ("long", {}, "short", "11 labels came back for 10"),
        ("out_of_range", {}, "out_of_range", "outside [0, 10)"),
    ],
)
def test_a_bad_answer_is_reported_not_retried(
    fault_server: FaultServer,
    http_images: torch.Tensor,
    fault: str,
    options: dict[str, Any],
    reason: str,
    text: str,
) -> None:
    fault_server.state.fault = fault
    if options.get("output") == "scores":
        fault_server.state.output = "scores"
    error, seconds = failure(fault_server.oracle(retries=2, **options), http_images)
    assert error.reason == reason
    assert text in str(error)
    assert fault_server.infers == 1
    assert seconds < 2


def test_backoff_does_not_sleep_past_the_deadline(
    fault_server: FaultServer, http_images: torch.Tensor
) -> None:
    fault_server.state.fault = "500"
    oracle = fault_server.oracle(retries=5, backoff=0.5, deadline=0.3)
    error, seconds = failure(oracle, http_images)
    assert error.reason == "server"
    assert "deadline of 0.3 s" in str(error)
    assert fault_server.infers == 1
    assert seconds < 0.4


# --- the connection -------------------------------------------------------------------------


def test_one_connection_carries_many_requests(
    fault_server: FaultServer, http_images: torch.Tensor
) -> None:
    oracle = fault_server.oracle(batch_size=2)
    first = oracle.labels(http_images)
    second = oracle.labels(http_images[:4])
    assert torch.equal(first, rule_labels(http_images))
    assert torch.equal(second, first[:4])
    assert fault_server.infers == 7
    assert fault_server.state.connections == 1


def test_the_connection_is_reopened_after_an_error(
    fault_server: FaultServer, http_images: torch.Tensor
) -> None:
    oracle = fault_server.oracle(retries=0)
    fault_server.state.fault = "drop"
    with pytest.raises(OracleError, match="closed the connection"):
        oracle.labels(http_images)
    fault_server.state.fault = "none"
    assert torch.equal(oracle.labels(http_images), rule_labels(http_images))
    assert fault_server.state.connections == 2


def test_a_keep_alive_closed_by_the_server_is_reopened_at_once(
    fault_server: FaultServer, http_images: torch.Tensor
) -> None:
    fault_server.state.fault = "close_after"
    oracle = fault_server.oracle(retries=0)
    for _ in range(3):
        assert torch.equal(oracle.labels(http_images), rule_labels(http_images))
    assert fault_server.state.connections == 3
    assert fault_server.infers == 3


# --- health, addresses, arguments -----------------------------------------------------------


def test_health_returns_the_model_metadata(fault_server: FaultServer) -> None:
    oracle = fault_server.oracle()
    assert oracle.health()["name"] == "tiny"
    assert fault_server.state.paths == ["/v2/health/ready", "/v2/models/tiny"]
    assert oracle.queries == 0


def test_health_reports_a_server_that_is_not_ready(fault_server: FaultServer) -> None:
    fault_server.state.ready = False
    start = time.monotonic()
    with pytest.raises(OracleError, match=r"not ready.*loading") as info:
        fault_server.oracle(retries=1).health()
    assert info.value.reason == "server"
    assert time.monotonic() - start < 2
    fault_server.state.ready = True
    unknown = fault_server.oracle(url=fault_server.url.replace("tiny", "nope"))
    with pytest.raises(OracleError, match="404") as info:
        unknown.health()
    assert info.value.reason == "server"


def test_describe_is_the_url(fault_server: FaultServer) -> None:
    assert fault_server.oracle().describe() == fault_server.url
    assert fault_server.oracle(url=fault_server.url + "/").describe() == fault_server.url


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("http://127.0.0.1:8080/v2/models/tiny", ("http", "127.0.0.1", 8080, "", "tiny", None)),
        ("https://models.example/v2/models/m/", ("https", "models.example", 443, "", "m", None)),
        ("http://h/gw/a/v2/models/m/versions/2", ("http", "h", 80, "/gw/a", "m", "2")),
        ("http://[::1]:9000/v2/models/m", ("http", "::1", 9000, "", "m", None)),
    ],
)
def test_model_addresses_are_parsed(url: str, parsed: tuple[Any, ...]) -> None:
    a = parse_model_url(url)
    assert (a.scheme, a.host, a.port, a.prefix, a.model, a.version) == parsed


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("ftp://h/v2/models/m", "not an http(s) URL"),
        ("http:///v2/models/m", "names no host"),
        ("http://h:99999/v2/models/m", "invalid port"),
        ("http://user:pw@h/v2/models/m", "credentials"),
        ("http://h/v2/models/m?x=1", "query"),
        ("http://h/v2/models", "not a model address"),
        ("http://h/models/m", "not a model address"),
        ("http://h/v2/models/m/infer", "without /infer"),
        ("http://h/v2/models/m/versions/", "not a model address"),
    ],
)
def test_a_bad_address_is_a_clear_value_error(url: str, text: str) -> None:
    with pytest.raises(ValueError, match="HttpOracle") as info:
        HttpOracle(url)
    assert text in str(info.value)


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"datatype": "FP16"}, "datatype must be one of FP32, UINT8"),
        ({"layout": "CHW"}, "layout must be one of"),
        ({"output": "probs"}, "output must be one of"),
        ({"timeout": 0}, "timeout must be positive"),
        ({"retries": -1}, "retries must be >= 0"),
        ({"headers": {"X-A": "b\r\nX-B: c"}}, "line break"),
    ],
)
def test_bad_arguments_are_value_errors(options: dict[str, Any], text: str) -> None:
    with pytest.raises(ValueError, match=text.replace("(", r"\(")):
        HttpOracle("http://h/v2/models/m", **options)
