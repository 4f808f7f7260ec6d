"""An Open Inference Protocol (KServe V2) REST server for one model, on FastAPI and uvicorn.

Endpoints: ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2`` (server metadata),
``GET /v2/models/{name}[/versions/{v}]`` (model metadata), ``GET .../ready`` and
``POST .../infer``. What an inference request must hold is in :mod:`misentry.serve.protocol`.
Every refusal is a 4xx answer ``{"error": "..."}``; an unexpected failure is a 500 with a fixed
message (the traceback goes to the server's log, never to the client). There is no
authentication: the server binds 127.0.0.1 unless told otherwise.

>>> app = create_app(model, name="lenet", num_classes=10, input_shape=(1, 28, 28))
>>> with serve_in_thread(app) as base:  # doctest: +SKIP
...     print(f"{base}/v2/models/lenet")
http://127.0.0.1:40123/v2/models/lenet
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import nn

from misentry import __version__
from misentry.models import InputContract, Record, model_from_record
from misentry.serve.protocol import (
    LOOPBACK,
    ModelSignature,
    ProtocolError,
    infer,
    parse_body,
    parse_request,
    record_input,
)
from misentry.verify.wire import wire_model

SERVER_NAME = "misentry"
_INTERNAL_ERROR = "internal server error; the server log has the details"


def create_app(
    model: nn.Module,
    *,
    name: str,
    version: str | None = None,
    num_classes: int,
    input_shape: tuple[int, int, int],
    scores: bool = ModelSignature.scores,
    max_batch: int = ModelSignature.max_batch,
    contract: InputContract | None = None,
) -> FastAPI:
    """An OIP REST app that serves ``model`` (put in eval mode) under ``name``.

    Arguments:
        model: a classifier of float images in [0, 1], NCHW; with a ``contract``, of what the
            contract makes of them (the values, in its layout).
        name: the model's name in the URL (letters, digits, ``_ . -``).
        version: the model's version; None offers no ``/versions/{v}`` paths.
        num_classes: number of classes.
        input_shape: (C, H, W) of one image.
        scores: also offer the ``scores`` output (softmax probabilities); labels only by default.
        max_batch: most images per request (default 1024); more is refused with 413.
        contract: the input contract of what ``model`` takes (None: the identity).
    """
    signature = ModelSignature(
        name=name,
        version=version,
        input_shape=input_shape,
        num_classes=num_classes,
        scores=scores,
        max_batch=max_batch,
        contract=contract or InputContract(),
    )
    model.eval()
    run_inference = _inference(model, signature)
    app = FastAPI(
        title=f"misentry OIP server: {name}",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    _add_error_handlers(app)
    _add_server_routes(app)
    _add_model_routes(app, signature)
    _add_infer_routes(app, signature, run_inference)
    return app


def _inference(model: nn.Module, signature: ModelSignature) -> Callable[[bytes], dict[str, Any]]:
    """What ``POST .../infer`` does with a request body: check it and run ``model`` on it."""
    lock = threading.Lock()  # one forward pass at a time: torch already uses every core

    def run_inference(body: bytes) -> dict[str, Any]:
        request = parse_request(parse_body(body), signature)
        with lock:
            return infer(model, request, signature)

    return run_inference


def _add_server_routes(app: FastAPI) -> None:
    """Server health and metadata: ``/v2/health/live``, ``/v2/health/ready``, ``/v2``."""

    @app.get("/v2/health/live")
    def live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> dict[str, Any]:
        return {"ready": True}

    @app.get("/v2")
    def server_metadata() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": []}


def _add_model_routes(app: FastAPI, signature: ModelSignature) -> None:
    """The model's metadata and readiness, with and without its version, and the repository
    index (the model repository extension's ``POST /v2/repository/index``: the one model, ready)
    so that a client can discover the model's name."""

    @app.post("/v2/repository/index")
    def repository_index() -> list[dict[str, Any]]:
        entry = {"name": signature.name, "state": "READY"}
        if signature.version is not None:
            entry["version"] = signature.version
        return [entry]

    @app.get("/v2/models/{model_name}")
    def model_metadata(model_name: str) -> dict[str, Any]:
        _check_model(signature, model_name, None)
        return signature.metadata()

    @app.get("/v2/models/{model_name}/versions/{model_version}")
    def version_metadata(model_name: str, model_version: str) -> dict[str, Any]:
        _check_model(signature, model_name, model_version)
        return signature.metadata()

    @app.get("/v2/models/{model_name}/ready")
    def model_ready(model_name: str) -> dict[str, Any]:
        _check_model(signature, model_name, None)
        return {"name": signature.name, "ready": True}

    @app.get("/v2/models/{model_name}/versions/{model_version}/ready")
    def version_ready(model_name: str, model_version: str) -> dict[str, Any]:
        _check_model(signature, model_name, model_version)
        return {"name": signature.name, "ready": True}


def _add_infer_routes(
    app: FastAPI, signature: ModelSignature, run_inference: Callable[[bytes], dict[str, Any]]
) -> None:
    """``POST .../infer``, with and without the model's version: the body is read (up to the
    size limit) on the event loop and inferred in a worker thread."""

    @app.post("/v2/models/{model_name}/infer")
    async def model_infer(model_name: str, request: Request) -> dict[str, Any]:
        _check_model(signature, model_name, None)
        body = await _read_body(request, signature.max_body_bytes)
        return await run_in_threadpool(run_inference, body)

    @app.post("/v2/models/{model_name}/versions/{model_version}/infer")
    async def version_infer(model_name: str, model_version: str, request: Request) -> Any:
        _check_model(signature, model_name, model_version)
        body = await _read_body(request, signature.max_body_bytes)
        return await run_in_threadpool(run_inference, body)


def create_app_from_record(
    record: Record,
    *,
    name: str | None = None,
    version: str | None = None,
    scores: bool = ModelSignature.scores,
    max_batch: int = ModelSignature.max_batch,
) -> FastAPI:
    """:func:`create_app` for the model of a record; ``name`` defaults to
    :func:`default_model_name`. An imported model is served as the user's server would serve
    it: its own module, on the input its contract states (:func:`~misentry.verify.wire.wire_model`).
    RecordError if the record holds no model."""
    model, contract = wire_model(model_from_record(record))
    input_shape, num_classes = record_input(record)
    return create_app(
        model,
        contract=contract,
        name=name or default_model_name(record),
        version=version,
        num_classes=num_classes,
        input_shape=input_shape,
        scores=scores,
        max_batch=max_batch,
    )


def default_model_name(record: Record) -> str:
    """``<dataset>-<first 16 hex digits of the record id>``, as record folders are named."""
    dataset = re.sub(r"[^A-Za-z0-9_.-]+", "-", record.dataset).strip("-._") or "model"
    return f"{dataset}-{record.record_id[:16]}"


def _check_model(signature: ModelSignature, name: str, version: str | None) -> None:
    if name != signature.name:
        raise ProtocolError(f"model {name!r} not found; this server has {signature.name!r}", 404)
    if version is not None and version != signature.version:
        have = "no versions" if signature.version is None else f"version {signature.version!r}"
        raise ProtocolError(f"model {name!r} has no version {version!r}; it has {have}", 404)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is longer than ``limit`` bytes."""
    too_long = ProtocolError(
        f"the request body exceeds {limit} bytes (max_batch images as JSON); split the request",
        413,
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_long
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_long
        chunks.append(chunk)
    return b"".join(chunks)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answer is ``{"error": "..."}``; nothing internal reaches the client."""

    async def protocol_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProtocolError)
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404:
            detail = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} not allowed on {request.url.path}"
        return JSONResponse({"error": detail}, status_code=exc.status_code, headers=exc.headers)

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        where = ", ".join(".".join(map(str, e.get("loc", ()))) for e in exc.errors())
        return JSONResponse({"error": f"invalid request ({where})"}, status_code=400)

    async def internal_error(_request: Request, _exc: Exception) -> JSONResponse:
        # Starlette re-raises the exception after this answer: uvicorn logs its traceback
        return JSONResponse({"error": _INTERNAL_ERROR}, status_code=500)

    app.add_exception_handler(ProtocolError, protocol_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)


def run_server(
    app: FastAPI, host: str = LOOPBACK, port: int = 8080, log_level: str = "info"
) -> None:
    """Serve ``app`` with uvicorn until interrupted (Ctrl-C). Binds 127.0.0.1 by default."""
    uvicorn.run(app, host=host, port=port, log_level=log_level)


@contextmanager
def serve_in_thread(
    app: FastAPI,
    host: str = LOOPBACK,
    port: int = 0,
    *,
    timeout: float = 10.0,
    log_level: str = "warning",
) -> Iterator[str]:
    """Serve ``app`` from a background thread; yields the base URL ``http://HOST:PORT``.

    ``port=0`` takes a free port. The server stops (and the thread ends) when the block exits.
    RuntimeError if it does not start within ``timeout`` seconds (e.g. the port is taken).
    """
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off")
    server = uvicorn.Server(config)

    def run() -> None:
        with suppress(SystemExit):  # uvicorn exits when it cannot bind; _wait_started says so
            server.run()

    thread = threading.Thread(target=run, name=f"oip-server-{port}", daemon=True)
    thread.start()
    try:
        _wait_started(server, thread, host, port, timeout)
        bound = server.servers[0].sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout)


def _wait_started(
    server: uvicorn.Server, thread: threading.Thread, host: str, port: int, timeout: float
) -> None:
    stop = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(
                f"the server did not start on {host}:{port} (port taken or host not local?)"
            )
        if time.monotonic() > stop:
            raise RuntimeError(f"the server did not start on {host}:{port} in {timeout:g} s")
        time.sleep(0.01)
