"""One HTTP request to a server on this machine, for the server tests (loopback only: a test
that names another host fails instead of reaching the network)."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def call(
    url: str, body: bytes | None = None, method: str | None = None, timeout: float = 10.0
) -> tuple[int, Any, str]:
    """(status, parsed JSON or None, raw text) of one request; OSError when nothing listens."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK or parts.scheme != "http":
        raise ValueError(f"tests only talk to http servers on loopback, not {url}")
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request(method or ("POST" if body is not None else "GET"), path, body, headers)
        response = connection.getresponse()
        status, text = response.status, response.read().decode()
    finally:
        connection.close()
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    return status, document, text
