"""The request and answer bodies of HttpOracle, against the fault server: every label format a
server may answer in reads back as the served labels, the datatype and layout reach the server,
and every bad answer is reported with its reason and never retried.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from verify.faultkit import FaultServer, failure, rule_labels


@pytest.mark.parametrize(
    ("served", "output", "output_name"),
    [
        ("labels", "labels", "label"),
        ("labels_flat", "labels", "label"),
        ("labels_nested", "labels", "label"),
        ("labels_float", "labels", "label"),
        ("scores", "scores", None),
    ],
)
def test_labels_match_the_served_model(
    fault_server: FaultServer,
    http_images: torch.Tensor,
    served: str,
    output: str,
    output_name: str | None,
) -> None:
    fault_server.state.output = served
    with fault_server.oracle(output=output, output_name=output_name, batch_size=4) as oracle:
        labels = oracle.labels(http_images)
    assert labels.dtype == torch.int64
    assert torch.equal(labels, rule_labels(http_images))
    assert fault_server.infers == 3
    assert oracle.queries == 10


@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_datatype_and_layout_reach_the_server(
    fault_server: FaultServer, http_images: torch.Tensor, datatype: str, layout: str
) -> None:
    fault_server.state.datatype, fault_server.state.layout = datatype, layout
    right = fault_server.oracle(datatype=datatype, layout=layout)
    assert torch.equal(right.labels(http_images), rule_labels(http_images))
    other = {"FP32": "UINT8", "UINT8": "FP32"}[datatype]
    error, seconds = failure(fault_server.oracle(datatype=other, layout=layout), http_images)
    assert error.reason == "server"
    assert f"must be {datatype}" in str(error)
    assert "HTTP 400" in str(error)
    assert seconds < 2


@pytest.mark.parametrize(
    ("fault", "options", "reason", "text"),
    [
        ("bad_json", {}, "malformed", "not JSON"),
        ("no_outputs", {}, "malformed", "no 'outputs'"),
        ("empty_outputs", {}, "malformed", "no 'outputs'"),
        ("no_data", {}, "malformed", "no data"),
        ("none", {"output_name": "logits"}, "malformed", "no output named 'logits'"),
        ("bytes", {}, "malformed", "BYTES"),
        ("fractional", {}, "malformed", "integers"),
        ("wide", {}, "malformed", "output='scores'"),
        ("bad_shape", {"output": "scores", "output_name": None}, "malformed", "values"),
        ("short", {}, "short", "9 labels came back for 10"),
        ("long", {}, "short", "11 labels came back for 10"),
        ("out_of_range", {}, "out_of_range", "outside [0, 10)"),
    ],
)
def test_a_bad_answer_is_reported_not_retried(
    fault_server: FaultServer,
    http_images: torch.Tensor,
    fault: str,
    options: dict[str, Any],
    reason: str,
    text: str,
) -> None:
    fault_server.state.fault = fault
    if options.get("output") == "scores":
        fault_server.state.output = "scores"
    error, seconds = failure(fault_server.oracle(retries=2, **options), http_images)
    assert error.reason == reason
    assert text in str(error)
    assert fault_server.infers == 1
    assert seconds < 2
