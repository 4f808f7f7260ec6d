"""The HTTP side of :class:`~misentry.verify.http.HttpOracle`, standard library only.

:func:`parse_model_url` takes an Open Inference Protocol model address apart;
:class:`Transport` holds one persistent connection to that server, sends requests on it, retries
connection errors and 5xx answers with exponential backoff inside the oracle's deadline, and turns
every failure of the exchange into an :class:`~misentry.models.oracle.OracleError`
(``transport``, ``timeout``, ``server``, or ``malformed`` for an answer that is not JSON).
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from misentry.models.oracle import OracleError

log = logging.getLogger(__name__)

_MODEL_PATH = re.compile(
    r"^(?P<prefix>(?:/[^/]+)*?)/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/?$"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class ModelAddress:
    """A model's address as the Open Inference Protocol names it, taken apart.

    ``prefix`` is any path in front of ``/v2`` (a gateway's route), usually empty.
    """

    scheme: str
    host: str
    port: int
    prefix: str
    model: str
    version: str | None

    @property
    def model_path(self) -> str:
        """``{prefix}/v2/models/{model}[/versions/{version}]``."""
        path = f"{self.prefix}/v2/models/{self.model}"
        return path if self.version is None else f"{path}/versions/{self.version}"

    @property
    def ready_path(self) -> str:
        return f"{self.prefix}/v2/health/ready"


def parse_model_url(url: str) -> ModelAddress:
    """Split ``http(s)://HOST[:PORT][/PREFIX]/v2/models/NAME[/versions/V]``; ValueError if not."""
    expected = "http(s)://HOST:PORT/v2/models/NAME or .../v2/models/NAME/versions/VERSION"
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"HttpOracle: {url!r} is not an http(s) URL; expected {expected}")
    if not parts.hostname:
        raise ValueError(f"HttpOracle: {url!r} names no host; expected {expected}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"HttpOracle: {url!r} carries credentials; pass them as headers "
            '(e.g. headers={"Authorization": "Bearer …"}) instead'
        )
    if parts.query or parts.fragment:
        raise ValueError(f"HttpOracle: {url!r} has a query or fragment; expected {expected}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"HttpOracle: {url!r} has an invalid port; expected {expected}") from None
    match = _MODEL_PATH.match(parts.path)
    if match is None:
        hint = ""
        if parts.path.rstrip("/").endswith(("/infer", "/ready")):
            hint = " (give the model's address, without /infer or /ready)"
        raise ValueError(f"HttpOracle: {url!r} is not a model address{hint}; expected {expected}")
    return ModelAddress(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port if port is not None else _DEFAULT_PORTS[parts.scheme],
        prefix=match["prefix"],
        model=match["name"],
        version=match["version"],
    )


def checked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``headers``; ValueError for a key or value that is not a str or that holds a
    line break or NUL (it could smuggle a header in)."""
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"HttpOracle: header {key!r} must map a str to a str")
        if any(c in key + value for c in "\r\n\0"):
            raise ValueError(f"HttpOracle: header {key!r} holds a line break or NUL")
    return dict(headers)


@dataclass(frozen=True)
class Reply:
    """One answer of the server: the request it answers, its status and its body."""

    method: str
    path: str
    status: int
    reason: str
    body: bytes


class _RetryableError(OracleError):
    """A transport failure worth another try (refused, reset, closed before the answer)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How :meth:`Transport.exchange` retries: ``retries`` further tries, the first after
    ``backoff`` seconds and each further one after twice the wait before; no retry whose wait
    would reach the deadline (``seconds_left()`` seconds away; None: no deadline)."""

    retries: int
    backoff: float
    deadline: float | None
    seconds_left: Callable[[], float | None]


class Transport:
    """One persistent HTTP(S) connection to the server of ``address`` (not thread-safe).

    Arguments:
        address: where the server is (:func:`parse_model_url`).
        url: the model's address as the user gave it, to name it in error messages.
        headers: extra request headers (checked by :func:`checked_headers`).
        timeout: seconds to connect and to wait on each read of one request.
        ssl_context: for ``https`` (default: the system's).
        retry: when and how often a failed request is tried again.
    """

    def __init__(
        self,
        address: ModelAddress,
        url: str,
        *,
        headers: Mapping[str, str],
        timeout: float,
        ssl_context: ssl.SSLContext | None,
        retry: RetryPolicy,
    ) -> None:
        self.address = address
        self.url = url
        self.headers = dict(headers)
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.retry = retry
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        """Close the connection (a later request opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def exchange(self, method: str, path: str, body: bytes | None) -> Reply:
        """One request; connection errors and 5xx answers are retried with backoff, inside the
        deadline. Returns any answer below 500 (and a 5xx one never)."""
        attempt = 0
        while True:
            try:
                reply = self._send(method, path, body)
            except _RetryableError as err:
                failure = OracleError(err.reason, str(err))
            else:
                if reply.status < 500:
                    return reply
                failure = OracleError("server", self.status_text(reply))
            delay = self._retry_delay(failure, attempt)
            attempt += 1
            log.warning("%s; retry %d of %d in %.2f s", failure, attempt, self.retry.retries, delay)
            time.sleep(delay)

    def _retry_delay(self, failure: OracleError, attempt: int) -> float:
        """Seconds to wait before retrying after ``attempt`` retries, or ``failure`` raised when
        no retry is left or its wait would reach the deadline."""
        retry = self.retry
        if attempt >= retry.retries:
            tries = f" (after {attempt + 1} tries)" if attempt else ""
            raise OracleError(failure.reason, f"{failure}{tries}")
        delay: float = retry.backoff * 2**attempt
        left = retry.seconds_left()
        if left is not None and delay >= left:
            raise OracleError(
                failure.reason,
                f"{failure} (not retried: the deadline of {retry.deadline:g} s is "
                f"{max(left, 0.0):.2f} s away)",
            )
        return delay

    def _send(self, method: str, path: str, body: bytes | None, reused: bool = False) -> Reply:
        """One request on the persistent connection, reopened once at once if a kept-alive
        connection turns out to have been closed by the server meanwhile."""
        was_open = self._conn is not None
        conn = self._connection()
        headers = {"Accept": "application/json", **self.headers}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except TimeoutError:
            self.close()
            raise OracleError(
                "timeout", f"{self.url}: no answer within {self.timeout:g} s ({method} {path})"
            ) from None
        except ssl.SSLCertVerificationError as err:
            self.close()
            raise OracleError("transport", f"{self.url}: TLS certificate rejected: {err}") from None
        except (OSError, http.client.HTTPException) as err:
            self.close()
            if was_open and not reused and _closed_by_peer(err):
                return self._send(method, path, body, reused=True)
            raise _RetryableError("transport", f"{self.url}: {_error_text(err)}") from None
        if response.will_close:
            self.close()
        return Reply(method, path, response.status, response.reason, data)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            a = self.address
            if a.scheme == "https":
                context = self.ssl_context or ssl.create_default_context()
                self._conn = http.client.HTTPSConnection(
                    a.host, a.port, timeout=self.timeout, context=context
                )
            else:
                self._conn = http.client.HTTPConnection(a.host, a.port, timeout=self.timeout)
        return self._conn

    def parse_json(self, reply: Reply) -> Any:
        """The reply's body as JSON; ``malformed`` if it is not."""
        try:
            return json.loads(reply.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise OracleError(
                "malformed", f"{self.url}: the answer is not JSON ({err}): {_excerpt(reply.body)}"
            ) from None

    def status_text(self, reply: Reply) -> str:
        """What a non-2xx reply says: the request, the status, and the server's error text."""
        detail = _excerpt(reply.body)
        try:
            document = json.loads(reply.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            document = None
        if isinstance(document, dict) and "error" in document:
            detail = str(document["error"])
        a = self.address
        where = f"{reply.method} {a.scheme}://{a.host}:{a.port}{reply.path}"
        text = f"{where}: HTTP {reply.status} {reply.reason}".rstrip()
        if 300 <= reply.status < 400:
            text += " (redirects are not followed; give the final address)"
        return f"{text}: {detail}" if detail else text


def _closed_by_peer(err: BaseException) -> bool:
    """The server closed the connection before answering (e.g. its keep-alive timeout)."""
    # http.client.RemoteDisconnected is a ConnectionResetError
    return isinstance(err, ConnectionResetError | BrokenPipeError | ConnectionAbortedError)


def _error_text(err: BaseException) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (is the server running, on this host and port?)"
    if isinstance(err, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _excerpt(body: bytes, limit: int = 200) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "…"
