"""Section 4.2 / Figure 2 and Table 2 in miniature: the convnet with and without BN at several learning rates.

Variants, as in the paper: the baseline without BN; BN at the baseline rate; BN at 5x and 30x that rate;
BN with sigmoid (5x); sigmoid without BN (5x). Table: steps to reach the baseline's best validation
accuracy (each seed's own baseline), and the best accuracy, per variant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from training.data import Dataset
from training.experiments import plots
from training.experiments.common import CurvePlan, Settings, Tick, best, eval_steps, make, padded, steps_to, train_curve
from training.experiments.experiment import Experiment, Result
from training.experiments.markdown import pm, table
from training.experiments.verdicts import ClaimSpec, Findings

BASELINE = "Baseline (no BN)"
VARIANTS = [  # name, batch_norm, activation, learning-rate multiple
    (BASELINE, False, "relu", 1),
    ("BN-Baseline", True, "relu", 1),
    ("BN-x5", True, "relu", 5),
    ("BN-x30", True, "relu", 30),
    ("BN-x5-Sigmoid", True, "sigmoid", 5),
    ("Sigmoid-x5 (no BN)", False, "sigmoid", 5),
]
PAPER = {  # Ioffe & Szegedy 2015, section 4.2.2 (Inception on ImageNet): steps to 72.2%, max accuracy
    BASELINE: ("31.0M", "72.2%"),
    "BN-Baseline": ("13.3M", "72.7%"),
    "BN-x5": ("2.1M", "73.0%"),
    "BN-x30": ("2.7M", "74.8%"),
    "BN-x5-Sigmoid": ("-", "69.8%"),
    "Sigmoid-x5 (no BN)": ("-", "< 0.1% (never trained)"),
}
CHANCE_MARGIN = 0.05  # "trains" means a best accuracy above chance + this


@dataclass(frozen=True)
class Plan(CurvePlan):
    """Figure 2's runs: each variant for ``steps`` mini-batches of ``batch_size`` at a multiple of ``base_lr``."""

    batch_size: int = 32
    base_lr: float = 0.01
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])


def plan(settings: Settings, data: Dataset) -> Plan:
    if settings.quick:
        return Plan(steps=10, every=5)
    if settings.dataset == "mnist":
        return Plan(steps=3000, every=100)
    return Plan(steps=1500, every=25)


def run_seed(p: Plan, data: Dataset, seed: int, tick: Tick | None) -> Result:
    curves = {}
    for name, bn, act, mult in VARIANTS:
        model = make("convnet", data, seed, batch_norm=bn, activation=act, widths=p.widths)
        curve = train_curve(
            name,
            data,
            model,
            steps=p.steps,
            batch_size=p.batch_size,
            lr=p.base_lr * mult,
            eval_every=p.every,
            seed=seed,
            tick=tick,
        )
        curves[name] = curve.record()
    return {"curves": curves}


def findings(p: Plan, result: Result) -> Findings:
    curves = result["curves"]
    target = best(curves[BASELINE])
    found = {"target": target}
    for name, *_ in VARIANTS:
        found[f"steps {name}"] = steps_to(curves[name], target, p.never)
        found[f"best {name}"] = best(curves[name])
    return found


def _fewer(f: Findings, a: str, b: str) -> str:
    ratio = f[f"steps {b}"] / f[f"steps {a}"]
    than = f"{ratio:.1f}x fewer" if ratio >= 1 else f"{1 / ratio:.1f}x more"
    return f"{f[f'steps {a}']:.0f} vs {f[f'steps {b}']:.0f} steps ({than})"


def claims(p: Plan) -> list[ClaimSpec]:
    def fewer(a: str, b: str, claim: str, paper: str) -> ClaimSpec:
        return ClaimSpec(
            claim,
            paper,
            lambda f: f[f"steps {a}"] < f[f"steps {b}"],
            lambda f: _fewer(f, a, b),
            (f"steps {a}", f"steps {b}"),
        )

    chance = 1.0 / 10 + CHANCE_MARGIN
    return [
        fewer(
            "BN-Baseline",
            BASELINE,
            "4.2: BN-Baseline reaches the baseline's best accuracy in fewer steps",
            "13.3M vs 31.0M steps (2.3x fewer)",
        ),
        fewer(
            "BN-x5",
            BASELINE,
            "4.2: a 5x higher rate with BN needs far fewer steps than the baseline",
            "2.1M vs 31.0M steps (14.8x fewer)",
        ),
        fewer("BN-x5", "BN-Baseline", "4.2: ... and fewer than BN at the baseline rate", "2.1M vs 13.3M steps"),
        ClaimSpec(
            "4.2: BN-x30 reaches a higher best accuracy than BN-x5",
            "74.8% vs 73.0%",
            lambda f: f["best BN-x30"] > f["best BN-x5"],
            lambda f: f"{f['best BN-x30']:.4f} vs {f['best BN-x5']:.4f}",
            ("best BN-x30", "best BN-x5"),
        ),
        ClaimSpec(
            "4.2: with BN a sigmoid network trains; without BN it does not",
            f"69.8% vs never above 0.1% (ours: 'trains' is a best above {chance:.2f})",
            lambda f: f["best BN-x5-Sigmoid"] > chance >= f["best Sigmoid-x5 (no BN)"],
            lambda f: f"{f['best BN-x5-Sigmoid']:.4f} vs {f['best Sigmoid-x5 (no BN)']:.4f}",
            ("best BN-x5-Sigmoid", "best Sigmoid-x5 (no BN)"),
        ),
    ]


def body(p: Plan, results: list[Result], settings: Settings) -> str:
    found = [findings(p, r) for r in results]
    base_mean = sum(f[f"steps {BASELINE}"] for f in found) / len(found)
    rows = []
    for name, _, _, mult in VARIANTS:
        steps = [f[f"steps {name}"] for f in found]
        never = sum(s >= p.never for s in steps)
        diverged = sum(r["curves"][name]["diverged_at"] is not None for r in results)
        rows.append(
            [
                name,
                f"{p.base_lr * mult:g}",
                pm(steps, ".0f") + (f" (never in {never})" if never else ""),
                "-" if never == len(steps) else f"{base_mean / (sum(steps) / len(steps)):.1f}x",
                pm([f[f"best {name}"] for f in found]),
                f"diverged in {diverged} of {len(results)} seeds" if diverged else "",
                *PAPER[name],
            ]
        )
    header = ["variant", "lr", "steps to target", "fewer steps than baseline (means)", "best val acc", "note"]
    return (
        f"convnet (widths {p.widths}) on {settings.dataset}, SGD with momentum 0.9 at a constant rate, mini-batches "
        f"of {p.batch_size}, {p.steps} steps, validation every {p.every} steps. Baseline rate {p.base_lr}. The "
        "target is each seed's own baseline best validation accuracy "
        f"({pm([f['target'] for f in found])}); a run that never reaches it counts as {p.never} steps. "
        f"Mean ± standard deviation over {len(results)} seeds.\n\n"
        + table([*header, "paper: steps to 72.2%", "paper: max acc"], rows)
    )


def plot(p: Plan, results: list[Result], path: Path) -> None:
    fig, ax = plots.figure(1, width=8, height=5)
    x = eval_steps(p.steps, p.every)
    for name, *_ in VARIANTS:
        plots.band(ax, x, [padded(r["curves"][name]["val_acc"], len(x)) for r in results], name)
    ax.set(xlabel="training step", ylabel="validation accuracy", title="convnet variants (cf. paper Figure 2)")
    ax.set_ylim(0, 1.01)
    ax.legend()
    plots.save(fig, path, len(results))


EXPERIMENT = Experiment(
    key="fig2",
    title="Section 4.2 / Figure 2 and Table 2: convnet variants",
    figure="fig2_convnet.png",
    plan=plan,
    steps=lambda p: len(VARIANTS) * p.steps,
    run_seed=run_seed,
    findings=findings,
    claims=claims,
    body=body,
    plot=plot,
)
