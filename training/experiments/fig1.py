"""Section 4.1 / Figure 1: the 3 x 100 sigmoid MLP with and without BN, mini-batches of 60.

(a) validation accuracy against training steps; (b, c) the 15th, 50th and 85th percentiles of the input to
one sigmoid of the last hidden layer over training, without and with BN. The percentiles are taken over a
fixed set of validation samples passed through the network as training sees it (BN on batch statistics).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.data import Dataset
from training.experiments import plots
from training.experiments.common import CurvePlan, Settings, Tick, best, eval_steps, make, padded, steps_to, train_curve
from training.experiments.experiment import Experiment, Result
from training.experiments.markdown import pm, table
from training.experiments.verdicts import ClaimSpec, Findings

PERCENTILES = (15, 50, 85)
NAMES = {False: "without BN", True: "with BN"}


@dataclass(frozen=True)
class Plan(CurvePlan):
    """Figure 1's run: the MLP for ``steps`` mini-batches of ``batch_size`` at rate ``lr``."""

    batch_size: int = 60
    lr: float = 0.05
    probe: int = 60  # validation samples whose sigmoid inputs are tracked


def plan(settings: Settings, data: Dataset) -> Plan:
    if settings.quick:
        return Plan(steps=40, every=10)
    if settings.dataset == "mnist":
        return Plan(steps=50_000, every=1000)  # the paper's Figure 1 runs 50k steps of 60 images
    return Plan(steps=6000, every=100)


def _probe(fixed: torch.Tensor) -> Any:
    def record(model: nn.Module) -> dict[str, Any]:
        probe = copy.deepcopy(model).train()  # the training network; the copy keeps the real statistics intact
        seen: list[torch.Tensor] = []
        last_sigmoid = [m for m in probe.modules() if isinstance(m, nn.Sigmoid)][-1]
        handle = last_sigmoid.register_forward_pre_hook(lambda _m, args: seen.append(args[0][:, 0].detach()))
        with torch.no_grad():
            probe(fixed)
        handle.remove()
        return {"percentiles": np.percentile(seen[0].numpy(), PERCENTILES).tolist()}

    return record


def run_seed(p: Plan, data: Dataset, seed: int, tick: Tick | None) -> Result:
    curves = {}
    for use_bn in (False, True):
        model = make("mlp", data, seed, batch_norm=use_bn, activation="sigmoid")
        curve = train_curve(
            NAMES[use_bn],
            data,
            model,
            steps=p.steps,
            batch_size=p.batch_size,
            lr=p.lr,
            eval_every=p.every,
            seed=seed,
            record=_probe(data.val_x[: p.probe]),
            tick=tick,
        )
        curves[NAMES[use_bn]] = curve.record()
    return {"curves": curves}


def _relative(curve: dict[str, Any]) -> np.ndarray:
    """The sigmoid input's percentiles (records, 3), centred on the first median, in units of the first spread.

    Each seed's tracked unit sits at its own place, so only this relative scale is comparable across seeds.
    """
    pct = np.asarray(curve["percentiles"])
    return (pct - pct[0, 1]) / max(float(pct[0, 2] - pct[0, 0]), 1e-6)


def _drift(curve: dict[str, Any]) -> float:
    """How far the sigmoid input's percentiles moved over training, in units of their initial spread."""
    rel = _relative(curve)
    return float(np.abs(rel - rel[0]).max())


def findings(p: Plan, result: Result) -> Findings:
    plain, bn = result["curves"]["without BN"], result["curves"]["with BN"]
    target = best(plain)
    return {
        "best_plain": best(plain),
        "best_bn": best(bn),
        "steps_plain": steps_to(plain, target, p.never),
        "steps_bn": steps_to(bn, target, p.never),
        "to90_plain": steps_to(plain, 0.9, p.never),
        "to90_bn": steps_to(bn, 0.9, p.never),
        "drift_plain": _drift(plain),
        "drift_bn": _drift(bn),
    }


def claims(p: Plan) -> list[ClaimSpec]:
    return [
        ClaimSpec(
            "4.1: with BN the network reaches higher test accuracy, faster",
            "Figure 1(a): BN curve above the baseline throughout 50k steps on MNIST",
            lambda f: f["best_bn"] >= f["best_plain"] and f["steps_bn"] <= f["steps_plain"],
            lambda f: (
                f"best {f['best_bn']:.4f} vs {f['best_plain']:.4f}; the no-BN best reached at step "
                f"{f['steps_bn']:.0f} with BN vs {f['steps_plain']:.0f} without"
            ),
            ("best_bn", "best_plain", "steps_bn", "steps_plain"),
        ),
        ClaimSpec(
            "4.1: BN keeps the sigmoid's input distribution stable",
            "Figure 1(b, c): percentiles drift without BN, steady with BN",
            lambda f: f["drift_bn"] < f["drift_plain"],
            lambda f: f"drift {f['drift_plain']:.2f} without vs {f['drift_bn']:.2f} with BN",
            ("drift_bn", "drift_plain"),
        ),
    ]


def body(p: Plan, results: list[Result], settings: Settings) -> str:
    found = [findings(p, r) for r in results]
    rows = [
        [name, *(pm([f[f"{key}_{tag}"] for f in found], fmt) for key, fmt in KEYS)]
        for tag, name in (("plain", "without BN"), ("bn", "with BN"))
    ]
    header = ["network", "best val acc", "steps to 90%", "steps to the no-BN best", "sigmoid input drift"]
    return (
        f"SGD with momentum 0.9, learning rate {p.lr} for both networks, mini-batches of {p.batch_size}, "
        f"{p.steps} steps on {settings.dataset}; validation accuracy every {p.every} steps. Mean ± standard "
        f"deviation over {len(results)} seeds; a run that never reaches a target counts as {p.never} steps.\n\n"
        + table(header, rows)
        + "\n\n_Drift: the largest move of the 15/50/85th percentiles from their first value, in units of "
        "their first 15-85 spread. Figure 1(b, c) shows the percentiles on that relative scale (first median 0, "
        "first 15-85 spread 1), since each seed's tracked unit sits at its own place._"
    )


KEYS = (("best", ".4f"), ("to90", ".0f"), ("steps", ".0f"), ("drift", ".2f"))


def plot(p: Plan, results: list[Result], path: Path) -> None:
    fig, axes = plots.figure(3)
    first = eval_steps(p.steps, p.every)
    for name in NAMES.values():
        rows = [padded(r["curves"][name]["val_acc"], len(first)) for r in results]
        plots.band(axes[0], first, rows, name)
    axes[0].set(xlabel="training step", ylabel="validation accuracy", title="(a) accuracy")
    axes[0].legend()
    for ax, (use_bn, name) in zip(axes[1:], NAMES.items(), strict=True):
        pct = [_relative(r["curves"][name]) for r in results]
        n = min(len(x) for x in pct)
        for i, q in enumerate(PERCENTILES):
            plots.band(ax, first[:n], [x[:n, i] for x in pct], f"{q}th percentile")
        ax.set(xlabel="training step", ylabel="input to one sigmoid (relative)")
        ax.set_title(f"({'c' if use_bn else 'b'}) {name}")
        ax.legend()
    plots.save(fig, path, len(results))


EXPERIMENT = Experiment(
    key="fig1",
    title="Section 4.1 / Figure 1: MNIST-style MLP",
    figure="fig1_mlp.png",
    plan=plan,
    steps=lambda p: 2 * p.steps,
    run_seed=run_seed,
    findings=findings,
    claims=claims,
    body=body,
    plot=plot,
)
