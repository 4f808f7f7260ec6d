"""Discovery: a server's base URL resolves to its only ready model through the repository index
(``POST /v2/repository/index``), and several or none are refused with their names."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="misentry serve needs the serve extra")

from misentry.cli import main
from misentry.fingerprint.bundle import save_bundle
from misentry.fingerprint.registry import get_method
from misentry.models import Record, model_from_record
from misentry.serve.oip import create_app_from_record, serve_in_thread
from misentry.verify.discovery import (
    DiscoveryError,
    is_server_url,
    ready_models,
    resolve_endpoint,
)


@contextmanager
def index_server(answer: Any, status: int = 200) -> Iterator[str]:
    """A loopback server whose repository index answers ``answer`` (JSON, or raw bytes)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            length = int(self.headers.get("Content-Length", 0))
            self.rfile.read(length)
            self.send_response(status if self.path == "/v2/repository/index" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_misentry_serve_lists_its_model_and_a_base_url_resolves_to_it(record: Record) -> None:
    with serve_in_thread(create_app_from_record(record, name="digits")) as base:
        assert ready_models(base) == ["digits"]
        assert resolve_endpoint(base) == f"{base}/v2/models/digits"
        assert resolve_endpoint(base + "/") == f"{base}/v2/models/digits"
    model_url = "http://127.0.0.1:9/v2/models/x"
    assert resolve_endpoint(model_url) == model_url  # a model's address is taken as it is


def test_several_or_no_ready_models_are_refused_by_name() -> None:
    listing = [
        {"name": "b", "state": "READY"},
        {"name": "a", "version": "1", "state": "READY"},
        {"name": "c", "state": "UNAVAILABLE"},
    ]
    with (
        index_server(listing) as base,
        pytest.raises(DiscoveryError, match=r"2 ready models \(a, b\)"),
    ):
        resolve_endpoint(base)
    loading = [{"name": "c", "state": "LOADING"}]
    with index_server(loading) as base, pytest.raises(DiscoveryError, match="no ready model"):
        resolve_endpoint(base)
    with index_server(b"<html>") as base, pytest.raises(DiscoveryError, match="not JSON"):
        resolve_endpoint(base)
    with index_server({"models": []}) as base, pytest.raises(DiscoveryError, match="not a list"):
        resolve_endpoint(base)
    with index_server([], status=404) as base, pytest.raises(DiscoveryError, match="could not"):
        resolve_endpoint(base)
    slash = [{"name": "a/b", "state": "READY"}]
    with index_server(slash) as base, pytest.raises(ValueError, match="not a model address"):
        resolve_endpoint(base)


def test_server_urls() -> None:
    assert is_server_url("http://127.0.0.1:8080")
    assert is_server_url("https://host/")
    assert not is_server_url("http://127.0.0.1:8080/v2/models/m")
    assert not is_server_url("ftp://host")


def test_verify_with_a_base_url(
    record: Record, digits_pools: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = model_from_record(record)
    fps = get_method("natural").generate(model, digits_pools["source"], 6, seed=0)
    save_bundle(fps, tmp_path / "fp")
    args = ["verify", "--fingerprints", str(tmp_path / "fp"), "--no-ledger", "--json"]
    with serve_in_thread(create_app_from_record(record, name="digits")) as base:
        code = main([*args, "--endpoint", base])
    answer = json.loads(capsys.readouterr().out)
    assert code == 0
    assert answer["verdict"] == "intact"
    assert answer["endpoint_id"].endswith("/v2/models/digits")
    with index_server([{"name": "a", "state": "READY"}, {"name": "b"}]) as base:
        code = main([*args, "--endpoint", base])
    out, err = capsys.readouterr()
    assert code == 2
    assert "a, b" in out + err
