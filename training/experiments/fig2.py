"""Section 4.2 / Figure 2 and Table 2 in miniature: the convnet with and without BN at several learning rates.

Variants, as in the paper: the baseline without BN; BN at the baseline rate; BN at 5x and 30x that rate;
BN with sigmoid (5x); sigmoid without BN (5x). Table: steps to reach the baseline's best validation
accuracy, and the best accuracy, per variant.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from training.experiments.common import Curve, Settings, make, train_curve
from training.experiments.report import Claim, Section, table

BASE_LR = 0.01
WIDTHS = [16, 32, 64]
VARIANTS = [  # name, batch_norm, activation, learning-rate multiple
    ("Baseline (no BN)", False, "relu", 1),
    ("BN-Baseline", True, "relu", 1),
    ("BN-x5", True, "relu", 5),
    ("BN-x30", True, "relu", 30),
    ("BN-x5-Sigmoid", True, "sigmoid", 5),
    ("Sigmoid-x5 (no BN)", False, "sigmoid", 5),
]
PAPER = {  # Ioffe & Szegedy 2015, section 4.2.2 (Inception on ImageNet): steps to 72.2%, max accuracy
    "Baseline (no BN)": ("31.0M", "72.2%"),
    "BN-Baseline": ("13.3M", "72.7%"),
    "BN-x5": ("2.1M", "73.0%"),
    "BN-x30": ("2.7M", "74.8%"),
    "BN-x5-Sigmoid": ("-", "69.8%"),
    "Sigmoid-x5 (no BN)": ("-", "< 0.1% (never trained)"),
}


def run(settings: Settings) -> Section:
    data = settings.load()
    steps, every = (40, 10) if settings.quick else (1500, 25)
    curves: dict[str, Curve] = {}
    for name, bn, act, mult in VARIANTS:
        torch.manual_seed(settings.seed)
        model = make("convnet", data, batch_norm=bn, activation=act, widths=WIDTHS)
        curves[name] = train_curve(
            name,
            data,
            model,
            steps=steps,
            batch_size=32,
            lr=BASE_LR * mult,
            eval_every=every,
            seed=settings.seed,
            config={"model": f"convnet widths {WIDTHS}", "batch_norm": bn, "activation": act},
        )
    figure = settings.out / "fig2_convnet.png"
    _plot(curves, figure)
    base = curves["Baseline (no BN)"]
    target = base.best
    base_steps = base.steps_to(target)
    rows = []
    for name, _, _, mult in VARIANTS:
        c = curves[name]
        reached = c.steps_to(target)
        speedup = f"{base_steps / reached:.1f}x" if reached and base_steps else "-"
        rows.append(
            [
                name,
                f"{BASE_LR * mult:g}",
                reached or "never",
                speedup,
                f"{c.best:.4f}",
                f"diverged at step {c.diverged_at}" if c.diverged_at else "",
                *PAPER[name],
            ]
        )
    body = (
        f"convnet (widths {WIDTHS}) on {settings.dataset}, SGD with momentum 0.9 at a constant rate, mini-batches "
        f"of 32, {steps} steps, validation every {every} steps. Baseline rate {BASE_LR}. The target is the "
        f"baseline's best validation accuracy, {target:.4f}.\n\n"
        + table(
            [
                "variant",
                "lr",
                f"steps to {target:.4f}",
                "fewer steps than baseline",
                "best val acc",
                "note",
                "paper: steps to 72.2%",
                "paper: max acc",
            ],
            rows,
        )
    )
    return Section(
        "fig2",
        "Section 4.2 / Figure 2 and Table 2: convnet variants",
        body,
        [str(figure)],
        _claims(curves, target),
        {
            "base_lr": BASE_LR,
            "variants": {n: c.config for n, c in curves.items()},
            "curves": {n: {"steps": c.steps, "val_acc": c.val_acc} for n, c in curves.items()},
        },
        sum(c.seconds for c in curves.values()),
    )


def _ratio(curves: dict[str, Curve], name: str, target: float) -> float | None:
    base, other = curves["Baseline (no BN)"].steps_to(target), curves[name].steps_to(target)
    return base / other if base and other else None


def _fewer(a: int | None, b: int | None) -> bool:
    return a is not None and (b is None or a < b)


def _claims(curves: dict[str, Curve], target: float) -> list[Claim]:
    def fmt(r: float | None) -> str:
        if r is None:
            return "never reached the baseline's best"
        return f"{r:.1f}x fewer steps" if r >= 1 else f"{1 / r:.1f}x more steps"

    r_bn, r_x5 = _ratio(curves, "BN-Baseline", target), _ratio(curves, "BN-x5", target)
    x30, x5 = curves["BN-x30"], curves["BN-x5"]
    sig_bn, sig = curves["BN-x5-Sigmoid"], curves["Sigmoid-x5 (no BN)"]
    chance = 1.0 / 10 + 0.05
    return [
        Claim(
            "4.2: BN-Baseline reaches the baseline's best accuracy in fewer steps",
            "2.3x fewer (13.3M vs 31.0M)",
            fmt(r_bn),
            r_bn is not None and r_bn > 1,
        ),
        Claim(
            "4.2: a 5x higher rate with BN needs far fewer steps than the baseline",
            "14.8x fewer (2.1M vs 31.0M)",
            fmt(r_x5),
            r_x5 is not None and r_x5 > 1,
        ),
        Claim(
            "4.2: ... and fewer than BN at the baseline rate",
            "2.1M vs 13.3M steps",
            f"{x5.steps_to(target) or 'never'} vs {curves['BN-Baseline'].steps_to(target) or 'never'} steps",
            _fewer(x5.steps_to(target), curves["BN-Baseline"].steps_to(target)),
        ),
        Claim(
            "4.2: BN-x30 reaches a higher best accuracy than BN-x5",
            "74.8% vs 73.0%",
            f"{x30.best:.4f} vs {x5.best:.4f}" + (" (x30 diverged)" if x30.diverged_at else ""),
            x30.best > x5.best,
        ),
        Claim(
            "4.2: with BN a sigmoid network trains; without BN it does not",
            "69.8% vs never above 0.1%",
            f"{sig_bn.best:.4f} vs {sig.best:.4f}",
            sig_bn.best > chance and sig.best <= chance,
        ),
    ]


def _plot(curves: dict[str, Curve], path: Any) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, c in curves.items():
        ax.plot(c.steps, c.val_acc, label=name)
    ax.set(xlabel="training step", ylabel="validation accuracy", title="convnet variants (cf. paper Figure 2)")
    ax.set_ylim(0, 1.01)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
