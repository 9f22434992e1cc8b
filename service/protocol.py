"""Open Inference Protocol v2 request decoding and response encoding, with Triton's extensions.

- JSON tensors: ``{"name", "shape", "datatype", "data"}`` with ``data`` flat or nested, row-major.
- Binary tensor data: the body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by
  the raw little-endian tensors in input order; an input with ``parameters.binary_data_size`` takes its
  bytes from there. Outputs are binary when the output asks (``parameters.binary_data``) or the request
  does (``parameters.binary_data_output``); their sizes go in ``binary_data_size``.
- Request parameters ``priority`` and ``timeout`` (microseconds) choose the queue level and timeout
  (:mod:`service.queue_policy`).
- Classification: ``parameters.classification: k`` on an output returns, per sample, the top k classes as
  BYTES ``"score:index:label"``.

The hot path avoids pydantic and Python lists: binary tensors go straight from the body into numpy, and JSON
bodies are parsed by simdjson, whose ``as_buffer`` turns a numeric ``data`` array into one C buffer of
doubles or 64-bit integers without a Python object per element (about twice as fast as orjson followed by
``np.asarray`` on a 3x32x32 tensor). A ``data`` array as long as the tensor's element count takes that path
(like Triton, an element that is itself an array is read in order); a nested ``data`` array, or one that
holds anything but numbers, is converted by numpy, which checks that it is rectangular.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
import simdjson

from service.errors import bad_request
from service.queue_policy import request_integer

DATATYPES: dict[str, np.dtype[Any]] = {  # little-endian, as the binary extension sends them
    name: np.dtype(t).newbyteorder("<")
    for name, t in (
        ("BOOL", np.bool_),
        ("UINT8", np.uint8),
        ("UINT16", np.uint16),
        ("UINT32", np.uint32),
        ("UINT64", np.uint64),
        ("INT8", np.int8),
        ("INT16", np.int16),
        ("INT32", np.int32),
        ("INT64", np.int64),
        ("FP16", np.float16),
        ("FP32", np.float32),
        ("FP64", np.float64),
    )
}
BufferType = Literal["d", "i", "u"]  # simdjson as_buffer: double, int64, uint64
BUFFER_DTYPES: dict[BufferType, type[np.generic]] = {"d": np.float64, "i": np.int64, "u": np.uint64}
BUFFER_TYPES: dict[str, BufferType] = {"FP16": "d", "FP32": "d", "FP64": "d"}
for _bits in (8, 16, 32, 64):
    BUFFER_TYPES[f"INT{_bits}"], BUFFER_TYPES[f"UINT{_bits}"] = "i", "u"
HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_RANK = 16  # dimensions of a tensor (numpy allows 64)
JSON_MAX_DEPTH = 1024  # simdjson's and orjson's nesting limit


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None
    class_count: int


@dataclass
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None
    binary_output: bool
    priority: int | None = None  # request parameter: priority level (0 or None: the model's default)
    timeout_us: int | None = None  # request parameter: queue timeout in microseconds


def _param(obj: dict[str, Any], key: str) -> Any:
    params = obj.get("parameters")
    return params.get(key) if isinstance(params, dict) else None


def _shape(raw: Any, name: str, body_size: int) -> tuple[int, ...]:
    """The tensor's shape, refused before any work when no body of ``body_size`` bytes could hold it."""
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise bad_request(f"input {name!r}: 'shape' must be a list of non-negative integers, got {_brief(raw)}")
    if len(raw) > MAX_RANK:
        raise bad_request(f"input {name!r}: 'shape' has {len(raw)} dimensions; the limit (MAX_RANK) is {MAX_RANK}")
    count = math.prod(raw)
    if count > body_size:  # every value takes at least one byte, binary or JSON
        raise bad_request(
            f"input {name!r}: shape {raw} holds {count} values, more than a body of {body_size} bytes can carry"
        )
    return tuple(raw)


def _brief(value: Any, limit: int = 80) -> str:
    """``value`` as JSON (or its repr) cut to ``limit`` characters, for error messages about arbitrary input."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _from_values(data: Any, datatype: str, name: str) -> np.ndarray:
    """``data`` (a list, nested in row-major order at most MAX_RANK deep) as ``datatype``, each value checked
    to be of the JSON kind the v2 protocol gives that datatype: booleans for BOOL, integers for INT/UINT,
    numbers for FP. Strings, null, objects and booleans-as-numbers are refused, not coerced."""
    if not isinstance(data, list):
        raise bad_request(f"input {name!r}: 'data' must be an array, got {_brief(data)}")
    kind = "bool" if datatype == "BOOL" else "float" if datatype.startswith("FP") else "int"
    values: list[Any] = []
    stack = [iter(data)]  # one iterator per open array: row-major order
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                if len(stack) >= MAX_RANK:
                    raise bad_request(
                        f"input {name!r}: 'data' is nested deeper than the limit (MAX_RANK) of {MAX_RANK}"
                    )
                stack.append(iter(value))
                break
            ok = isinstance(value, bool) if kind == "bool" else isinstance(value, int) and not isinstance(value, bool)
            if not ok and kind == "float":
                ok = isinstance(value, float)
            if not ok:
                raise bad_request(f"input {name!r}: 'data' holds {_brief(value)}, which is not a {datatype} value")
            values.append(value)
        else:
            stack.pop()
    try:
        return np.asarray(values, dtype=DATATYPES[datatype])
    except OverflowError as exc:
        raise bad_request(f"input {name!r}: 'data' is not an array of {datatype} values ({exc})") from None


def _decode_input(obj: Any, binary: memoryview, offset: int, body_size: int) -> tuple[InputTensor, int]:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise bad_request("each entry of 'inputs' must be an object with a string 'name'")
    name = obj["name"]
    datatype = obj.get("datatype")
    if datatype not in DATATYPES:
        raise bad_request(f"input {name!r}: unsupported datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    shape = _shape(obj.get("shape"), name, body_size)
    dtype = DATATYPES[datatype]
    count = math.prod(shape)
    size = _param(obj, "binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0:
            raise bad_request(f"input {name!r}: binary_data_size must be a non-negative integer")
        if size != count * dtype.itemsize:
            raise bad_request(
                f"input {name!r}: binary_data_size {size} does not match shape {list(shape)} of {datatype} "
                f"({count * dtype.itemsize} bytes expected)"
            )
        if offset + size > len(binary):
            raise bad_request(f"input {name!r}: binary data is truncated ({len(binary) - offset} of {size} bytes)")
        array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
        return InputTensor(name, datatype, shape, array), offset + size
    if "data" not in obj:
        raise bad_request(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    data = obj["data"]
    fast = _from_buffer(data, datatype, count, name) if isinstance(data, simdjson.Array) else None
    if fast is not None:
        array = fast
    else:
        array = _from_values(data.as_list() if isinstance(data, simdjson.Array) else data, datatype, name)
    if array.size != count:
        raise bad_request(f"input {name!r}: 'data' holds {array.size} values, shape {list(shape)} needs {count}")
    return InputTensor(name, datatype, shape, array.reshape(shape)), offset


def _from_buffer(data: simdjson.Array, datatype: str, count: int, name: str) -> np.ndarray | None:
    """A flat numeric ``data`` array as a numpy array of ``datatype``, or None to let numpy convert it."""
    code = BUFFER_TYPES.get(datatype)
    if code is None or len(data) != count:
        return None
    try:
        wide = np.frombuffer(data.as_buffer(of_type=code), dtype=BUFFER_DTYPES[code])
    except (TypeError, ValueError):  # not all numbers of that kind (bools, strings, fractions for ints, ...)
        return None
    dtype = DATATYPES[datatype]
    if code != "d" and wide.size and dtype.itemsize < 8:
        info = np.iinfo(dtype)
        low, high = int(wide.min()), int(wide.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise bad_request(f"input {name!r}: 'data' is not an array of {datatype} values ({bad} is out of range)")
    with np.errstate(over="ignore"):  # beyond the float range: inf, exactly as numpy converts a Python float
        return wide.astype(dtype)


def _load_json(raw: bytes | memoryview, small: bool) -> dict[str, Any]:
    """The request document as Python objects, except that each input's ``data`` stays a simdjson Array.

    ``small``: the JSON header of a binary request, which orjson parses faster (and whole).
    """
    if small:
        try:
            header = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"request body is not valid JSON: {exc}") from None
        if not isinstance(header, dict):
            raise bad_request("request body must be a JSON object")
        return header
    try:
        doc = simdjson.Parser().parse(raw)
    except ValueError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None
    except RuntimeError as exc:  # simdjson's limits: 64-bit numbers, nesting depth
        text = str(exc)
        if text.startswith("BIGINT_ERROR"):
            raise bad_request("request body holds an integer that does not fit in 64 bits") from None
        if text.startswith("DEPTH_ERROR"):
            raise bad_request(f"request body is nested deeper than the parser's limit of {JSON_MAX_DEPTH}") from None
        raise
    if not isinstance(doc, simdjson.Object):
        raise bad_request("request body must be a JSON object")
    try:
        return _lazy_data(doc)
    except KeyError:  # simdjson cannot look up a key holding a NUL character: read the document whole
        loaded: dict[str, Any] = doc.as_dict()
        return loaded


def _lazy_data(doc: simdjson.Object) -> dict[str, Any]:
    # keys() and [key], not items(): items() converts every value (all of the data) into Python objects
    out = {key: _python(doc[key]) for key in doc if key != "inputs"}
    inputs = doc.get("inputs")
    if isinstance(inputs, simdjson.Array):
        out["inputs"] = [
            {k: obj[k] if k == "data" else _python(obj[k]) for k in obj} if isinstance(obj, simdjson.Object) else obj
            for obj in inputs
        ]
    elif inputs is not None:
        out["inputs"] = _python(inputs)
    return out


def _python(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _decode_output(obj: Any) -> RequestedOutput:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise bad_request("each entry of 'outputs' must be an object with a string 'name'")
    binary = _param(obj, "binary_data")
    classes = _param(obj, "classification") or 0
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
        raise bad_request(f"output {obj['name']!r}: classification must be a non-negative integer")
    return RequestedOutput(obj["name"], None if binary is None else bool(binary), classes)


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse a v2 inference request body (JSON, or JSON header + binary tensors)."""
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise bad_request(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 < json_size <= len(body):
            raise bad_request(f"{HEADER_LENGTH} is {json_size} but the body has {len(body)} bytes")
    else:
        json_size = len(body)
    doc = _load_json(memoryview(body)[:json_size], small=header_length is not None)
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise bad_request("request needs a non-empty 'inputs' list")
    binary = memoryview(body)[json_size:]
    offset = 0
    inputs = []
    for obj in raw_inputs:
        tensor, offset = _decode_input(obj, binary, offset, len(body))
        inputs.append(tensor)
    if offset != len(binary):
        raise bad_request(f"{len(binary) - offset} bytes of binary data follow the inputs but no input claims them")
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None and not isinstance(raw_outputs, list):
        raise bad_request("'outputs' must be a list")
    request_id = doc.get("id")
    return InferRequest(
        id=str(request_id) if request_id is not None else None,
        inputs=inputs,
        outputs=[_decode_output(o) for o in raw_outputs] if raw_outputs else None,
        binary_output=bool(_param(doc, "binary_data_output")),
        priority=request_integer("priority", _param(doc, "priority")),
        timeout_us=request_integer("timeout", _param(doc, "timeout")),
    )


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores of each row of ``scores`` (N, C), highest first, ties by index."""
    flat = scores.reshape(scores.shape[0], -1)
    return np.argsort(-flat, axis=1, kind="stable")[:, : min(k, flat.shape[1])]


def label(labels: list[str], index: int) -> str:
    """The label of class ``index``, or the index itself when the model has fewer labels."""
    return labels[index] if index < len(labels) else str(index)


def classify(logits: np.ndarray, k: int, labels: list[str]) -> np.ndarray:
    """Top-k per sample as BYTES strings ``"score:index:label"`` (shape (N, k))."""
    flat = logits.reshape(logits.shape[0], -1)
    rows = [
        [f"{flat[i, j]:f}:{j}:{label(labels, j)}".encode() for j in indices] for i, indices in enumerate(top_k(flat, k))
    ]
    return np.array(rows, dtype=object)


def _serialize_bytes(values: np.ndarray) -> bytes:
    """Triton's BYTES wire format: each element as a 4-byte little-endian length and its bytes."""
    return b"".join(len(v).to_bytes(4, "little") + v for v in values.ravel())


def raw_output(datatype: str, array: np.ndarray) -> bytes:
    """An output tensor's raw bytes, the same over HTTP (binary data extension) and gRPC (``raw_output_contents``):
    little-endian, row-major; BYTES in Triton's length-prefixed format."""
    if datatype == "BYTES":
        return _serialize_bytes(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


@dataclass
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray
    binary: bool


def encode_response(
    model_name: str, model_version: str, request_id: str | None, outputs: list[OutputTensor]
) -> tuple[bytes, dict[str, str]]:
    """Body and extra headers of a v2 inference response."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for out in outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.array.shape)}
        if out.binary:
            raw = raw_output(out.datatype, out.array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif out.datatype == "BYTES":
            entry["data"] = [v.decode() for v in out.array.ravel()]
        else:
            entry["data"] = out.array.ravel()
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": entries}
    if request_id is not None:
        doc["id"] = request_id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {}
    return header + b"".join(chunks), {HEADER_LENGTH: str(len(header))}
