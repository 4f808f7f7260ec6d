"""A tiny Open Inference Protocol server that misbehaves on request, for the HttpOracle tests.

The server (stdlib ``ThreadingHTTPServer`` on 127.0.0.1) serves one model, ``tiny``, whose label
is a position-weighted pixel sum mod 10, so a layout or scaling mix-up changes the labels. It
checks the request's datatype, layout and exact float32 pixel values, counts TCP connections and
requests, and can be switched to a fault (:attr:`ServerState.fault`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
import torch

from misentry.models.oracle import OracleError
from misentry.verify.http import HttpOracle

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
    output: str = "labels"  # see OipHandler.outputs
    fault: str = "none"
    fail_first: int = 0  # answer 500 to this many requests first
    delay: float = 0.0  # seconds before answering (fault "slow")
    token: str | None = None
    ready: bool = True
    connections: int = 0
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client that gave up makes the slow handler's write fail, as intended."""


class OipHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 3  # an idle kept-alive connection is closed after this many seconds
    wbufsize = 1 << 16  # headers and body in one send (no Nagle / delayed-ACK stall)
    server: QuietServer

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


@contextmanager
def running_fault_server() -> Iterator[FaultServer]:
    """A fault server on a free loopback port, shut down when the block exits."""
    server = QuietServer(("127.0.0.1", 0), OipHandler)
    server.state = ServerState()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield FaultServer(server.state, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def failure(oracle: HttpOracle, images: torch.Tensor) -> tuple[OracleError, float]:
    """The error a query raises, and the seconds it took to raise it."""
    start = time.monotonic()
    with pytest.raises(OracleError) as info:
        oracle.labels(images)
    oracle.close()
    return info.value, time.monotonic() - start
