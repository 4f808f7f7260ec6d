"""HttpOracle against the fault server: versioned addresses, headers, health, its description,
and its arguments and their defaults.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import pytest
import torch

from misentry.models.oracle import OracleError
from misentry.verify.http import HttpOptions, HttpOracle
from verify.faultkit import FaultServer, failure, rule_labels


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


def test_the_constructor_defaults_are_the_options_defaults() -> None:
    """The help texts of ``misentry verify`` read the defaults from HttpOptions."""
    parameters = inspect.signature(HttpOracle).parameters
    defaults = HttpOptions()
    assert (defaults.timeout, defaults.retries, defaults.backoff) == (10.0, 2, 0.2)
    assert (defaults.datatype, defaults.layout, defaults.output) == ("FP32", "NCHW", "labels")
    for name in HttpOptions.__dataclass_fields__:
        assert parameters[name].default == getattr(defaults, name), name
    oracle = HttpOracle("http://h/v2/models/m", timeout=3.0, output="scores")
    assert oracle.options == HttpOptions(timeout=3.0, output="scores")
