"""The page's routes without a browser: the JSON it is drawn from, its headers, and BNFOLD_UI=false.

The page itself, in a real Chromium, is tested in ``test_ui_browser.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.ui.proof import proof, read_proof
from service.ui.summary import base_name
from tests.service.conftest import make_client

ROOT = Path(__file__).resolve().parents[2]
DIGIT = Path(__file__).parent / "data" / "digit.png"
PAGE_ROUTES = ["/", "/ui/static/app.js", "/ui/static/style.css", "/ui/api/models", "/ui/api/live"]


@pytest.mark.parametrize("path", PAGE_ROUTES)
def test_every_page_answer_forbids_inline_scripts_and_other_origins(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200, r.text
    csp = dict(part.strip().split(" ", 1) for part in r.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["script-src"] == "'self'" and csp["connect-src"] == "'self'"
    assert "unsafe-inline" not in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", PAGE_ROUTES)
def test_without_the_ui_setting_the_page_routes_do_not_exist(model_repo: Path, path: str) -> None:
    with make_client(model_repo, ui=False) as c:
        assert c.get(path).status_code == 404
        assert c.get("/v2/health/ready").status_code == 200  # the API is untouched


def test_the_page_is_read_only(client: TestClient) -> None:
    for path in PAGE_ROUTES:
        assert client.post(path).status_code in (404, 405), path


def test_the_models_document_shows_the_demo_model_and_its_proof(client: TestClient, model_repo: Path) -> None:
    doc = client.get("/ui/api/models").json()
    assert doc["ready"] is True
    (model,) = doc["models"]
    assert (model["name"], model["state"], model["variants"]) == ("digits", "READY", ["digits"])
    (v,) = model["versions"]
    assert v["version"] == "1" and v["precision"] == "float32" and v["provider"] == "CPUExecutionProvider"
    assert v["input"]["shape"] == [-1, 1, 8, 8] and v["input"]["canvas"] and v["input"]["takes_images"]
    assert len(v["input"]["normalization"]["mean"]) == 1
    assert v["source"]["kind"] == "checkpoint"
    report = json.loads((model_repo / "digits" / "1" / "export_report.json").read_text())
    assert [r["bn"] for r in v["proof"]["fold"]] == [r["bn"] for r in report["fold"]["rows"]]
    assert [c["name"] for c in v["proof"]["checks"]] == [c["name"] for c in report["verification"]]
    assert all(c["passed"] for c in v["proof"]["checks"])
    assert 0.9 <= v["proof"]["top1_agreement"] <= 1.0


def test_the_live_document_counts_requests_from_the_servers_registry(client: TestClient) -> None:
    def digits_series() -> dict[str, object]:
        (series,) = [s for s in client.get("/ui/api/live").json()["series"] if s["model"] == "digits"]
        return series

    before = digits_series()
    r = client.post("/v1/models/digits/classify", content=DIGIT.read_bytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    after = digits_series()
    assert after["requests"].get("success", 0) == before["requests"].get("success", 0) + 1  # type: ignore[attr-defined]
    assert after["latency"][-1] == [None, after["latency_count"]]  # +Inf bucket, as JSON null
    assert after["batches"] >= 1 and after["queue_depth"] == 0


def test_a_check_over_its_bound_is_a_failure_even_if_the_report_says_passed() -> None:
    check = {"name": "onnx", "passed": True, "samples": 4, "candidate": {"max": 2e-3}, "original": {"max": 1e-7}}
    shown = proof({"verification": [{**check, "bound": 1e-6}, {**check, "candidate": {"max": 1e-7}, "bound": 1e-6}]})
    assert [c["passed"] for c in shown["checks"]] == [False, True]
    assert shown["checks"][0]["error"] == 2e-3 and shown["checks"][0]["bound"] == 1e-6


def test_int8_shows_the_gate_and_the_most_sensitive_layers_first() -> None:
    layers = [{"layer": f"conv{i}", "op": "Conv", "added_noise_db": db} for i, db in enumerate([3.0, 9.0, None, 5.0])]
    shown = proof({"int8": {"gate": {"passed": True, "agreement": 0.99}, "layers": layers, "verification": []}})
    assert shown["int8"]["gate"]["agreement"] == 0.99
    assert [la["layer"] for la in shown["int8"]["layers"]] == ["conv1", "conv3", "conv0"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "no export_report.json in"), ("{not json", "is unreadable"), ("[1, 2]", "expected a JSON object")],
)
def test_a_missing_or_broken_report_is_said_not_raised(tmp_path: Path, content: str | None, expected: str) -> None:
    if content is not None:
        (tmp_path / "export_report.json").write_text(content)
    found, note = read_proof(tmp_path)
    assert found is None and expected in note and str(tmp_path) in note


def test_variants_are_grouped_under_their_model() -> None:
    assert [base_name(n) for n in ("digits", "digits-fp16", "digits-int8", "-int8")] == [
        "digits", "digits", "digits", "-int8"
    ]  # fmt: skip


def test_the_readme_page_section_matches_the_code() -> None:
    import re

    from service.ui.routes import STATIC
    from service.ui.summary import CANVAS_MAX_PIXELS
    from tests.test_docs import section

    text = " ".join(section("### The page: `http://127.0.0.1:8000/`").split())
    script = (STATIC / "app.js").read_text()
    refresh = int(re.search(r"const REFRESH_MS = (\d+);", script).group(1))  # type: ignore[union-attr]
    top_k = int(re.search(r"classify\?top_k=(\d+)", script).group(1))  # type: ignore[union-attr]
    assert f"refreshed every {refresh // 1000} s" in text and f"the top {top_k} labels" in text
    assert CANVAS_MAX_PIXELS == 64 * 64 and "up to 64x64 pixels" in text
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    assert "(`make demo` prints it)" in text and 'echo "open the page: http://127.0.0.1:$PORT/ ' in demo
