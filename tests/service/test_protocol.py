"""The v2 codec on its own: JSON and binary tensors in, JSON, binary and classification out, clear errors."""

from __future__ import annotations

import re

import numpy as np
import orjson
import pytest

from service.errors import ApiError
from service.protocol import DATATYPES, OutputTensor, classify, decode_request, encode_response


def _binary_body(arrays: list[np.ndarray], extra: bytes = b"", size_delta: int = 0) -> tuple[bytes, str]:
    inputs = [
        {
            "name": f"in{i}",
            "shape": list(a.shape),
            "datatype": "FP32",
            "parameters": {"binary_data_size": a.nbytes + size_delta},
        }
        for i, a in enumerate(arrays)
    ]
    header = orjson.dumps({"inputs": inputs})
    return header + b"".join(a.tobytes() for a in arrays) + extra, str(len(header))


def test_binary_inputs_go_straight_into_numpy() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = -np.ones((2, 2), np.float32)
    body, length = _binary_body([a, b])
    req = decode_request(body, length)
    np.testing.assert_array_equal(req.inputs[0].array, a)
    np.testing.assert_array_equal(req.inputs[1].array, b)
    assert req.inputs[0].array.base is not None  # a view on the request bytes, no copy through a list


def test_json_inputs_flat_or_nested() -> None:
    flat = decode_request(
        orjson.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}), None
    )
    nested = decode_request(
        orjson.dumps(
            {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}], "id": "r1"}
        ),
        None,
    )
    np.testing.assert_array_equal(flat.inputs[0].array, nested.inputs[0].array)
    assert nested.id == "r1" and flat.id is None


def _json_body(datatype: str, data_text: str, count: int) -> bytes:
    return (
        f'{{"inputs": [{{"name": "x", "shape": [{count}], "datatype": "{datatype}", "data": [{data_text}]}}], '
        '"parameters": {"note": "[1, 2]"}}'
    ).encode()


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_json_floats_decode_exactly_as_numpy_converts_the_parsed_numbers(datatype: str) -> None:
    rng = np.random.default_rng(7)
    values = rng.standard_normal(2000) * 10.0 ** rng.integers(-44, 39, 2000)
    # shortest round-trip text, 25 significant digits (decimal rounding cases), integers, -0.0, extremes
    texts = [repr(float(v)) for v in values[:1000]] + [f"{v:.25e}" for v in values[1000:]]
    texts += ["0", "-0.0", "17", "-123456789", "1e-45", "3.4028235677973366e38", "5e-324", "1.7976931348623157e308"]
    req = decode_request(_json_body(datatype, ", ".join(texts), len(texts)), None)
    with np.errstate(over="ignore"):
        expected = np.asarray([float(t) for t in texts], dtype=DATATYPES[datatype])
    np.testing.assert_array_equal(req.inputs[0].array, expected)
    assert req.inputs[0].array.dtype == expected.dtype


@pytest.mark.parametrize(
    ("datatype", "texts"),
    [
        ("INT64", ["9007199254740993", "-9223372036854775808", "9223372036854775807", "0"]),
        ("UINT64", ["18446744073709551615", "0"]),
        ("INT8", ["-128", "127", "5"]),
        ("UINT16", ["65535", "0"]),
    ],
)
def test_json_integers_decode_exactly(datatype: str, texts: list[str]) -> None:
    req = decode_request(_json_body(datatype, ", ".join(texts), len(texts)), None)
    np.testing.assert_array_equal(req.inputs[0].array, np.array([int(t) for t in texts], dtype=DATATYPES[datatype]))


def test_json_data_holds_values_of_its_datatype_only() -> None:
    """v2 JSON types: numbers for FP, integers for INT, booleans for BOOL; nothing is coerced."""
    flags = decode_request(_json_body("BOOL", "true, false", 2), None)
    np.testing.assert_array_equal(flags.inputs[0].array, np.array([True, False]))
    assert decode_request(_json_body("FP32", "1, 2", 2), None).inputs[0].array.dtype == np.float32
    nested = decode_request(_json_body("INT8", "[1, 2], [3, -4]", 4), None)  # nested: read in row-major order
    np.testing.assert_array_equal(nested.inputs[0].array, np.array([1, 2, 3, -4], np.int8))
    for datatype, values, shown in [
        ("FP32", "true, 1.5, 2", "true"),
        ("FP32", '"1", 2, 3', '"1"'),
        ("FP32", "null, 2, 3", "null"),
        ("FP32", "[1, {}], 2", "{}"),
        ("INT32", "1, 2.5, 3", "2.5"),
        ("BOOL", "true, 1, false", "1"),
    ]:
        with pytest.raises(ApiError, match=re.escape(f"holds {shown}, which is not a {datatype} value")):
            decode_request(_json_body(datatype, values, 3), None)
    with pytest.raises(ApiError, match="holds 3 values"):
        decode_request(
            orjson.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}]}),
            None,
        )


@pytest.mark.parametrize(
    ("body", "header", "message"),
    [
        (b"{", None, "not valid JSON"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [NaN]}]}', None, "not valid JSON"),
        (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2,]}]}', None, "not valid JSON"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1e999]}]}', None, "not valid JSON"),
        (b"[]", None, "must be a JSON object"),
        (b'{"inputs": []}', None, "non-empty 'inputs'"),
        (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2, 3]}]}', None, "holds 3 values"),
        (
            b'{"inputs": [{"name": "x", "shape": [2], "datatype": "STRING", "data": [1, 2]}]}',
            None,
            "unsupported datatype",
        ),
        (b'{"inputs": [{"name": "x", "shape": [-2], "datatype": "FP32", "data": []}]}', None, "non-negative integers"),
        (
            b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": ["a", "b"]}]}',
            None,
            'holds "a", which is not a FP32 value',
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [2], "datatype": "INT8", "data": [1, 300]}]}',
            None,
            "not an array of INT8",
        ),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [-1]}]}', None, "out of bounds"),
        (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32"}]}', None, "neither 'data' nor"),
        (b'{"inputs": [{"name": "x"}]}', "abc", "must be an integer"),
        (b'{"inputs": [{"name": "x"}]}', "9999", "but the body has"),
    ],
)
def test_malformed_requests_are_400_with_a_reason(body: bytes, header: str | None, message: str) -> None:
    with pytest.raises(ApiError) as info:
        decode_request(body, header)
    assert info.value.status == 400 and message in info.value.message


def test_binary_size_mismatch_truncation_and_leftovers() -> None:
    a = np.zeros((2, 3), np.float32)
    body, length = _binary_body([a], size_delta=4)
    with pytest.raises(ApiError, match="does not match shape"):
        decode_request(body, length)
    body, length = _binary_body([a])
    with pytest.raises(ApiError, match="truncated"):
        decode_request(body[:-5], length)
    body, length = _binary_body([a], extra=b"junk")
    with pytest.raises(ApiError, match="no input claims them"):
        decode_request(body, length)


def test_response_json_binary_and_bytes() -> None:
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]], np.float32)
    body, headers = encode_response("m", "1", "id7", [OutputTensor("logits", "FP32", logits, False)])
    doc = orjson.loads(body)
    assert headers == {} and doc["id"] == "id7" and doc["outputs"][0]["shape"] == [2, 3]
    np.testing.assert_allclose(doc["outputs"][0]["data"], logits.ravel())

    classes = classify(logits, 2, ["a", "b", "c"])
    assert [v.decode() for v in classes[0]] == ["2.000000:1:b", "0.100000:0:a"]
    body, headers = encode_response(
        "m", "1", None, [OutputTensor("logits", "FP32", logits, True), OutputTensor("logits", "BYTES", classes, True)]
    )
    n = int(headers["Inference-Header-Content-Length"])
    doc = orjson.loads(body[:n])
    size0 = doc["outputs"][0]["parameters"]["binary_data_size"]
    np.testing.assert_array_equal(np.frombuffer(body[n : n + size0], np.float32).reshape(2, 3), logits)
    tail = body[n + size0 :]
    assert int.from_bytes(tail[:4], "little") == len(b"2.000000:1:b") and tail[4:16] == b"2.000000:1:b"


def test_raw_outputs_are_the_same_bytes_over_http_and_grpc() -> None:
    """One encoding (service.protocol.raw_output) for HTTP's binary data and gRPC's raw_output_contents."""
    from service.grpc.codec import encode_infer_response

    big_endian = np.array([[1.5, -2.0], [3.25, 0.0]], dtype=">f4")
    outputs = [
        OutputTensor("logits", "FP32", big_endian, binary=True),
        OutputTensor("half", "FP16", np.array([0.5, 1.0], np.float16), binary=True),
        OutputTensor("top", "BYTES", np.array([[b"0.9:1:cat"], [b"0.8:0:dog"]], dtype=object), binary=True),
    ]
    body, headers = encode_response("m", "1", None, outputs)
    grpc_raw = list(encode_infer_response("m", "1", None, outputs).raw_output_contents)
    assert body[int(headers["Inference-Header-Content-Length"]) :] == b"".join(grpc_raw)
    assert grpc_raw[0] == np.array([[1.5, -2.0], [3.25, 0.0]], dtype="<f4").tobytes()  # little-endian on the wire
    assert grpc_raw[2] == b"\x09\x00\x00\x000.9:1:cat\x09\x00\x00\x000.8:0:dog"
