"""Population statistics: validation accuracy with EMA statistics (several momenta) vs Algorithm 2.

For each mini-batch size, one BN convnet is trained; every BN layer's per-batch mean and unbiased variance
feed, side by side, exponential moving averages with momentum 0.01, 0.1 and 0.5 and a cumulative average
(torch's rules). After training the same weights are evaluated with each set of statistics, and with the
paper's Algorithm 2 recomputed over training mini-batches of the same size.

What the paper says: Algorithm 2 (steps 8-11) prescribes population statistics averaged over training
mini-batches for inference. It gives no comparison with a moving average. That Algorithm 2 serves at least as
well as torch's moving average is bnfold's own expectation, judged here by the same rule as the paper's claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.data import Dataset
from training.data.batches import epoch_permutation
from training.experiments import plots
from training.experiments.common import Settings, Tick, make, train_curve
from training.experiments.experiment import Experiment, Result
from training.experiments.markdown import pm, table
from training.experiments.verdicts import ClaimSpec, Findings, paired_p
from training.loop import evaluate, input_batches
from training.population import batchnorm_layers, recalibrate_bn

MOMENTA = (0.01, 0.1, 0.5)
RULES = [f"EMA {m}" for m in MOMENTA] + ["cumulative"]
ALG2, TORCH_EMA = "Algorithm 2", "EMA 0.1"  # torch's default BN momentum is 0.1
ESTIMATORS = [*RULES, ALG2]


class Trackers:
    """Per BN layer, per rule: running (mean, var), updated from every training forward."""

    def __init__(self, model: nn.Module) -> None:
        self.state: dict[str, dict[str, list[torch.Tensor]]] = {}
        self.seen: dict[str, int] = {}
        self.handles = []
        for name, bn in batchnorm_layers(model).items():
            c = bn.num_features
            self.state[name] = {rule: [torch.zeros(c), torch.ones(c)] for rule in RULES}
            self.seen[name] = 0
            self.handles.append(bn.register_forward_pre_hook(self._hook(name)))

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not module.training:
                return
            x = args[0].detach()
            dims = [0, *range(2, x.dim())]
            mean, var = x.mean(dim=dims), x.var(dim=dims, correction=1)
            self.seen[name] += 1
            for rule, pair in self.state[name].items():
                w = 1.0 / self.seen[name] if rule == "cumulative" else float(rule.split()[1])
                pair[0] = (1 - w) * pair[0] + w * mean
                pair[1] = (1 - w) * pair[1] + w * var

        return hook

    def load(self, model: nn.Module, rule: str) -> None:
        for name, bn in batchnorm_layers(model).items():
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.copy_(self.state[name][rule][0])
            bn.running_var.copy_(self.state[name][rule][1])

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@dataclass(frozen=True)
class Plan:
    """One network per batch size in ``sizes``, each trained on the same number of ``samples``."""

    sizes: list[int]
    samples: int  # training samples seen at every batch size
    base_lr: float = 0.05  # at batch 64; scaled linearly with the batch size
    recal_batches: int | None = None  # Algorithm 2's mini-batches; None: one pass over the training set
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])

    def lr(self, b: int) -> float:
        return self.base_lr * b / 64


def plan(settings: Settings, data: Dataset) -> Plan:
    if settings.quick:
        return Plan(sizes=[4, 32], samples=160, recal_batches=10)
    epochs = 1 if settings.dataset == "mnist" else 6
    return Plan(sizes=[4, 8, 32, 128], samples=epochs * data.train_x.shape[0])


def _one_size(p: Plan, data: Dataset, seed: int, b: int, tick: Tick | None) -> dict[str, tuple[float, float]]:
    model = make("convnet", data, seed, widths=p.widths)
    trackers = Trackers(model)
    steps = max(1, p.samples // b)
    train_curve(f"b={b}", data, model, steps=steps, batch_size=b, lr=p.lr(b), eval_every=10**9, seed=seed, tick=tick)
    trackers.close()
    # the tracker for torch's own rule must hold exactly what BN itself kept, or the comparison is void
    name, bn = next(iter(batchnorm_layers(model).items()))
    if not torch.allclose(trackers.state[name][TORCH_EMA][0], bn.running_mean, atol=1e-5):  # type: ignore[arg-type]
        raise RuntimeError(f"EMA tracker for {name} disagrees with torch's running_mean at batch {b}")
    evaluated: dict[str, tuple[float, float]] = {}  # estimator: (loss, accuracy)
    for rule in RULES:
        trackers.load(model, rule)
        evaluated[rule] = evaluate(model, data.val_x, data.val_y)
    order = epoch_permutation(data.train_x.shape[0], seed, epoch=-1)
    recalibrate_bn(model, input_batches(data.train_x, b, torch.device("cpu"), order), p.recal_batches)
    evaluated[ALG2] = evaluate(model, data.val_x, data.val_y)
    return evaluated


def run_seed(p: Plan, data: Dataset, seed: int, tick: Tick | None) -> Result:
    """Per batch size and estimator: validation accuracy, and validation loss (continuous, for the docs check)."""
    evaluated = {str(b): _one_size(p, data, seed, b, tick) for b in p.sizes}
    return {
        "accuracy": {b: {e: acc for e, (_, acc) in by.items()} for b, by in evaluated.items()},
        "loss": {b: {e: loss for e, (loss, _) in by.items()} for b, by in evaluated.items()},
    }


def findings(p: Plan, result: Result) -> Findings:
    return {f"{rule} @ {b}": acc for b, accs in result["accuracy"].items() for rule, acc in accs.items()}


def claims(p: Plan) -> list[ClaimSpec]:
    def at(b: int) -> ClaimSpec:
        a, ema = f"{ALG2} @ {b}", f"{TORCH_EMA} @ {b}"
        return ClaimSpec(
            f"bnfold's expectation, not the paper's: at batch {b}, Algorithm 2's statistics serve inference at "
            f"least as well as torch's moving average (momentum 0.1)",
            "no comparison: the paper prescribes Algorithm 2 (steps 8-11: E[x] = E_B[mu_B], "
            "Var[x] = m/(m-1) E_B[sigma_B^2]) and does not test a moving average",
            lambda f: f[a] >= f[ema],
            lambda f: f"{f[a]:.4f} vs {f[ema]:.4f} (means)",
            (a, ema),
            source="bnfold",
            paired=(a, ema),
        )

    return [at(b) for b in p.sizes]


def body(p: Plan, results: list[Result], settings: Settings) -> str:
    rows = []
    for b in p.sizes:
        accs = [r["accuracy"][str(b)] for r in results]
        alg2, ema = [a[ALG2] for a in accs], [a[TORCH_EMA] for a in accs]
        diff = pm(np.subtract(alg2, ema).tolist())
        paired = f"{diff} (p = {paired_p(alg2, ema):.3f})"
        rows.append(
            [b, f"{p.lr(b):g}", max(1, p.samples // b), *(pm([a[e] for a in accs]) for e in ESTIMATORS), paired]
        )
    return (
        f"convnet (widths {p.widths}) with BN on {settings.dataset}; each batch size sees the same {p.samples} "
        f"training samples with the learning rate scaled linearly ({p.base_lr} x b / 64). The same final weights "
        f"are evaluated with each set of population statistics. Mean ± standard deviation over {len(results)} "
        "seeds; the last column is the paired difference Algorithm 2 - EMA 0.1 per seed, and the one-sided "
        'paired t-test\'s p for "Algorithm 2 is worse".\n\n'
        + table(["batch size", "lr", "steps", *ESTIMATORS, "Algorithm 2 - EMA 0.1 (p)"], rows)
    )


def plot(p: Plan, results: list[Result], path: Path) -> None:
    fig, ax = plots.figure(1, width=8, height=5)
    for estimator in ESTIMATORS:
        rows = [[r["accuracy"][str(b)][estimator] for b in p.sizes] for r in results]
        plots.band(ax, p.sizes, rows, estimator, marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xticks(p.sizes, [str(b) for b in p.sizes])
    ax.set(xlabel="mini-batch size", ylabel="validation accuracy", title="population statistics: EMA vs Algorithm 2")
    ax.legend()
    plots.save(fig, path, len(results))


EXPERIMENT = Experiment(
    key="popstats",
    title="Population statistics: EMA vs Algorithm 2 across batch sizes",
    figure="popstats.png",
    plan=plan,
    steps=lambda p: sum(max(1, p.samples // b) for b in p.sizes),
    run_seed=run_seed,
    findings=findings,
    claims=claims,
    body=body,
    plot=plot,
)
