"""The verdict rule: agrees / differs / inconclusive across seeds, and the paired test for two estimators."""

from __future__ import annotations

import pytest

from training.experiments.verdicts import ClaimSpec, judge, needed, paired_p, rule_text, summary


def _greater(a: str = "a", b: str = "b", paired: bool = False) -> ClaimSpec:
    return ClaimSpec(
        "a beats b",
        "paper",
        lambda f: f[a] >= f[b],
        lambda f: f"{f[a]} vs {f[b]}",
        (a, b),
        paired=(a, b) if paired else None,
    )


def _seeds(pairs: list[tuple[float, float]]) -> list[dict[str, float]]:
    return [{"a": a, "b": b} for a, b in pairs]


def test_needed_is_four_of_five_and_the_rule_says_so() -> None:
    assert [needed(n) for n in (1, 2, 3, 5, 10)] == [1, 2, 3, 4, 8]
    assert "at least 4 of the 5 seeds" in rule_text(5)


def test_agrees_needs_the_mean_and_four_of_five_seeds() -> None:
    four = judge(_greater(), _seeds([(1, 0), (1, 0), (1, 0), (1, 0), (0, 0.5)]))
    assert four["verdict"] == "agrees" and four["holds_per_seed"] == [True] * 4 + [False]
    three = judge(_greater(), _seeds([(1, 0), (1, 0), (1, 0), (0, 0.5), (0, 0.5)]))
    assert three["holds_for_mean"] and three["verdict"] == "inconclusive"


def test_four_seeds_holding_do_not_agree_when_the_mean_fails() -> None:
    record = judge(_greater(), _seeds([(0.51, 0.5)] * 4 + [(0.0, 1.0)]))
    assert not record["holds_for_mean"] and record["verdict"] == "inconclusive"


def test_differs_needs_the_mean_and_four_of_five_seeds_failing() -> None:
    assert judge(_greater(), _seeds([(0, 1)] * 4 + [(1, 0)]))["verdict"] == "differs"
    assert judge(_greater(), _seeds([(0, 1)] * 3 + [(1, 0)] * 2))["verdict"] == "inconclusive"


def test_spread_and_per_seed_values_are_recorded() -> None:
    record = judge(_greater(), _seeds([(1, 0), (3, 0)]))
    assert record["quantities"]["a"] == {
        "mean": 2.0,
        "std": pytest.approx(2**0.5),
        "min": 1.0,
        "max": 3.0,
        "values": [1.0, 3.0],
    }
    assert record["ours"] == "2.0 vs 0.0"  # described from the mean findings


def test_paired_claim_differs_only_when_the_paired_test_says_so() -> None:
    worse = _seeds([(0.90, 0.92), (0.91, 0.92), (0.89, 0.92), (0.90, 0.91), (0.88, 0.92)])
    record = judge(_greater(paired=True), worse)
    assert record["paired"]["p"] < 0.05 and record["verdict"] == "differs"
    # the mean fails and 4 of 5 seeds fail, but one seed's large gain keeps the paired test from rejecting
    noisy = _seeds([(0.90, 0.91), (0.90, 0.91), (0.90, 0.91), (0.90, 0.91), (0.935, 0.91)])
    record = judge(_greater(paired=True), noisy)
    assert not record["holds_for_mean"] and record["paired"]["p"] > 0.05 and record["verdict"] == "inconclusive"
    tied = judge(_greater(paired=True), _seeds([(0.9, 0.9)] * 5))
    assert tied["verdict"] == "agrees" and tied["paired"]["p"] == 1.0


def test_paired_p_edge_cases() -> None:
    assert paired_p([0.8, 0.8, 0.8], [0.9, 0.9, 0.9]) == 0.0  # every seed worse by the same amount
    assert paired_p([0.9], [0.8]) != paired_p([0.9], [0.8])  # NaN with one seed: no test
    assert summary([0.5])["std"] == 0.0
