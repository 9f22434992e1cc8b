"""Claims judged across seeds: per-seed findings, their mean and spread, and a verdict by a stated rule.

A *finding* is one number an experiment measures on one seed (a best accuracy, a step count). A claim is a
predicate over the findings of one run. It is evaluated on every seed's findings and on the mean findings
(each finding averaged over seeds), and judged by :data:`RULE`:

* agrees: the claim holds for the mean and for at least ``ceil(0.8 n)`` of the ``n`` seeds (4 of 5);
* differs: it fails for the mean and for at least ``ceil(0.8 n)`` seeds;
* inconclusive: anything else.

A *paired* claim compares two estimators on the same weights (finding ``a`` at least ``b``). It agrees by the
same rule applied to the differences ``a - b``; it differs when a one-sided paired t-test across seeds finds
``a`` below ``b`` at p < 0.05; anything else is inconclusive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

Findings = dict[str, float]

AGREE_FRACTION = 0.8
ALPHA = 0.05
RULE = (
    "A claim **agrees** when it holds for the mean over seeds and for at least {k} of the {n} seeds, **differs** "
    "when it fails for the mean and for at least {k} seeds, and is **inconclusive** otherwise. A comparison "
    "between two estimators on the same weights (EMA vs Algorithm 2) is judged on the per-seed differences: it "
    "agrees by the same rule, differs when a one-sided paired t-test across seeds puts the expected winner below "
    f"the other at p < {ALPHA}, and is inconclusive otherwise."
)


def needed(n: int) -> int:
    """How many of ``n`` seeds must hold (or fail) for a verdict: ``ceil(0.8 n)``, 4 of 5."""
    return max(1, math.ceil(AGREE_FRACTION * n - 1e-9))


def rule_text(n: int) -> str:
    """:data:`RULE` for ``n`` seeds."""
    return RULE.format(k=needed(n), n=n)


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation, min, max and the per-seed values."""
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "values": [float(x) for x in v],
    }


def mean_findings(per_seed: Sequence[Findings]) -> Findings:
    """Each finding averaged over seeds (every seed must report the same findings)."""
    return {key: float(np.mean([f[key] for f in per_seed])) for key in per_seed[0]}


def paired_p(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided paired t-test p-value for "mean(a - b) < 0"; NaN with fewer than two seeds.

    When every difference is the same the t statistic is undefined; p is then 0 if that difference is negative
    (every seed says a < b by the same amount) and 1 otherwise.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(d) < 2:
        return float("nan")
    if np.all(d == d[0]):
        return 0.0 if d[0] < 0 else 1.0
    return float(stats.ttest_rel(a, b, alternative="less").pvalue)


@dataclass(frozen=True)
class ClaimSpec:
    """One claim: what it says, the paper's figure, whose claim it is, and how to test it on findings."""

    claim: str
    paper: str
    holds: Callable[[Findings], bool]
    describe: Callable[[Findings], str]  # "ours", from the mean findings
    quantities: tuple[str, ...]  # findings whose mean and spread the report shows
    source: str = "paper"  # or "bnfold" for bnfold's own expectation
    paired: tuple[str, str] | None = None  # (a, b): the claim is a >= b on the same weights


def judge(spec: ClaimSpec, per_seed: Sequence[Findings]) -> dict[str, Any]:
    """Evaluate ``spec`` on every seed and on the mean; the verdict by :data:`RULE`. JSON-able."""
    n = len(per_seed)
    mean = mean_findings(per_seed)
    seeds_hold = [bool(spec.holds(f)) for f in per_seed]
    mean_holds = bool(spec.holds(mean))
    k = needed(n)
    record: dict[str, Any] = {
        "claim": spec.claim,
        "paper": spec.paper,
        "source": spec.source,
        "ours": spec.describe(mean),
        "holds_for_mean": mean_holds,
        "holds_per_seed": seeds_hold,
        "quantities": {q: summary([f[q] for f in per_seed]) for q in spec.quantities},
    }
    agrees = mean_holds and sum(seeds_hold) >= k
    if spec.paired is not None:
        a, b = ([f[key] for f in per_seed] for key in spec.paired)
        p = paired_p(a, b)
        record["paired"] = {
            "a": spec.paired[0],
            "b": spec.paired[1],
            "difference": summary(np.subtract(a, b).tolist()),
            "p": p,
        }
        differs = not agrees and p < ALPHA
    else:
        differs = not mean_holds and n - sum(seeds_hold) >= k
    record["verdict"] = "agrees" if agrees else "differs" if differs else "inconclusive"
    return record
