"""Serving a model record over the Open Inference Protocol (KServe V2) REST API.

:mod:`misentry.serve.protocol` checks requests and shapes answers (no web framework);
:mod:`misentry.serve.oip` is the FastAPI server (the ``serve`` extra: fastapi, uvicorn);
:mod:`misentry.serve.mlserver_runtime` runs the same model inside Seldon MLServer (the
``interop`` extra). The server names below load on first use, so importing this package does not
need fastapi.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from misentry.serve.protocol import InferRequest, ModelSignature, ProtocolError

if TYPE_CHECKING:
    from misentry.serve.oip import (
        create_app,
        create_app_from_record,
        default_model_name,
        run_server,
        serve_in_thread,
    )

_SERVER_NAMES = (
    "create_app",
    "create_app_from_record",
    "default_model_name",
    "run_server",
    "serve_in_thread",
)

__all__ = [
    "InferRequest",
    "ModelSignature",
    "ProtocolError",
    "create_app",
    "create_app_from_record",
    "default_model_name",
    "run_server",
    "serve_in_thread",
]


def __getattr__(name: str) -> Any:
    if name in _SERVER_NAMES:
        try:
            from misentry.serve import oip
        except ImportError as err:
            raise ImportError(
                f"misentry.serve.{name} needs fastapi and uvicorn ({err}); "
                "install the serve extra: pip install 'misentry[serve]'"
            ) from err
        return getattr(oip, name)
    raise AttributeError(f"module 'misentry.serve' has no attribute {name!r}")
