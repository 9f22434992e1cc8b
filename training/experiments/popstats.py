"""Population statistics: validation accuracy with EMA statistics (several momenta) vs Algorithm 2.

For each mini-batch size, one BN convnet is trained; every BN layer's per-batch mean and unbiased variance
feed, side by side, exponential moving averages with momentum 0.01, 0.1 and 0.5 and a cumulative average
(torch's rules). After training the same weights are evaluated with each set of statistics, and with the
paper's Algorithm 2 recomputed over training mini-batches of the same size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from training.data.batches import epoch_permutation
from training.experiments.common import Settings, make, train_curve
from training.experiments.report import Claim, Section, table
from training.loop import evaluate, input_batches
from training.population import batchnorm_layers, recalibrate_bn

MOMENTA = (0.01, 0.1, 0.5)
RULES = [f"EMA {m}" for m in MOMENTA] + ["cumulative"]


class Trackers:
    """Per BN layer, per rule: running (mean, var), updated from every training forward."""

    def __init__(self, model: nn.Module) -> None:
        self.state: dict[str, dict[str, list[torch.Tensor]]] = {}
        self.count = 0
        self.handles = []
        for name, bn in batchnorm_layers(model).items():
            c = bn.num_features
            self.state[name] = {rule: [torch.zeros(c), torch.ones(c)] for rule in RULES}
            self.handles.append(bn.register_forward_pre_hook(self._hook(name)))

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not module.training:
                return
            x = args[0].detach()
            dims = [0, *range(2, x.dim())]
            mean, var = x.mean(dim=dims), x.var(dim=dims, correction=1)
            n = self.state[name]["cumulative"]
            k = int(getattr(module, "_bnfold_seen", 0)) + 1
            module._bnfold_seen = k  # type: ignore[assignment]
            for rule, pair in self.state[name].items():
                w = 1.0 / k if rule == "cumulative" else float(rule.split()[1])
                pair[0] = (1 - w) * pair[0] + w * mean
                pair[1] = (1 - w) * pair[1] + w * var
            del n

        return hook

    def load(self, model: nn.Module, rule: str) -> None:
        for name, bn in batchnorm_layers(model).items():
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.copy_(self.state[name][rule][0])
            bn.running_var.copy_(self.state[name][rule][1])

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def run(settings: Settings) -> Section:
    data = settings.load()
    sizes = [4, 32] if settings.quick else [4, 8, 32, 128]
    samples = 400 if settings.quick else 6 * data.train_x.shape[0]  # the same samples seen at every size
    rows, results = [], {}
    seconds = 0.0
    for b in sizes:
        torch.manual_seed(settings.seed)
        model = make("convnet", data, widths=[16, 32, 64])
        trackers = Trackers(model)
        lr = 0.05 * b / 64
        curve = train_curve(
            f"b={b}", data, model, steps=max(1, samples // b), batch_size=b, lr=lr, eval_every=10**9, seed=settings.seed
        )
        seconds += curve.seconds
        trackers.close()
        # sanity: the tracker for torch's own rule (EMA 0.1) must hold exactly what BN itself kept
        bn0 = next(m for m in model.modules() if isinstance(m, _BatchNorm))
        name0 = next(iter(batchnorm_layers(model)))
        assert torch.allclose(trackers.state[name0]["EMA 0.1"][0], bn0.running_mean, atol=1e-5)  # type: ignore[arg-type]
        accs: dict[str, float] = {}
        for rule in RULES:
            trackers.load(model, rule)
            accs[rule] = evaluate(model, data.val_x, data.val_y)[1]
        order = epoch_permutation(data.train_x.shape[0], settings.seed, epoch=-1)
        recalibrate_bn(model, input_batches(data.train_x, b, torch.device("cpu"), order))
        accs["Algorithm 2"] = evaluate(model, data.val_x, data.val_y)[1]
        results[b] = {"lr": lr, "steps": curve.config["steps"], **accs}
        rows.append([b, f"{lr:g}", curve.config["steps"], *(f"{accs[r]:.4f}" for r in [*RULES, "Algorithm 2"])])
    body = (
        f"convnet (widths [16, 32, 64]) with BN on {settings.dataset}; each batch size sees the same {samples} "
        "training samples with the learning rate scaled linearly (0.05 x b / 64). The same final weights are "
        "evaluated with each set of population statistics.\n\n"
        + table(["batch size", "lr", "steps", *RULES, "Algorithm 2"], rows)
    )
    small = results[min(sizes)]
    best_ema = max(small[r] for r in RULES[:3])
    claims = [
        Claim(
            "Algorithm 2: population statistics from training mini-batches serve inference at least as well as "
            "a moving average (bnfold's expectation; the paper gives no figure)",
            "Algorithm 2, steps 8-11: E[x] = E_B[mu_B], Var[x] = m/(m-1) E_B[sigma_B^2]",
            f"batch {min(sizes)}: Algorithm 2 {small['Algorithm 2']:.4f} vs best EMA {best_ema:.4f}",
            small["Algorithm 2"] >= best_ema,
        ),
    ]
    return Section(
        "popstats",
        "Population statistics: EMA vs Algorithm 2 across batch sizes",
        body,
        [],
        claims,
        {"results": results, "samples": samples},
        seconds,
    )
