"""Section 4.1 / Figure 1: the 3 x 100 sigmoid MLP with and without BN, mini-batches of 60.

(a) validation accuracy against training steps; (b, c) the 15th, 50th and 85th percentiles of the input to
one sigmoid of the last hidden layer over training, without and with BN. The percentiles are taken over a
fixed set of validation samples passed through the network as training sees it (BN on batch statistics).
"""

from __future__ import annotations

import copy
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from training.experiments.common import Curve, Settings, make, train_curve
from training.experiments.report import Claim, Section, table

LR = 0.05
PERCENTILES = (15, 50, 85)


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


def _drift(curve: Curve) -> float:
    """How far the sigmoid input's percentiles moved over training, in units of their initial spread."""
    p = np.asarray(curve.extra["percentiles"])  # (records, 3)
    spread = max(float(p[0, 2] - p[0, 0]), 1e-6)
    return float(np.abs(p - p[0]).max() / spread)


def run(settings: Settings) -> Section:
    data = settings.load()
    steps, every = (60, 10) if settings.quick else (6000, 100)
    fixed = data.val_x[:60]
    curves = {}
    for use_bn in (False, True):
        torch.manual_seed(settings.seed)
        model = make("mlp", data, batch_norm=use_bn, activation="sigmoid")
        curves[use_bn] = train_curve(
            "with BN" if use_bn else "without BN",
            data,
            model,
            steps=steps,
            batch_size=60,
            lr=LR,
            eval_every=every,
            seed=settings.seed,
            record=_probe(fixed),
            config={"model": "mlp 3x100 sigmoid", "batch_norm": use_bn},
        )
    figure = settings.out / "fig1_mlp.png"
    _plot(curves, figure)
    plain, bn = curves[False], curves[True]
    target = plain.best
    steps_plain, steps_bn = plain.steps_to(target), bn.steps_to(target)
    rows = [
        [c.name, f"{c.best:.4f}", c.steps_to(0.9) or "never", c.steps_to(target) or "never", f"{_drift(c):.2f}"]
        for c in (plain, bn)
    ]
    body = (
        f"SGD with momentum 0.9, learning rate {LR} for both networks, mini-batches of 60, {steps} steps "
        f"on {settings.dataset}; validation accuracy every {every} steps.\n\n"
        + table(
            ["network", "best val acc", "steps to 90%", f"steps to {target:.4f} (no-BN best)", "sigmoid input drift"],
            rows,
        )
        + "\n\n_Drift: the largest move of the 15/50/85th percentiles from their first value, in units of "
        "their first 15-85 spread._"
    )
    faster = steps_bn is not None and (steps_plain is None or steps_bn <= steps_plain)
    claims = [
        Claim(
            "4.1: with BN the network reaches higher test accuracy, faster",
            "Figure 1(a): BN curve above the baseline throughout 50k steps on MNIST",
            f"best {bn.best:.4f} vs {plain.best:.4f}; no-BN best reached at step {steps_bn} with BN vs "
            f"{steps_plain} without",
            bn.best >= plain.best and faster,
        ),
        Claim(
            "4.1: BN keeps the sigmoid's input distribution stable",
            "Figure 1(b, c): percentiles drift without BN, steady with BN",
            f"drift {_drift(plain):.2f} without vs {_drift(bn):.2f} with BN",
            _drift(bn) < _drift(plain),
        ),
    ]
    return Section(
        "fig1",
        "Section 4.1 / Figure 1: MNIST-style MLP",
        body,
        [str(figure)],
        claims,
        {
            "without_bn": plain.config,
            "with_bn": bn.config,
            "curves": {c.name: {"steps": c.steps, "val_acc": c.val_acc, **c.extra} for c in (plain, bn)},
        },
        plain.seconds + bn.seconds,
    )


def _plot(curves: dict[bool, Curve], path: Any) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for curve in curves.values():
        axes[0].plot(curve.steps, curve.val_acc, label=curve.name)
    axes[0].set(xlabel="training step", ylabel="validation accuracy", title="(a) accuracy")
    axes[0].legend()
    for ax, bn in zip(axes[1:], (False, True), strict=True):
        p = np.asarray(curves[bn].extra["percentiles"])
        for i, q in enumerate(PERCENTILES):
            ax.plot(curves[bn].steps[: len(p)], p[:, i], label=f"{q}th percentile")
        ax.set(xlabel="training step", ylabel="input to one sigmoid", title=f"({'c' if bn else 'b'}) {curves[bn].name}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
