"""Finding the model behind a server's base URL: ``misentry verify --endpoint http://HOST:PORT``.

The Open Inference Protocol's model repository extension lists a server's models
(``POST /v2/repository/index``, answered by ``misentry serve``, MLServer and Triton). A URL
without a model path names the server; :func:`resolve_endpoint` asks it and takes the only ready
model, and refuses, naming them, when there are several or none.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from urllib.parse import urlsplit

from misentry.verify.transport import parse_model_url

MAX_INDEX_BYTES = 1 << 20
"""The most bytes of a repository index read (a server with a million models is not one)."""


class DiscoveryError(ValueError):
    """The server's model could not be found: no index, no ready model, or several."""


def is_server_url(url: str) -> bool:
    """Whether ``url`` is an http(s) address without a model path (``http://HOST:PORT[/]``)."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and parts.path.strip("/") == "" and not parts.query


def resolve_endpoint(
    url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 10.0
) -> str:
    """``url`` itself when it names a model; for a server's base URL, the address of its only
    ready model (``BASE/v2/models/NAME``). DiscoveryError when the server lists no ready model,
    several (the message names them), or no index."""
    if not is_server_url(url):
        return url
    base = url.rstrip("/")
    names = ready_models(base, headers=headers, timeout=timeout)
    if len(names) == 1:
        address = f"{base}/v2/models/{names[0]}"
        parse_model_url(address)  # a name that is not one path segment is refused here
        return address
    if not names:
        raise DiscoveryError(f"{base} lists no ready model (POST /v2/repository/index)")
    listed = ", ".join(names)
    raise DiscoveryError(
        f"{base} serves {len(names)} ready models ({listed}); name one: {base}/v2/models/NAME"
    )


def ready_models(
    base: str, *, headers: Mapping[str, str] | None = None, timeout: float = 10.0
) -> list[str]:
    """The names of the ready models in the repository index of the server at ``base``."""
    request = urllib.request.Request(
        f"{base}/v2/repository/index",
        data=b"{}",
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_INDEX_BYTES + 1)
    except (urllib.error.URLError, OSError) as err:
        raise DiscoveryError(f"{base}: the repository index could not be read: {err}") from None
    if len(body) > MAX_INDEX_BYTES:
        raise DiscoveryError(f"{base}: the repository index is over {MAX_INDEX_BYTES} bytes")
    try:
        index = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DiscoveryError(f"{base}: the repository index is not JSON") from None
    if not isinstance(index, list):
        raise DiscoveryError(f"{base}: the repository index is not a list")
    names = {
        entry["name"]
        for entry in index
        if isinstance(entry, dict)
        and isinstance(entry.get("name"), str)
        and str(entry.get("state", "READY")).upper() == "READY"
    }
    return sorted(names)
