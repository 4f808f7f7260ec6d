"""HttpOracle's transport against the fault server: retries and their limits, timeouts, dropped
and refused connections, one kept-alive connection, and model addresses. Every fault test asserts
the error's reason and that it came back in bounded time.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import torch

from misentry.models.oracle import OracleError
from misentry.verify.http import HttpOracle
from misentry.verify.transport import parse_model_url
from verify.faultkit import FaultServer, failure, rule_labels

# --- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "text"), [("500", "boom"), ("503", "overloaded")])
@pytest.mark.parametrize("retries", [0, 2])
def test_5xx_is_retried_then_a_server_error(
    fault_server: FaultServer, http_images: torch.Tensor, fault: str, text: str, retries: int
) -> None:
    fault_server.state.fault = fault
    error, seconds = failure(fault_server.oracle(retries=retries), http_images)
    assert error.reason == "server"
    assert f"HTTP {fault}" in str(error)
    assert text in str(error)
    assert fault_server.infers == 1 + retries
    assert seconds < 2


def test_500_then_ok_succeeds_after_retries(
    fault_server: FaultServer, http_images: torch.Tensor
) -> None:
    fault_server.state.fail_first = 2
    oracle = fault_server.oracle(retries=2)
    assert torch.equal(oracle.labels(http_images), rule_labels(http_images))
    assert fault_server.infers == 3


def test_a_404_is_a_server_error_without_retry(
    fault_server: FaultServer, http_images: torch.Tensor
) -> None:
    url = fault_server.url.replace("tiny", "nope")
    error, seconds = failure(fault_server.oracle(url=url, retries=3), http_images)
    assert error.reason == "server"
    assert "HTTP 404" in str(error)
    assert "Model nope not found" in str(error)
    assert fault_server.infers == 1
    assert seconds < 2


def test_a_slow_answer_is_a_timeout_without_retry(
    fault_server: FaultServer, http_images: torch.Tensor
) -> None:
    fault_server.state.fault, fault_server.state.delay = "slow", 1.0
    error, seconds = failure(fault_server.oracle(timeout=0.3, retries=2), http_images)
    assert error.reason == "timeout"
    assert "0.3 s" in str(error)
    assert 0.25 < seconds < 3
    assert fault_server.infers == 1


def test_a_closed_port_is_a_transport_error(http_images: torch.Tensor) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v2/models/tiny"
    error, seconds = failure(HttpOracle(url, retries=2, backoff=0.01), http_images)
    assert error.reason == "transport"
    assert "refused" in str(error)
    assert "3 tries" in str(error)
    assert seconds < 2


def test_a_dropped_connection_is_retried_on_a_new_one(
    fault_server: FaultServer, http_images: torch.Tensor
) -> None:
    fault_server.state.fault = "drop"
    error, seconds = failure(fault_server.oracle(retries=1), http_images)
    assert error.reason == "transport"
    assert "closed the connection" in str(error)
    assert (fault_server.infers, fault_server.state.connections) == (2, 2)
    assert seconds < 2


def test_backoff_does_not_sleep_past_the_deadline(
    fault_server: FaultServer, http_images: torch.Tensor
) -> None:
    fault_server.state.fault = "500"
    oracle = fault_server.oracle(retries=5, backoff=0.5, deadline=0.3)
    error, seconds = failure(oracle, http_images)
    assert error.reason == "server"
    assert "deadline of 0.3 s" in str(error)
    assert fault_server.infers == 1
    assert seconds < 0.4


# --- the connection --------------------------------------------------------------------------


def test_one_connection_carries_many_requests(
    fault_server: FaultServer, http_images: torch.Tensor
) -> None:
    oracle = fault_server.oracle(batch_size=2)
    first = oracle.labels(http_images)
    second = oracle.labels(http_images[:4])
    assert torch.equal(first, rule_labels(http_images))
    assert torch.equal(second, first[:4])
    assert fault_server.infers == 7
    assert fault_server.state.connections == 1


def test_the_connection_is_reopened_after_an_error(
    fault_server: FaultServer, http_images: torch.Tensor
) -> None:
    oracle = fault_server.oracle(retries=0)
    fault_server.state.fault = "drop"
    with pytest.raises(OracleError, match="closed the connection"):
        oracle.labels(http_images)
    fault_server.state.fault = "none"
    assert torch.equal(oracle.labels(http_images), rule_labels(http_images))
    assert fault_server.state.connections == 2


def test_a_keep_alive_closed_by_the_server_is_reopened_at_once(
    fault_server: FaultServer, http_images: torch.Tensor
) -> None:
    fault_server.state.fault = "close_after"
    oracle = fault_server.oracle(retries=0)
    for _ in range(3):
        assert torch.equal(oracle.labels(http_images), rule_labels(http_images))
    assert fault_server.state.connections == 3
    assert fault_server.infers == 3


# --- addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("http://127.0.0.1:8080/v2/models/tiny", ("http", "127.0.0.1", 8080, "", "tiny", None)),
        ("https://models.example/v2/models/m/", ("https", "models.example", 443, "", "m", None)),
        ("http://h/gw/a/v2/models/m/versions/2", ("http", "h", 80, "/gw/a", "m", "2")),
        ("http://[::1]:9000/v2/models/m", ("http", "::1", 9000, "", "m", None)),
    ],
)
def test_model_addresses_are_parsed(url: str, parsed: tuple[Any, ...]) -> None:
    a = parse_model_url(url)
    assert (a.scheme, a.host, a.port, a.prefix, a.model, a.version) == parsed


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("ftp://h/v2/models/m", "not an http(s) URL"),
        ("http:///v2/models/m", "names no host"),
        ("http://h:99999/v2/models/m", "invalid port"),
        ("http://user:pw@h/v2/models/m", "credentials"),
        ("http://h/v2/models/m?x=1", "query"),
        ("http://h/v2/models", "not a model address"),
        ("http://h/models/m", "not a model address"),
        ("http://h/v2/models/m/infer", "without /infer"),
        ("http://h/v2/models/m/versions/", "not a model address"),
    ],
)
def test_a_bad_address_is_a_clear_value_error(url: str, text: str) -> None:
    with pytest.raises(ValueError, match="HttpOracle") as info:
        HttpOracle(url)
    assert text in str(info.value)
