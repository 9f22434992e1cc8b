"""--quick runs of every experiment: they run end to end and produce their figures and report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image


def test_quick_experiments_write_report_figures_and_docs(tmp_path: Path) -> None:
    out, docs = tmp_path / "out", tmp_path / "docs"
    proc = subprocess.run(
        [sys.executable, "-m", "training.experiments", "--quick", "--out", str(out), "--docs", str(docs)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    for heading in (
        "## The paper's claims and ours",
        "Section 4.1 / Figure 1",
        "Section 4.2 / Figure 2",
        "EMA vs Algorithm 2",
    ):
        assert heading in report
    assert "quick mode" in report and "CPU cores" in report
    for png in ("fig1_mlp.png", "fig2_convnet.png"):
        with Image.open(out / png) as img:
            assert img.width > 500 and img.height > 300
        assert f"]({png})" in report
    record = json.loads((out / "experiments.json").read_text())
    assert {s["key"] for s in record["sections"]} == {"fig1", "fig2", "popstats"}
    fig2 = next(s for s in record["sections"] if s["key"] == "fig2")
    assert len(fig2["config"]["curves"]) == 6
    pop = next(s for s in record["sections"] if s["key"] == "popstats")["config"]["results"]
    assert set(pop) == {"4", "32"} and {"EMA 0.01", "EMA 0.1", "EMA 0.5", "cumulative", "Algorithm 2"} <= set(pop["4"])
    # every claim carries the paper's figure, ours and a verdict
    for claim in (c for s in record["sections"] for c in s["claims"]):
        assert claim["paper"] and claim["ours"] and claim["agrees"] in (True, False, None)
    copied = (docs / "reproduction.md").read_text()
    assert "](reproduction/fig1_mlp.png)" in copied and (docs / "reproduction" / "fig2_convnet.png").is_file()


def test_only_one_experiment(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "training.experiments", "--quick", "--only", "popstats", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (tmp_path / "report.md").read_text()
    assert "EMA vs Algorithm 2" in report and "Figure 1" not in report
