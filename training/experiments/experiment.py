"""The shape every experiment has: a plan, one run per seed, and a summary across seeds with judged claims."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.data import Dataset
from training.experiments.common import Settings, Tick, Timing
from training.experiments.verdicts import ClaimSpec, Findings, judge

Result = dict[str, Any]  # one seed's raw measurements, JSON-able


@dataclass
class Section:
    """One experiment's part of the report: prose and tables, figures, judged claims, and its raw record."""

    key: str
    title: str
    body: str
    figures: list[str]
    claims: list[dict[str, Any]]
    plan: dict[str, Any]
    seeds: list[int]
    results: list[Result]
    findings: list[Findings]
    seconds: list[Timing] = field(default_factory=list)  # per seed


@dataclass(frozen=True)
class Experiment:
    """An experiment's entry points.

    ``plan(settings, data)`` fixes its configuration (a picklable object); ``steps(plan)`` is how many training
    steps one seed takes (for the progress bar); ``run_seed(plan, data, seed, tick)`` trains and measures one
    seed; ``findings(plan, result)`` reduces a result to the numbers the claims test; ``claims(plan)`` states them;
    ``body(plan, results, settings)`` writes the section's prose and tables; ``plot(plan, results, path)`` draws
    its figure (mean with a band across seeds).
    """

    key: str
    title: str
    figure: str
    plan: Callable[[Settings, Dataset], Any]
    steps: Callable[[Any], int]
    run_seed: Callable[[Any, Dataset, int, Tick | None], Result]
    findings: Callable[[Any, Result], Findings]
    claims: Callable[[Any], list[ClaimSpec]]
    body: Callable[[Any, list[Result], Settings], str]
    plot: Callable[[Any, list[Result], Path], None]

    def summarize(
        self, settings: Settings, plan: Any, results: list[Result], seconds: list[Timing], plan_record: dict[str, Any]
    ) -> Section:
        """Judge every claim across seeds, draw the figure and assemble the section."""
        findings = [self.findings(plan, r) for r in results]
        self.plot(plan, results, settings.out / self.figure)
        return Section(
            key=self.key,
            title=self.title,
            body=self.body(plan, results, settings),
            figures=[self.figure],
            claims=[judge(spec, findings) for spec in self.claims(plan)],
            plan=plan_record,
            seeds=settings.run_seeds,
            results=results,
            findings=findings,
            seconds=seconds,
        )
