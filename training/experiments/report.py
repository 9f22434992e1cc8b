"""The experiment report: sections with tables and figures, and the paper-vs-ours claims table."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Claim:
    """One claim of the paper: its figure, ours, and whether they agree (None: not comparable)."""

    claim: str
    paper: str
    ours: str
    agrees: bool | None


@dataclass
class Section:
    key: str
    title: str
    body: str
    figures: list[str] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(agrees: bool | None) -> str:
    return {True: "agrees", False: "**differs**", None: "not comparable"}[agrees]


def write_report(out: Path, sections: list[Section], machine: dict[str, str], quick: bool) -> Path:
    """``out/report.md`` plus ``out/experiments.json`` (every figure and configuration)."""
    claims = [c for s in sections for c in s.claims]
    mode = "quick mode (seconds; for tests, not for conclusions)" if quick else "default mode"
    parts = [
        "# Batch Normalization, reproduced in miniature",
        "",
        f"Ran in {mode} on {machine['machine']}, Python {machine['python']}, torch {machine['torch']} "
        f"({machine['threads']} threads), finished {machine['time']}. Every experiment is seeded; its full "
        "configuration is in `experiments.json`. Nothing was tuned to agree with the paper: where ours differs, "
        "the table says so.",
        "",
        "## The paper's claims and ours",
        "",
        table(["claim", "paper", "ours", "verdict"], [[c.claim, c.paper, c.ours, verdict(c.agrees)] for c in claims]),
    ]
    for s in sections:
        parts += ["", f"## {s.title}", "", s.body, ""]
        parts += [f"![{Path(f).stem}]({Path(f).name})" for f in s.figures]
        parts += ["", f"_Took {s.seconds:.0f} s._"]
    report = out / "report.md"
    report.write_text("\n".join(parts) + "\n")
    record = {"machine": machine, "quick": quick, "sections": [{**asdict(s), "body": None} for s in sections]}
    (out / "experiments.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return report


def copy_to_docs(out: Path, docs: Path) -> Path:
    """docs/reproduction.md with its figures in docs/reproduction/ (links rewritten)."""
    figures = docs / "reproduction"
    figures.mkdir(parents=True, exist_ok=True)
    text = (out / "report.md").read_text()
    for png in sorted(out.glob("*.png")):
        shutil.copy(png, figures / png.name)
        text = text.replace(f"]({png.name})", f"](reproduction/{png.name})")
    shutil.copy(out / "experiments.json", figures / "experiments.json")
    text = text.replace("`experiments.json`", "`reproduction/experiments.json`")
    target = docs / "reproduction.md"
    target.write_text(text)
    return target
