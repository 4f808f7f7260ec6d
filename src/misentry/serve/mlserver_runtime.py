"""A model record served by Seldon MLServer (the ``interop`` extra): a server nobody here wrote.

:class:`MisentryRuntime` is an MLServer custom runtime: ``load`` reads the record folder named
by the model settings' ``parameters.uri``; ``predict`` checks the request exactly as
:mod:`misentry.serve.protocol` does and returns the labels through MLServer's numpy codec (so a
1-D label array comes back with shape ``[N, 1]``, as MLServer answers). Optional
``parameters.extra``: ``{"scores": true}`` adds the ``scores`` output, ``{"max_batch": 256}``
caps the batch (default 1024). An imported record is served as the user's server would serve it:
on the input its contract states, by the user's own module (as ``misentry serve`` does).

:func:`write_mlserver_config` writes a folder that ``mlserver start FOLDER`` serves on loopback
(``misentry export --mlserver FOLDER`` writes one) with ``parallel_workers: 0`` (MLServer
1.7.1's inference worker crashes at start under uvloop 0.22+; in-process inference avoids it).
:func:`run_mlserver` runs such a folder in a subprocess, :func:`start_mlserver` writes a
temporary one and runs it.

>>> with start_mlserver("runs/target", "lenet") as base:  # doctest: +SKIP
...     print(f"{base}/v2/models/lenet")
http://127.0.0.1:41234/v2/models/lenet
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from mlserver import MLModel  # type: ignore[import-untyped]
from mlserver.codecs import NumpyCodec  # type: ignore[import-untyped]
from mlserver.errors import MLServerError  # type: ignore[import-untyped]
from mlserver.types import InferenceRequest, InferenceResponse  # type: ignore[import-untyped]
from mlserver.utils import get_model_uri  # type: ignore[import-untyped]
from torch import nn

from misentry.models import load_model
from misentry.serve.protocol import (
    LOOPBACK,
    ModelSignature,
    ProtocolError,
    check_name,
    classify,
    parse_request,
    record_input,
)
from misentry.verify.wire import wire_model

RUNTIME = f"{__name__}.MisentryRuntime"


class MisentryRuntime(MLModel):  # type: ignore[misc]
    """MLServer runtime for one misentry model record (``parameters.uri``: the record folder)."""

    async def load(self) -> bool:
        record_dir = await get_model_uri(self.settings)
        loaded, record = load_model(record_dir)
        model, contract = wire_model(loaded)
        input_shape, num_classes = record_input(record)
        extra: dict[str, Any] = dict(self.settings.parameters.extra or {})
        self._model: nn.Module = model.eval()
        self._signature = ModelSignature(
            contract=contract,
            name=self.name,
            version=self.version,
            input_shape=input_shape,
            num_classes=num_classes,
            scores=bool(extra.get("scores", ModelSignature.scores)),
            max_batch=int(extra.get("max_batch", ModelSignature.max_batch)),
        )
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        try:
            request = parse_request(payload.model_dump(mode="json"), self._signature)
        except ProtocolError as err:
            raise MLServerError(str(err), status_code=err.status) from None
        outputs = classify(self._model, request)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, tensor.numpy()) for name, tensor in outputs.items()
            ],
        )


def write_mlserver_config(
    folder: Path | str,
    record_dir: Path | str,
    name: str,
    port_http: int,
    port_grpc: int,
    port_metrics: int,
) -> Path:
    """Write ``settings.json`` (every listener on 127.0.0.1, ``parallel_workers: 0``) and
    ``model-settings.json`` (this runtime, ``parameters.uri`` the absolute record folder) into
    ``folder`` (created if missing); returns ``folder``."""
    check_name(name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "host": LOOPBACK,
        "http_port": port_http,
        "grpc_port": port_grpc,
        "metrics_port": port_metrics,
        "parallel_workers": 0,
        "debug": False,
    }
    model_settings = {
        "name": name,
        "implementation": RUNTIME,
        "parameters": {"uri": str(Path(record_dir).resolve())},
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2) + "\n")
    return folder


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports free on ``host`` right now (held together while chosen)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


@contextmanager
def start_mlserver(record_dir: Path | str, name: str, *, timeout: float = 60.0) -> Iterator[str]:
    """Run ``mlserver start`` on free loopback ports serving ``record_dir`` as ``name``; yields
    the base URL ``http://127.0.0.1:PORT`` once the model is ready (see :func:`run_mlserver`;
    the folder is temporary)."""
    with tempfile.TemporaryDirectory(prefix="misentry-mlserver-") as tmp:
        folder = write_mlserver_config(tmp, record_dir, name, *free_ports(3))
        with run_mlserver(folder, name, timeout=timeout) as base:
            yield base


@contextmanager
def run_mlserver(
    folder: Path | str, name: str, *, timeout: float = 60.0, command: Sequence[str] | None = None
) -> Iterator[str]:
    """Run ``mlserver start FOLDER`` (``command``, default this interpreter's
    ``-m mlserver.cli.main start FOLDER``) until the model ``name`` is ready; yields the base
    URL ``http://127.0.0.1:PORT`` of the folder's ``settings.json``.

    The server runs in its own process group (its log is ``mlserver.log`` in the folder) and the
    group is stopped when the block exits. RuntimeError, with the log's tail, if it exits early
    or is not ready within ``timeout`` seconds.
    """
    folder = Path(folder)
    port = json.loads((folder / "settings.json").read_text())["http_port"]
    base = f"http://{LOOPBACK}:{port}"
    log_path = folder / "mlserver.log"
    argv = list(command or [sys.executable, "-m", "mlserver.cli.main", "start", str(folder)])
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(process, f"{base}/v2/models/{name}/ready", timeout, log_path)
        yield base
    finally:
        _stop(process)


def _wait_ready(process: subprocess.Popen[bytes], url: str, timeout: float, log_path: Path) -> None:
    stop = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"mlserver exited with status {process.returncode} before the model was "
                f"ready; its log ends:\n{_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet, or the model is still loading (400)
        if time.monotonic() > stop:
            raise RuntimeError(
                f"mlserver did not get ready at {url} within {timeout:g} s; its log ends:\n"
                f"{_tail(log_path)}"
            )
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """End the server's process group: SIGTERM, then SIGKILL after ``grace`` seconds, then
    SIGKILL to anything the leader left in its group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(grace)
            break
        except subprocess.TimeoutExpired:
            continue
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
