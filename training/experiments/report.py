"""The experiment record (``experiments.json``) and the Markdown report, which is a pure function of it.

``report.md`` (and ``docs/reproduction.md``) are rendered from the record alone, so a committed report can be
checked against its committed record, and the record against the current code.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from training.experiments.common import Settings
from training.experiments.experiment import Section
from training.experiments.markdown import table
from training.experiments.verdicts import rule_text

DOCS_FIGURES = "reproduction"


def make_record(settings: Settings, sections: list[Section], provenance: dict[str, Any], wall: float) -> dict[str, Any]:
    """Everything the report shows, and every seed's raw numbers."""
    return {
        "provenance": provenance,
        "settings": {
            "quick": settings.quick,
            "dataset": settings.dataset,
            "split_seed": settings.seed,
            "seeds": settings.run_seeds,
            "jobs": settings.jobs,
        },
        "rule": rule_text(settings.seeds),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(sum(t["cpu"] for s in sections for t in s.seconds), 1),
        "sections": [asdict(s) for s in sections],
    }


def _header(record: dict[str, Any]) -> list[str]:
    s, p = record["settings"], record["provenance"]
    mode = "quick mode (seconds; for tests, not for conclusions)" if s["quick"] else "default mode"
    libs = ", ".join(f"{k} {v}" for k, v in p["versions"].items())
    wall, cpu = record["wall_seconds"], record["cpu_seconds"]
    commit = f"`{p['commit']}`" + (" with uncommitted changes" if p["dirty"] else "") if p["commit"] else "unknown"
    return [
        "# Batch Normalization, reproduced in miniature",
        "",
        f"Ran in {mode} on {s['dataset']} with {len(s['seeds'])} seeds ({', '.join(map(str, s['seeds']))}; the "
        f"validation split is fixed by seed {s['split_seed']}, the seeds vary initialisation and batch order). "
        f"Produced from commit {commit}; {libs}. Machine: {p['machine']}"
        + (f" ({p['cpu']}: float32 results are bit-exact only on the same processor)" if "cpu" in p else "")
        + f", {p['workers']} worker process(es) of "
        f"{p['threads_per_run']} torch thread; {wall:.0f} s wall-clock and {cpu:.0f} s of CPU in the runs (on idle "
        f"cores about {cpu / p['workers']:.0f} s wall-clock), finished {p['finished']}. "
        f"Every seed's numbers and every configuration are in `{{json}}`. Nothing was tuned to agree with the "
        "paper: where ours differs, the table says so.",
        "",
        "## How a verdict is reached",
        "",
        record["rule"] + " Claims marked *bnfold* are bnfold's own expectation, not the paper's; they are judged "
        "by the same rule.",
    ]


def _claims(record: dict[str, Any]) -> list[str]:
    claims = [c for s in record["sections"] for c in s["claims"]]
    rows = [
        [
            c["claim"],
            "*bnfold*" if c["source"] == "bnfold" else "paper",
            c["paper"],
            c["ours"],
            f"{sum(c['holds_per_seed'])} of {len(c['holds_per_seed'])}",
            "yes" if c["holds_for_mean"] else "no",
            c["verdict"] if c["verdict"] == "agrees" else f"**{c['verdict']}**",
        ]
        for c in claims
    ]
    spread = [
        [
            name,
            f"{q['mean']:.4g}",
            f"{q['std']:.3g}",
            f"{q['min']:.4g} - {q['max']:.4g}",
            ", ".join(f"{v:.4g}" for v in q["values"]),
        ]
        for name, q in {k: v for c in claims for k, v in c["quantities"].items()}.items()
    ]
    return [
        "",
        "## The paper's claims and ours",
        "",
        table(
            ["claim", "whose", "paper", "ours (mean over seeds)", "holds in seeds", "holds for mean", "verdict"], rows
        ),
        "",
        "The numbers behind each claim, across seeds (sd: sample standard deviation):",
        "",
        table(["quantity", "mean", "sd", "min - max", "per seed"], spread),
    ]


def render(record: dict[str, Any], figures: str = "") -> str:
    """The Markdown report of ``record``; figure links and the record's name are prefixed with ``figures``/."""
    prefix = f"{figures}/" if figures else ""
    parts = [line.replace("{json}", f"{prefix}experiments.json") for line in _header(record)] + _claims(record)
    for s in record["sections"]:
        parts += ["", f"## {s['title']}", "", s["body"], ""]
        parts += [f"![{Path(f).stem}]({prefix}{f})" for f in s["figures"]]
        cpu = [t["cpu"] for t in s["seconds"]]
        wall = sum(t["wall"] for t in s["seconds"])
        parts += [
            "",
            f"_Took {sum(cpu):.0f} s of CPU ({min(cpu):.0f} to {max(cpu):.0f} s per seed); "
            f"{wall:.0f} s wall-clock summed over its runs._",
        ]
    return "\n".join(parts) + "\n"


def write_report(out: Path, record: dict[str, Any]) -> Path:
    """``out/experiments.json`` and ``out/report.md``."""
    text = json.dumps(record, indent=1) + "\n"
    (out / "experiments.json").write_text(text)
    report = out / "report.md"
    report.write_text(render(json.loads(text)))  # exactly what a reader of the record would render
    return report


def copy_to_docs(out: Path, docs: Path) -> Path:
    """docs/reproduction.md with its figures and record in docs/reproduction/."""
    figures = docs / DOCS_FIGURES
    figures.mkdir(parents=True, exist_ok=True)
    for png in sorted(out.glob("*.png")):
        shutil.copy(png, figures / png.name)
    shutil.copy(out / "experiments.json", figures / "experiments.json")
    record = json.loads((out / "experiments.json").read_text())
    target = docs / "reproduction.md"
    target.write_text(render(record, DOCS_FIGURES))
    return target
