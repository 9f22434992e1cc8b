"""Bounded property-based fuzzing (hypothesis): the v2 codec answers any body with a request or a 4xx, and the
app, in-process, answers any request to its OpenAPI paths without a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.errors import ApiError
from service.protocol import DATATYPES, decode_request
from tests.service.conftest import make_client

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=40,
)
datatypes = st.sampled_from([*DATATYPES, "BYTES", "FP8", ""])
shapes = st.lists(st.integers(min_value=-2, max_value=2**65), max_size=6) | json_values
tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["input", "x"]) | json_scalars, "datatype": datatypes | json_scalars, "shape": shapes},
    optional={
        "data": json_values,
        "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(min_value=-1, max_value=2**65)})
        | json_values,
    },
)
requests = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=3) | json_values},
    optional={
        "id": json_scalars,
        "outputs": st.lists(
            st.fixed_dictionaries({"name": st.text(max_size=8)}, optional={"parameters": json_values}), max_size=2
        )
        | json_values,
        "parameters": st.fixed_dictionaries({"binary_data_output": json_scalars}),
    },
)


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()  # the standard library writes integers of any size (and Infinity)


@SETTINGS
@given(doc=requests, tail=st.binary(max_size=64), binary=st.booleans())
@example(doc={"inputs": [{"\x00": None}]}, tail=b"", binary=False)  # found by this test: simdjson's KeyError
def test_decode_request_returns_a_request_or_a_4xx(doc: dict[str, Any], tail: bytes, binary: bool) -> None:
    header = _dumps(doc)
    try:
        decode_request(header + tail if binary else header, str(len(header)) if binary else None)
    except ApiError as exc:
        assert 400 <= exc.status < 500


@SETTINGS
@given(body=st.binary(max_size=256), header=st.none() | st.text(max_size=6))
def test_decode_request_survives_arbitrary_bytes(body: bytes, header: str | None) -> None:
    try:
        decode_request(body, header)
    except ApiError as exc:
        assert 400 <= exc.status < 500


@pytest.fixture(scope="module")
def app_client(model_repo: Path) -> Iterator[TestClient]:
    with make_client(model_repo, api_key="k", max_body_bytes=4096) as c:
        yield c


segments = st.sampled_from(["digits", "1", "01", "0", "nope", "..", "\u0661", "%00", "a" * 200]) | st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/?#%"), min_size=1, max_size=6
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/octet-stream",
        "image/png",
        "image/jpeg",
        "multipart/form-data; boundary=b",
        "multipart/form-data",
        "text/plain",
        "",
    ]
)


@SETTINGS
@given(
    route=st.sampled_from(["infer", "version_infer", "classify", "meta", "ready", "config", "load"]),
    model=segments,
    version=segments,
    body=st.one_of(requests.map(_dumps), st.binary(max_size=300)),
    content_type=content_types,
    extra=st.dictionaries(
        st.sampled_from(["Inference-Header-Content-Length", "Content-Encoding", "X-API-Key"]),
        st.sampled_from(["0", "12", "-1", "x", "gzip", "deflate", "br", "k", "99999999999999999999"]),
        max_size=2,
    ),
)
def test_the_app_never_answers_5xx(
    app_client: TestClient,
    route: str,
    model: str,
    version: str,
    body: bytes,
    content_type: str,
    extra: dict[str, str],
) -> None:
    model, version = quote(model, safe=""), quote(version, safe="")
    path = {
        "infer": f"/v2/models/{model}/infer",
        "version_infer": f"/v2/models/{model}/versions/{version}/infer",
        "classify": f"/v1/models/{model}/classify?top_k={version}",
        "meta": f"/v2/models/{model}/versions/{version}",
        "ready": f"/v2/models/{model}/ready",
        "config": f"/v2/models/{model}/versions/{version}/config",
        "load": f"/v2/repository/models/{model}/unload" if model != "digits" else "/v2/repository/index",
    }[route]
    headers = {"Content-Type": content_type, **extra} if content_type else extra
    method = "GET" if route in ("meta", "ready", "config") else "POST"
    r = app_client.request(method, path, content=body if method == "POST" else None, headers=headers)
    assert r.status_code < 500, (path, headers, body[:200], r.status_code, r.text)
    doc = r.json()  # an object, or a list (the repository index, when the drawn key is the configured one)
    assert not isinstance(doc, dict) or set(doc) != {"error"} or doc["error"], r.text
