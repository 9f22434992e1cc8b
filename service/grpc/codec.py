"""``ModelInferRequest`` -> :class:`service.protocol.InferRequest` and outputs -> ``ModelInferResponse``.

Tensor data travels in one of two ways, as in the protocol:

- raw: ``raw_input_contents[i]`` holds input ``i`` as little-endian bytes in row-major order (BYTES as
  4-byte-length-prefixed strings); it must hold exactly ``prod(shape) * itemsize`` bytes. When a request
  sends its inputs raw (tritonclient.grpc always does), the outputs come back in ``raw_output_contents``.
- typed: ``inputs[i].contents.<type>_contents`` holds the values (FP32 in ``fp32_contents``, INT8/16/32 in
  ``int_contents``, ...; FP16 has no typed field and must be raw). A request with typed inputs gets typed
  outputs. The protocol allows no mixing: raw contents are given for every input or for none.

The request parameters ``priority`` and ``timeout`` (int64 or uint64, as tritonclient sends them) choose the
queue level and timeout (:mod:`service.queue_policy`). Requested outputs take
``parameters["classification"]`` (int64) exactly as over HTTP: top-k ``"score:index:label"`` BYTES per sample.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from service.errors import bad_request
from service.protocol import DATATYPES, InferRequest, InputTensor, OutputTensor, RequestedOutput, raw_output
from service.queue_policy import request_integer

TYPED_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _dtype_and_shape(tensor: Any) -> tuple[np.dtype[Any], tuple[int, ...]]:
    name, datatype = tensor.name, tensor.datatype
    if datatype not in DATATYPES:
        raise bad_request(f"input {name!r}: unsupported datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise bad_request(f"input {name!r}: shape {list(shape)} has a negative dimension")
    return DATATYPES[datatype], shape


def _raw_input(tensor: Any, raw: bytes) -> InputTensor:
    dtype, shape = _dtype_and_shape(tensor)
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise bad_request(
            f"input {tensor.name!r}: raw_input_contents holds {len(raw)} bytes; shape {list(shape)} of "
            f"{tensor.datatype} needs {expected}"
        )
    return InputTensor(tensor.name, tensor.datatype, shape, np.frombuffer(raw, dtype=dtype).reshape(shape))


def _typed_input(tensor: Any) -> InputTensor:
    name, datatype = tensor.name, tensor.datatype
    dtype, shape = _dtype_and_shape(tensor)
    field = TYPED_FIELDS.get(datatype)
    if field is None:
        raise bad_request(f"input {name!r}: {datatype} has no typed contents; send it in raw_input_contents")
    given = [f.name for f, _ in tensor.contents.ListFields()]
    if given != [field]:
        raise bad_request(f"input {name!r}: datatype {datatype} takes its values in contents.{field}, got {given}")
    try:
        array = np.asarray(getattr(tensor.contents, field), dtype=dtype)
    except (OverflowError, ValueError) as exc:
        raise bad_request(f"input {name!r}: contents.{field} are not {datatype} values ({exc})") from None
    if array.size != math.prod(shape):
        raise bad_request(
            f"input {name!r}: contents.{field} holds {array.size} values, shape {list(shape)} needs {math.prod(shape)}"
        )
    return InputTensor(name, datatype, shape, array.reshape(shape))


def _requested_output(output: Any) -> RequestedOutput:
    classes = 0
    if "classification" in output.parameters:
        param = output.parameters["classification"]
        kind = param.WhichOneof("parameter_choice")
        classes = getattr(param, kind) if kind in ("int64_param", "uint64_param") else -1
        if classes < 0:
            raise bad_request(f"output {output.name!r}: classification must be a non-negative int64 parameter")
    return RequestedOutput(output.name, None, classes)


def _integer_parameter(request: Any, name: str) -> int | None:
    """Request parameter ``name`` (``priority``, ``timeout``) as tritonclient sends it (uint64 or int64)."""
    if name not in request.parameters:
        return None
    param = request.parameters[name]
    kind = param.WhichOneof("parameter_choice")
    value = getattr(param, kind) if kind in ("int64_param", "uint64_param") else None
    if value is None:
        raise bad_request(f"parameter {name!r} must be an int64 or uint64 parameter, got {kind}")
    return request_integer(name, value)


def decode_infer_request(request: Any) -> InferRequest:
    """The request as bnfold's protocol-neutral :class:`InferRequest` (outputs raw when inputs are raw)."""
    if not request.inputs:
        raise bad_request("request needs at least one input tensor")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise bad_request(
            f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} inputs; "
            "send every input raw or none"
        )
    inputs = (
        [_raw_input(t, r) for t, r in zip(request.inputs, raw, strict=True)]
        if raw
        else [_typed_input(t) for t in request.inputs]
    )
    outputs = [_requested_output(o) for o in request.outputs] or None
    return InferRequest(
        id=request.id or None,
        inputs=inputs,
        outputs=outputs,
        binary_output=bool(raw),
        priority=_integer_parameter(request, "priority"),
        timeout_us=_integer_parameter(request, "timeout"),
    )


def _typed_output(out: OutputTensor, tensor: Any) -> None:
    field = TYPED_FIELDS.get(out.datatype)
    if field is None:
        raise bad_request(f"output {out.name!r} is {out.datatype}, which has no typed contents; send inputs raw")
    getattr(tensor.contents, field).extend(out.array.ravel().tolist())


def encode_infer_response(
    model_name: str, model_version: str, request_id: str | None, outputs: list[OutputTensor]
) -> Any:
    """A ``ModelInferResponse``: each output raw when ``out.binary`` (as the request chose), else typed."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id or "")
    for out in outputs:
        tensor = response.outputs.add(name=out.name, datatype=out.datatype, shape=list(out.array.shape))
        if out.binary:
            response.raw_output_contents.append(raw_output(out.datatype, out.array))
        else:
            _typed_output(out, tensor)
    return response
