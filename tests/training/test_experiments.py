"""--quick runs of every experiment: they run end to end and produce their figures, record and report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

FIGURES = ("fig1_mlp.png", "fig2_convnet.png", "popstats.png")


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training.experiments", *args], capture_output=True, text=True, timeout=timeout
    )


def test_quick_experiments_write_report_figures_and_docs(tmp_path: Path) -> None:
    out, docs = tmp_path / "out", tmp_path / "docs"
    proc = _run("--quick", "--seeds", "2", "--jobs", "1", "--out", str(out), "--docs", str(docs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    for heading in (
        "## How a verdict is reached",
        "## The paper's claims and ours",
        "Section 4.1 / Figure 1",
        "Section 4.2 / Figure 2",
        "EMA vs Algorithm 2",
    ):
        assert heading in report
    assert "quick mode" in report and "with 2 seeds (0, 1;" in report and "at least 2 of the 2 seeds" in report
    record = json.loads((out / "experiments.json").read_text())
    assert f"commit `{record['provenance']['commit']}`" in report and len(record["provenance"]["commit"]) == 40
    assert "torch 2." in report and "scipy " in report
    for png in FIGURES:  # one figure per experiment
        with Image.open(out / png) as img:
            assert img.width > 500 and img.height > 300
        assert f"]({png})" in report and f"](reproduction/{png})" in (docs / "reproduction.md").read_text()
    assert [s["key"] for s in record["sections"]] == ["fig1", "fig2", "popstats"]
    for section in record["sections"]:
        assert section["seeds"] == [0, 1] and len(section["results"]) == 2 and len(section["seconds"]) == 2
        for claim in section["claims"]:
            assert claim["paper"] and claim["ours"] and claim["verdict"] in ("agrees", "differs", "inconclusive")
            assert len(claim["holds_per_seed"]) == 2
            for q in claim["quantities"].values():
                assert len(q["values"]) == 2 and q["min"] <= q["mean"] <= q["max"]
    pop = record["sections"][2]
    assert set(pop["results"][0]["accuracy"]) == {"4", "32"}
    assert {c["source"] for c in pop["claims"]} == {"bnfold"} and all("paired" in c for c in pop["claims"])
    assert "bnfold's expectation, not the paper's" in report and "*bnfold*" in report


def test_only_one_experiment(tmp_path: Path) -> None:
    proc = _run("--quick", "--seeds", "1", "--jobs", "1", "--only", "popstats", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (tmp_path / "report.md").read_text()
    assert "EMA vs Algorithm 2" in report and "Figure 1" not in report
    assert (tmp_path / "popstats.png").is_file() and not (tmp_path / "fig1_mlp.png").exists()


def test_seeds_and_jobs_must_be_positive(tmp_path: Path) -> None:
    for flag in ("--seeds", "--jobs"):
        proc = _run("--quick", flag, "0", "--out", str(tmp_path), timeout=120)
        assert proc.returncode == 2
        assert f"argument {flag}: expected a whole number of at least 1, got '0'" in proc.stderr
