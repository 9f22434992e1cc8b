"""The one inference pipeline: decode -> validate -> admit -> batch -> run -> unbatch -> encode.

Every inference goes through :func:`run`: the v2 ``infer`` route (:func:`infer_http`, JSON or binary tensors),
the image route (:func:`classify_http`) and any front end that already holds numpy tensors (:func:`infer`,
for gRPC). Each step is one function here or one call into the module that owns it:

1. admit     :func:`admit`: look the model version up and take an :class:`~service.batching.Admission` on its
             batcher *before* the body is read, so the batcher knows a request is on its way and a swap or
             unload waits for it; a request that meets a batcher being retired looks the model up again and
             lands on the new version (or gets 503 with Retry-After when there is none).
2. decode    :mod:`service.body` reads the body under the size limit; :mod:`service.protocol` decodes v2
             JSON/binary tensors; :mod:`service.images` decodes images off the event loop.
3. validate  :func:`validate_input` and :func:`check_outputs`: every input of the model, each of its name,
             datatype and shape, finite values, known outputs; all before any work is queued.
4. batch, run, unbatch: :meth:`~service.batching.Admission.infer` (the batcher merges, runs off the loop and
             hands each request its own rows).
5. encode    :func:`build_outputs` + :func:`~service.protocol.encode_response` (v2) or :func:`top_k` (images).

Errors are :class:`~service.errors.ApiError` (answered with their status); anything else is a bug and goes
to :func:`service.errors.error_response`, the one error policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.batching import Admission
from service.body import read_images
from service.errors import ApiError, bad_request
from service.images import decode_images, softmax
from service.manager import ModelManager, Served
from service.model import ModelVersion, TensorInfo
from service.protocol import (
    InferRequest,
    InputTensor,
    OutputTensor,
    RequestedOutput,
    classify,
    decode_request,
    encode_response,
    label,
    top_k,
)
from service.settings import Settings


@dataclass
class InferResult:
    """What a v2 inference answers, before it is encoded for a transport."""

    model_name: str
    model_version: str
    id: str | None
    outputs: list[OutputTensor]


# ---- 1. admit -------------------------------------------------------------------------------------------------
def admit(manager: ModelManager, model: str, version: str | None) -> tuple[Served, Admission]:
    """The served version and this request's admission on its batcher.

    A swap names the new version in the manager before the old batcher stops admitting, and the lookup and
    the admission happen in one step of the event loop, so a request never meets a swapped-out batcher here;
    a batcher that refuses because the server is stopping raises :class:`Retired` (503 with Retry-After).
    """
    served = manager.get(model, version)
    return served, served.batcher.admit()


# ---- 3. validate ----------------------------------------------------------------------------------------------
def _check_tensor(tensor: InputTensor, spec: TensorInfo, allow_non_finite: bool) -> np.ndarray:
    """One input tensor checked against the model's: datatype, shape, a non-empty batch, finite values."""
    if tensor.datatype != spec.datatype:
        raise bad_request(f"input {tensor.name!r}: datatype {tensor.datatype}, expected {spec.datatype}")
    if len(tensor.shape) != len(spec.shape) + 1 or tuple(tensor.shape[1:]) != spec.shape:
        expected = [-1, *spec.shape]
        raise bad_request(f"input {tensor.name!r}: shape {list(tensor.shape)}, expected {expected} (-1: batch size)")
    if tensor.shape[0] < 1:
        raise bad_request(f"input {tensor.name!r}: the batch axis must hold at least one sample")
    x = tensor.array
    if not allow_non_finite and x.dtype.kind == "f" and not np.isfinite(x).all():
        raise bad_request(f"input {tensor.name!r} holds NaN or Inf values (allowed with BNFOLD_ALLOW_NON_FINITE)")
    return x


def _expected_inputs(model: ModelVersion) -> str:
    return ", ".join(t.describe() for t in model.inputs)


def validate_input(request: InferRequest, model: ModelVersion, allow_non_finite: bool) -> tuple[np.ndarray, ...]:
    """Every input the model takes, in the model's order, each checked for name, datatype, shape and finite
    values; all with the same batch size. A missing, unknown or repeated input is a 400 naming it."""
    given = request.inputs
    if len(given) == 1 and len(model.inputs) == 1 and given[0].name == model.inputs[0].name:  # the common case
        return (_check_tensor(given[0], model.inputs[0], allow_non_finite),)
    arrays: list[np.ndarray | None] = [None] * len(model.inputs)
    for tensor in given:
        index = model.input_index.get(tensor.name)
        if index is None:
            raise bad_request(
                f"model {model.name!r} has no input {tensor.name!r}; its inputs are {_expected_inputs(model)}"
            )
        if arrays[index] is not None:
            raise bad_request(f"input {tensor.name!r} is given more than once")
        arrays[index] = _check_tensor(tensor, model.inputs[index], allow_non_finite)
    missing = [t.describe() for t, a in zip(model.inputs, arrays, strict=True) if a is None]
    if missing:
        raise bad_request(f"model {model.name!r} needs input {', '.join(missing)}; the request does not give it")
    checked = tuple(a for a in arrays if a is not None)
    sizes = {len(a) for a in checked}
    if len(sizes) > 1:
        counts = ", ".join(f"{t.name!r} {len(a)}" for t, a in zip(model.inputs, checked, strict=True))
        raise bad_request(f"inputs hold different batch sizes ({counts}); every input needs the same number of samples")
    return checked


def check_outputs(request: InferRequest, model: ModelVersion) -> None:
    """Every requested output exists, and classification is asked only of a floating-point (N, classes) output
    (checked before the run, not after)."""
    for out in request.outputs or []:
        index = model.output_index.get(out.name)
        if index is None:
            names = ", ".join(t.describe() for t in model.outputs)
            raise bad_request(f"model {model.name!r} has no output {out.name!r}; its outputs are {names}")
        spec = model.outputs[index]
        if out.class_count and not spec.classes:
            raise bad_request(
                f"output {out.name!r}: classification needs a floating-point (N, classes) output; "
                f"it is {spec.datatype} of shape {[-1, *spec.shape]}"
            )


# ---- 2-4. decode/validate -> batch -> run -> unbatch ----------------------------------------------------------
async def run(
    served: Served, admission: Admission, request: InferRequest, settings: Settings, timeout_s: float | None = None
) -> InferResult:
    """Validate a decoded request, run it through the batcher and build its outputs.

    ``timeout_s``: a shorter wait than ``settings.request_timeout_s`` (a gRPC deadline), if any.
    """
    m = served.model
    try:
        x = validate_input(request, m, settings.allow_non_finite)
        check_outputs(request, m)
        ticket = m.queue_policy.ticket(request.priority, request.timeout_us)
    except ApiError:
        served.batcher.metrics.count("bad_request")
        raise
    timeout = settings.request_timeout_s if timeout_s is None else min(timeout_s, settings.request_timeout_s)
    outputs = await admission.infer(x, timeout, ticket)  # counts its own refusals and timeouts
    return InferResult(m.name, str(m.version), request.id, build_outputs(request, m, outputs))


# ---- 5. encode ------------------------------------------------------------------------------------------------
def build_outputs(request: InferRequest, model: ModelVersion, values: list[np.ndarray]) -> list[OutputTensor]:
    """The requested outputs (all of them, in model order, when none is named), classification applied where
    asked: labelled with the model's labels on the labelled output, with class indices on any other."""
    wanted = request.outputs or [RequestedOutput(name, None, 0) for name in model.output_names]
    outputs = []
    for out in wanted:
        binary = request.binary_output if out.binary is None else out.binary
        index = model.output_index[out.name]
        array = values[index]
        if out.class_count:
            labels = model.labels if out.name == model.labels_output else []
            outputs.append(OutputTensor(out.name, "BYTES", classify(array, out.class_count, labels), binary))
        else:
            outputs.append(OutputTensor(out.name, model.outputs[index].datatype, array, binary))
    return outputs


def count_end(served: Served, started: int, exc: BaseException | None) -> None:
    """Count one admitted request that began at ``started`` (perf_counter_ns): a success, or a fail in
    Triton's statistics (cancelled ones included).

    Expected refusals (:class:`ApiError`) are counted by their outcome where they are raised; a request whose
    client went away (its task cancelled: HTTP disconnect, gRPC cancel) is counted ``cancelled``, a failed
    run ``error``.
    """
    metrics = served.batcher.metrics
    ns = time.perf_counter_ns() - started
    if exc is None:
        metrics.succeeded(ns)
        return
    if isinstance(exc, asyncio.CancelledError):
        metrics.count("cancelled")
    elif not isinstance(exc, ApiError):
        metrics.count("error")
    metrics.stats.request("fail", ns)


@contextlib.contextmanager
def counted(served: Served) -> Iterator[None]:
    """:func:`count_end` around a block (the gRPC and image front ends; the v2 HTTP path inlines it)."""
    started = time.perf_counter_ns()
    try:
        yield
    except BaseException as exc:
        count_end(served, started, exc)
        raise
    count_end(served, started, None)


# ---- front ends -----------------------------------------------------------------------------------------------
async def infer_decoded(
    manager: ModelManager,
    model_name: str,
    version: str | None,
    decode: Callable[[], InferRequest],
    timeout_s: float | None = None,
) -> InferResult:
    """A transport that decodes its own requests (gRPC): admit -> ``decode()`` -> run, counted as over HTTP."""
    served, admission = admit(manager, model_name, version)
    with counted(served), admission:
        try:
            request = decode()
        except ApiError:
            served.batcher.metrics.count("bad_request")
            raise
        return await run(served, admission, request, manager.settings, timeout_s)


async def infer_http(
    manager: ModelManager,
    model: str,
    version: str | None,
    headers: Mapping[str, str],
    read: Callable[[Mapping[str, str], int], Awaitable[bytes]],
    returned_after: float | None,
) -> tuple[bytes, dict[str, str]]:
    """A v2 HTTP inference: ``read(headers, limit)`` gives the body (``headers`` with lower-case names, see
    :func:`service.body.read_body`), response body and headers out. ``returned_after``: how soon this client
    sends again after an answer (seconds; the slower of its last two returns on this connection), when known:
    the batcher waits for clients that come back at once (:mod:`service.batching`)."""
    settings = manager.settings
    served, admission = admit(manager, model, version)
    admission.returned_after = returned_after
    started = time.perf_counter_ns()
    try:
        with admission:
            try:
                body = await read(headers, settings.max_body_bytes)
                request = decode_request(body, headers.get("inference-header-content-length"))
            except ApiError:
                served.batcher.metrics.count("bad_request")
                raise
            result = await run(served, admission, request, settings)
        answer = encode_response(result.model_name, result.model_version, result.id, result.outputs)
    except BaseException as exc:
        count_end(served, started, exc)
        raise
    count_end(served, started, None)
    return answer


async def classify_http(
    manager: ModelManager, model: str, headers: Mapping[str, str], chunks: AsyncIterator[bytes], k: int
) -> dict[str, Any]:
    """Images in (multipart ``file`` fields or a raw PNG/JPEG body), the top ``k`` classes of each out."""
    settings = manager.settings
    served, admission = admit(manager, model, None)
    m = served.model
    with counted(served):
        with admission:
            try:
                not_images = m.image_classifier()
                if not_images is not None:
                    raise bad_request(
                        f"model {m.name!r} cannot classify images: {not_images}; send its tensors to "
                        f"/v2/models/{m.name}/infer"
                    )
                images = await read_images(headers, chunks, settings.max_body_bytes)
                x = await decode_images(images, m, settings.max_image_pixels)
            except ApiError:
                served.batcher.metrics.count("bad_request")
                raise
            outputs = await admission.infer((x,), settings.request_timeout_s)
        logits = outputs[m.output_index[m.output_name]]
        probs = softmax(logits.astype(np.float64))
        predictions = [
            {
                "filename": name,
                "top": [{"label": label(m.labels, i), "index": int(i), "probability": float(row[i])} for i in indices],
            }
            for (name, _), row, indices in zip(images, probs, top_k(probs, k), strict=True)
        ]
    return {"model_name": m.name, "model_version": str(m.version), "predictions": predictions}
