"""What an inference request must hold (:mod:`misentry.serve.protocol`), checked through the
server: every malformed request gets a JSON 4xx answer that shows nothing internal."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="misentry serve needs the serve extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="misentry serve needs the serve extra (fastapi, uvicorn)")

from loopback_http import call
from serve.oipkit import MAX_BATCH, NAME, SHAPE, as_json, assert_no_internals, one_image

BAD_REQUESTS: dict[str, tuple[bytes, int]] = {
    "not JSON": (b"inputs=1", 400),
    "not UTF-8": (b"\xff\xfe{", 400),
    "empty body": (b"", 400),
    "a JSON array": (b"[]", 400),
    "no inputs": (as_json({"outputs": []}), 400),
    "two inputs": (as_json({"inputs": one_image()["inputs"] * 2}), 400),
    "input not an object": (as_json({"inputs": [[0.5]]}), 400),
    "no name": (as_json(one_image(name=None)), 400),
    "datatype INT32": (as_json(one_image(datatype="INT32")), 400),
    "datatype missing": (as_json(one_image(datatype=None)), 400),
    "wrong image shape": (as_json(one_image(shape=[1, 1, 8, 9], data=[0.5] * 72)), 400),
    "three dimensions": (as_json(one_image(shape=[1, 8, 8])), 400),
    "shape of strings": (as_json(one_image(shape=["1", "1", "8", "8"])), 400),
    "empty batch": (as_json(one_image(shape=[0, *SHAPE], data=[])), 400),
    "too few values": (as_json(one_image(data=[0.5] * 63)), 400),
    "too many values": (as_json(one_image(data=[0.5] * 65)), 400),
    "data not a list": (as_json(one_image(data="0.5")), 400),
    "strings in data": (as_json(one_image(data=["0.5"] * 64)), 400),
    "booleans in data": (as_json(one_image(data=[True] * 64)), 400),
    "nested too deep": (as_json(one_image(data=[[[[[[0.5]]]]]] * 64)), 400),
    "FP32 above 1": (as_json(one_image(data=[1.5] + [0.5] * 63)), 400),
    "FP32 below 0": (as_json(one_image(data=[-0.01] + [0.5] * 63)), 400),
    "FP32 NaN": (
        b'{"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", '
        b'"data": [NaN' + b", 0.5" * 63 + b"]}]}",
        400,
    ),
    "UINT8 floats": (as_json(one_image(datatype="UINT8", data=[0.5] * 64)), 400),
    "UINT8 above 255": (as_json(one_image(datatype="UINT8", data=[256] + [0] * 63)), 400),
    "UINT8 negative": (as_json(one_image(datatype="UINT8", data=[-1] + [0] * 63)), 400),
    "a huge integer": (as_json(one_image(datatype="UINT8", data=[10**30] + [0] * 63)), 400),
    "id not a string": (as_json({**one_image(), "id": 7}), 400),
    "scores from a label server": (as_json({**one_image(), "outputs": [{"name": "scores"}]}), 400),
    "batch over max_batch": (
        as_json(one_image(shape=[MAX_BATCH + 1, *SHAPE], data=[0.5] * 64 * (MAX_BATCH + 1))),
        413,
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_every_bad_request_gets_a_json_4xx_without_internals(base: str, case: str) -> None:
    body, expected = BAD_REQUESTS[case]
    status, answer, text = call(f"{base}/v2/models/{NAME}/infer", body)
    assert status == expected, text
    assert set(answer) == {"error"}
    assert isinstance(answer["error"], str)
    assert answer["error"]
    assert_no_internals(text)
