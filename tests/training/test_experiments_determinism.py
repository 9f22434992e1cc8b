"""A quick configuration of every experiment, run twice (in this process, then in two worker processes),
gives exactly the same numbers; and different seeds give different numbers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from training.experiments.common import Settings
from training.experiments.runner import EXPERIMENTS, run_experiments


def test_quick_runs_agree_exactly_in_process_and_in_workers(tmp_path: Path) -> None:
    first = Settings(tmp_path / "a", quick=True, seeds=2, jobs=1)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = run_experiments(first, list(EXPERIMENTS))
    b = run_experiments(replace(first, out=tmp_path / "b", jobs=2), list(EXPERIMENTS))
    assert [s.key for s in a] == [s.key for s in b] == list(EXPERIMENTS)
    for x, y in zip(a, b, strict=True):
        assert json.dumps(x.results) == json.dumps(y.results), x.key
        assert x.findings == y.findings and x.claims == y.claims and x.body == y.body
        assert x.results[0] != x.results[1], f"{x.key}: seeds 0 and 1 gave the same numbers"
