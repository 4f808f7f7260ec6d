"""A label oracle over the Open Inference Protocol (KServe V2) REST API, standard library only.

:class:`HttpOracle` posts each batch to ``POST {model}/infer`` as plain JSON (no binary-tensor
extension: MLServer refuses it with 422) and reads one label per image from the answer, either
an output of labels (shape ``[N]`` or ``[N, 1]``, as MLServer's numpy codec returns a 1-D array)
or an output of scores (``[N, classes]``, top-1 by argmax). It keeps one persistent connection,
retries connection errors and 5xx answers with exponential backoff inside the oracle's deadline,
and turns every failure into an :class:`~misentry.models.oracle.OracleError`:

========================================  ================  =========
failure                                   reason            retried
========================================  ================  =========
connection refused, reset, closed early   ``transport``     yes
no answer within ``timeout`` seconds      ``timeout``       no
5xx status (after the retries)            ``server``        yes
4xx status, redirect, other non-2xx       ``server``        no
not JSON, no ``outputs``/``data``, wrong  ``malformed``     no
output name or shape, non-numeric labels
fewer or more labels than images          ``short``         no
a label outside ``[0, num_classes)``      ``out_of_range``  no
========================================  ================  =========

A timeout is not retried: a model that did not answer in time will rarely answer faster, and
repeating it would multiply the wait. The oracle is not thread-safe (one connection).

The pieces: :mod:`misentry.verify.transport` (the model's address, the connection and its
retries) and :mod:`misentry.verify.oip_codec` (the request and answer bodies).
:class:`HttpOptions` holds the oracle's settings and their defaults.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch

from misentry.models import InputContract
from misentry.models.oracle import LabelOracle, OracleError
from misentry.verify.oip_codec import (
    Datatype,
    Layout,
    OutputKind,
    decode_labels,
    encode_request,
    pick_output,
)
from misentry.verify.transport import (
    ModelAddress,
    Reply,
    RetryPolicy,
    Transport,
    checked_headers,
    parse_model_url,
)
from misentry.verify.wire import describe_contract

__all__ = [
    "Datatype",
    "HttpOptions",
    "HttpOracle",
    "Layout",
    "ModelAddress",
    "OutputKind",
    "parse_model_url",
]


@dataclass(frozen=True)
class HttpOptions:
    """How an :class:`HttpOracle` talks to its server; the defaults here are the oracle's.

    Attributes:
        input_name: the model's input tensor name.
        datatype: ``"FP32"`` sends pixels / 255 as floats in [0, 1] (exactly the float32 values
            an in-process model sees); ``"UINT8"`` sends the raw 0-255 pixels.
        layout: ``"NCHW"`` or ``"NHWC"`` (channels last).
        output_name: the output to read; None reads the first output.
        output: ``"labels"``: the output holds one integer label per image (``[N]`` or
            ``[N, 1]``, any integer datatype, or floats with whole values); ``"scores"``: the
            output is ``[N, classes]`` and the label is its argmax.
        timeout: seconds to connect and to wait on each read of one request.
        retries: further tries after a connection error or a 5xx answer; 4xx answers and
            timeouts are never retried.
        backoff: seconds before the first retry, doubled for each further one; a retry whose
            wait would pass the deadline is not made.

    ValueError (naming the option) for a choice outside its values or a negative number.
    """

    input_name: str = "input"
    datatype: Datatype = "FP32"
    layout: Layout = "NCHW"
    output_name: str | None = None
    output: OutputKind = "labels"
    timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.2

    def __post_init__(self) -> None:
        _check_choice("datatype", self.datatype, ("FP32", "UINT8"))
        _check_choice("layout", self.layout, ("NCHW", "NHWC"))
        _check_choice("output", self.output, ("labels", "scores"))
        if not self.timeout > 0:
            raise ValueError(f"HttpOracle: timeout must be positive seconds, not {self.timeout}")
        if self.retries < 0:
            raise ValueError(f"HttpOracle: retries must be >= 0, not {self.retries}")
        if self.backoff < 0:
            raise ValueError(f"HttpOracle: backoff must be >= 0 seconds, not {self.backoff}")


class HttpOracle(LabelOracle):
    """Top-1 labels from a model served over the Open Inference Protocol (KServe V2) REST API.

    Arguments:
        url: the model's address, ``http(s)://HOST:PORT/v2/models/NAME`` or
            ``.../v2/models/NAME/versions/V`` (a path in front of ``/v2`` is kept as a prefix).
        input_name, datatype, layout, output_name, output, timeout, retries, backoff: as in
            :class:`HttpOptions`, whose defaults they take (``"input"``, ``"FP32"``,
            ``"NCHW"``, the first output, ``"labels"``, 10 s, 2 retries, 0.2 s); the oracle keeps
            them as :attr:`options`.
        headers: extra request headers, e.g. ``{"Authorization": "Bearer …"}``.
        ssl_context: for ``https``, e.g. one that trusts a private CA (default: the system's).
        contract: the model's input contract (a bundle's :attr:`FingerprintSet.contract`);
            one that is not the identity sends what the model takes, as the user's own server
            expects it: FP32 values encoded by the contract, in its layout (which then replaces
            ``layout``; ``datatype`` must stay FP32).
        num_classes, batch_size, budget, deadline: as in :class:`LabelOracle`.

    >>> oracle = HttpOracle("http://127.0.0.1:8080/v2/models/tiny", num_classes=10)
    >>> oracle.health()["name"]  # doctest: +SKIP
    'tiny'
    >>> oracle.labels(images)  # doctest: +SKIP
    tensor([7, 2, 1, ...])
    """

    def __init__(
        self,
        url: str,
        *,
        input_name: str = HttpOptions.input_name,
        datatype: Datatype = HttpOptions.datatype,
        layout: Layout = HttpOptions.layout,
        output_name: str | None = HttpOptions.output_name,
        output: OutputKind = HttpOptions.output,
        headers: Mapping[str, str] | None = None,
        timeout: float = HttpOptions.timeout,
        retries: int = HttpOptions.retries,
        backoff: float = HttpOptions.backoff,
        ssl_context: ssl.SSLContext | None = None,
        contract: InputContract | None = None,
        num_classes: int | None = None,
        batch_size: int = 64,
        budget: int | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes, batch_size=batch_size, budget=budget, deadline=deadline
        )
        self.address = parse_model_url(url)
        self.url = url.rstrip("/")
        self.contract = contract if contract is not None else InputContract()
        if not self.contract.is_identity:
            if datatype != "FP32":
                raise ValueError(
                    f"HttpOracle: the model takes {describe_contract(self.contract)} values "
                    f"by its input contract; send them as FP32, not {datatype}"
                )
            layout = "NHWC" if self.contract.channels_last else "NCHW"
        self.options = HttpOptions(
            input_name=input_name,
            datatype=datatype,
            layout=layout,
            output_name=output_name,
            output=output,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
        )
        retry = RetryPolicy(retries, backoff, self.deadline, self._seconds_left)
        self.transport = Transport(
            self.address,
            self.url,
            headers=checked_headers(headers or {}),
            timeout=timeout,
            ssl_context=ssl_context,
            retry=retry,
        )

    def health(self) -> dict[str, Any]:
        """Check ``GET v2/health/ready`` and return the model's metadata (``GET v2/models/NAME``:
        name, versions, platform, inputs, outputs). Raises :class:`OracleError` if the server is
        not ready, the model is unknown or the answer is not a JSON object. Queries are not
        counted."""
        self._health_get(self.address.ready_path, "the server is not ready")
        reply = self._health_get(self.address.model_path, "no model metadata")
        metadata = self.transport.parse_json(reply)
        if not isinstance(metadata, dict):
            raise OracleError("malformed", f"{self.url}: the model metadata is not a JSON object")
        return metadata

    def _health_get(self, path: str, failed: str) -> Reply:
        try:
            reply = self.transport.exchange("GET", path, None)
        except OracleError as err:
            raise OracleError(err.reason, f"{failed}: {err}") from None
        if not 200 <= reply.status < 300:
            raise OracleError("server", f"{failed}: {self.transport.status_text(reply)}")
        return reply

    def describe(self) -> str:
        return self.url

    def close(self) -> None:
        """Close the connection (a later query opens a new one)."""
        self.transport.close()

    def __enter__(self) -> HttpOracle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _query(self, images: torch.Tensor) -> torch.Tensor:
        o = self.options
        body = encode_request(images, o.input_name, o.datatype, o.layout, self.contract)
        reply = self.transport.exchange("POST", self.address.model_path + "/infer", body)
        if not 200 <= reply.status < 300:
            raise OracleError("server", self.transport.status_text(reply))
        tensor = pick_output(self.transport.parse_json(reply), o.output_name, self.url)
        return decode_labels(tensor, o.output, self.url)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"HttpOracle: {name} must be one of {', '.join(choices)}, not {value!r}")
