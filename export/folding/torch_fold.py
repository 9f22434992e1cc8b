"""The BatchNorm folding pass over a torch.fx graph: ``fold_batchnorm(model, example_inputs)``.

Pattern and result, per BatchNorm call site (population statistics, whatever mode the model is in):

    1. layer -> BN            ==>  layer'         layer is Conv{1,2,3}d / ConvTranspose{1,2,3}d (any groups)
                                                  or Linear on 2-D input; preconditions: the layer's output
                                                  feeds only this BN; BN's channels are its output channels.
    2. BN -> layer            ==>  layer'         layer is Linear on 2-D input, or a Conv with padding 0;
                                                  preconditions: BN's output feeds only this layer, as its
                                                  input; BN's channels are its input channels.
    3. BN -> zero-padded conv ==>  x + t/s -> conv'  the scale into the conv's weights, the shift as one
                                                  per-channel Add (``Shift``); preconditions as 2., and every s
                                                  non-zero. Exact: Conv_W(pad0(s*x + t)) = Conv_{W*s}(pad0(x + t/s)).
    4. anything else          ==>  x * s + t      one per-channel scale-and-shift (exact; two ONNX ops).

A layer module called at several sites is copied per site before a fold touches it, so a fold at one site
never changes another. The math (``export.folding.bn_math``) runs in float64 and is cast once. Predicates
(``_why_not_preceding``, ``_why_not_following``) decide; transforms (``_fold_*``, ``_lower``) rewrite.
Each rewrite measures the difference it introduced on the example inputs' actual intermediate values.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from export.errors import ExportError
from export.folding.torch_layers import (
    BiasMap,
    ScaleShift,
    Shift,
    assign,
    bn_scale_shift,
    fold_into_following,
    fold_into_preceding,
    population_scale_shift,
)
from export.report import PADDED, PADDED_MAP, PADDED_MAP_NOTE, PADDED_MODES, PADDED_NOTE, FoldReport, FoldRow

logger = logging.getLogger(__name__)

PRECEDING_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
FOLLOWING_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
FUNCTIONAL_BN = (F.batch_norm, torch.batch_norm)


class _Recorder(fx.Interpreter):
    """Runs the graph once and keeps every node's output, so each rewrite can be checked locally."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


def _diff(new: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Largest absolute difference, and that relative to the reference's largest magnitude."""
    d = float((new.double() - ref.double()).abs().max()) if ref.numel() else 0.0
    return d, d / max(float(ref.double().abs().max()) if ref.numel() else 0.0, 1e-12)


class _Folder:
    """Holds the traced graph and the state shared by the predicates and transforms."""

    def __init__(self, gm: fx.GraphModule, values: dict[fx.Node, Any], padded: str = "add") -> None:
        self.gm = gm
        self.padded = padded  # "add" (Shift before the conv) or "bias-map" (BiasMap after it)
        self.values = values
        self.modules = dict(gm.named_modules())
        self.sites = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
        self.copies = 0
        self.report = FoldReport()

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(str(node.target)) if node.op == "call_module" else None

    def ndim(self, node: fx.Node) -> int:
        value = self.values.get(node)
        return value.dim() if isinstance(value, torch.Tensor) else -1

    def own_module(self, node: fx.Node) -> tuple[nn.Module, str]:
        """The module ``node`` calls, copied first if other sites call it too; returns (module, note)."""
        target = str(node.target)
        module = self.modules[target]
        if self.sites[target] == 1:
            return module, ""
        self.copies += 1
        new_target = f"{target}_site{self.copies}"
        clone = copy.deepcopy(module)
        self.gm.add_submodule(new_target, clone)
        self.modules[new_target] = clone
        self.sites[target] -= 1
        self.sites[new_target] = 1
        node.target = new_target
        return clone, f"; {target} is called at several sites, so this site got its own copy {new_target}"

    # ---- predicates -------------------------------------------------------------------------------------
    def why_not_preceding(self, bn_node: fx.Node, bn: _BatchNorm) -> str | None:
        prev = bn_node.args[0]
        if not isinstance(prev, fx.Node) or bn_node.kwargs:
            return "its input is not a single graph value"
        layer = self.module(prev)
        if not isinstance(layer, (*PRECEDING_TYPES, nn.Linear)):
            what = prev.target if prev.op != "call_module" else type(layer).__name__
            return f"its input comes from {getattr(what, '__name__', what)}, not a conv or linear layer"
        if len(prev.users) > 1:
            return f"{prev.target}'s output also feeds {len(prev.users) - 1} other consumer(s)"
        if isinstance(layer, nn.Linear) and self.ndim(prev) != 2:
            return f"Linear {prev.target} runs on {self.ndim(prev)}-D input; BN's channel axis is not its features"
        out_channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        if out_channels != bn.num_features:
            return f"{prev.target} has {out_channels} output channels, BN has {bn.num_features}"
        return None

    def why_not_following(self, bn_node: fx.Node, bn: _BatchNorm) -> str | None:
        if len(bn_node.users) != 1:
            return f"its output feeds {len(bn_node.users)} consumers"
        nxt = next(iter(bn_node.users))
        layer = self.module(nxt)
        if not isinstance(layer, (*FOLLOWING_CONV_TYPES, nn.Linear)):
            what = nxt.target if nxt.op != "call_module" else type(layer).__name__
            return f"its output goes to {getattr(what, '__name__', what)}, not a conv or linear layer"
        if nxt.args[:1] != (bn_node,) or len(nxt.args) > 1 or nxt.kwargs:
            return f"{nxt.target} does not take it as its only input"
        if isinstance(layer, nn.Linear):
            if self.ndim(bn_node) != 2:
                return f"Linear {nxt.target} runs on {self.ndim(bn_node)}-D input"
            in_channels = layer.in_features
        else:
            assert isinstance(layer, nn.modules.conv._ConvNd)
            padding = layer.padding
            if padding == "same" or (isinstance(padding, tuple) and any(p != 0 for p in padding)):
                return (
                    f"the following {type(layer).__name__} {nxt.target} reads padding, where BN's shift does not hold"
                )
            in_channels = layer.in_channels
        if in_channels != bn.num_features:
            return f"{nxt.target} has {in_channels} input channels, BN has {bn.num_features}"
        return None

    def why_not_padded(self, bn_node: fx.Node, bn: _BatchNorm) -> str | None:
        """Why pattern 3 (BN -> zero-padded conv) does not apply, or None."""
        nxt = next(iter(bn_node.users)) if len(bn_node.users) == 1 else None
        layer = self.module(nxt) if nxt is not None else None
        if nxt is None or not isinstance(layer, FOLLOWING_CONV_TYPES) or nxt.args != (bn_node,) or nxt.kwargs:
            return "its output is not the only input of a convolution"
        if layer.padding_mode != "zeros" or layer.in_channels != bn.num_features:
            return f"{nxt.target} pads with {layer.padding_mode!r} or has {layer.in_channels} input channels"
        s, _ = bn_scale_shift(bn)
        zero = torch.nonzero(s == 0).flatten()
        if len(zero):
            return f"its scale is 0 in channel(s) {zero[:5].tolist()} (gamma = 0): the shift cannot move before it"
        return None

    # ---- transforms -------------------------------------------------------------------------------------
    def fold_preceding(self, bn_node: fx.Node, bn: _BatchNorm, name: str) -> None:
        prev = bn_node.args[0]
        assert isinstance(prev, fx.Node)
        layer, note = self.own_module(prev)
        before = copy.deepcopy(layer)
        s, t = bn_scale_shift(bn)
        assign(layer, *fold_into_preceding(layer, s, t))
        x_in = self.values.get(prev.args[0]) if prev.args and isinstance(prev.args[0], fx.Node) else None
        abs_d, rel_d = (0.0, 0.0)
        if isinstance(x_in, torch.Tensor):
            with torch.no_grad():
                abs_d, rel_d = _diff(layer(x_in), bn(before(x_in)))
        bn_node.replace_all_uses_with(prev)
        self.gm.graph.erase_node(bn_node)
        reason = f"{type(layer).__name__} output feeds only this BN{note}"
        self.report.rows.append(FoldRow(name, "folded-into-preceding", str(prev.target), reason, abs_d, rel_d))

    def fold_following(self, bn_node: fx.Node, bn: _BatchNorm, name: str, why_not_prev: str) -> None:
        nxt = next(iter(bn_node.users))
        layer, note = self.own_module(nxt)
        before = copy.deepcopy(layer)
        s, t = bn_scale_shift(bn)
        assign(layer, *fold_into_following(layer, s, t))
        x_in = self.values.get(bn_node.args[0])  # type: ignore[arg-type]
        abs_d, rel_d = (0.0, 0.0)
        if isinstance(x_in, torch.Tensor):
            with torch.no_grad():
                abs_d, rel_d = _diff(layer(x_in), before(bn(x_in)))
        bn_node.replace_all_uses_with(bn_node.args[0])  # type: ignore[arg-type]
        self.gm.graph.erase_node(bn_node)
        reason = f"not into the preceding layer ({why_not_prev}); {nxt.target} reads no padding{note}"
        self.report.rows.append(FoldRow(name, "folded-into-following", str(nxt.target), reason, abs_d, rel_d))

    def fold_padded(self, bn_node: fx.Node, bn: _BatchNorm, name: str, why_not: str) -> None:
        """BN -> zero-padded conv  ==>  Shift(t / s) -> conv with W'[o, c] = W[o, c] * s[c], bias unchanged."""
        nxt = next(iter(bn_node.users))
        layer, note = self.own_module(nxt)
        before = copy.deepcopy(layer)
        s, t = bn_scale_shift(bn)
        assign(layer, *fold_into_following(layer, s, torch.zeros_like(t)))  # zero shift: the bias stays b
        target = f"{name.replace('.', '_')}_shift"
        shift = Shift(t / s, bn.running_mean.dtype)  # type: ignore[union-attr]
        self.gm.add_submodule(target, shift)
        x_in = bn_node.args[0]
        with self.gm.graph.inserting_after(bn_node):
            new = self.gm.graph.call_module(target, (x_in,))
        bn_node.replace_all_uses_with(new)
        self.gm.graph.erase_node(bn_node)
        value = self.values.get(x_in)  # type: ignore[arg-type]
        abs_d, rel_d = (0.0, 0.0)
        if isinstance(value, torch.Tensor):
            with torch.no_grad():
                abs_d, rel_d = _diff(layer(shift(value)), before(bn(value)))
        reason = f"{why_not}; {PADDED_NOTE}{note}"
        self.report.rows.append(FoldRow(name, PADDED, str(nxt.target), reason, abs_d, rel_d))

    def fold_bias_map(self, bn_node: fx.Node, bn: _BatchNorm, name: str, why_not: str) -> None:
        """BN -> zero-padded conv  ==>  conv' (W'[o, c] = W[o, c] * s[c], no bias) -> BiasMap(Conv_W(pad0(t)) + b),
        the map computed in float64 at the size of the example input's value here."""
        nxt, x_in = next(iter(bn_node.users)), bn_node.args[0]
        value = self.values.get(x_in)  # type: ignore[arg-type]
        assert isinstance(value, torch.Tensor)  # the recorder saw every value
        layer, note = self.own_module(nxt)
        before = copy.deepcopy(layer)
        s, t = bn_scale_shift(bn)
        with torch.no_grad():
            shift = t.view(1, -1, *([1] * (value.dim() - 2))).expand(1, -1, *value.shape[2:]).contiguous()
            bias_map = copy.deepcopy(before).double()(shift)[0]
        assert isinstance(layer, nn.modules.conv._ConvNd)  # why_not_padded checked it
        weight, _ = fold_into_following(layer, s, torch.zeros_like(t))
        layer.weight = nn.Parameter(weight.to(layer.weight.dtype), requires_grad=False)
        layer.register_parameter("bias", None)
        target = f"{name.replace('.', '_')}_bias_map"
        module = BiasMap(bias_map, bn.running_mean.dtype)  # type: ignore[union-attr]
        self.gm.add_submodule(target, module)
        bn_node.replace_all_uses_with(x_in)  # type: ignore[arg-type]
        self.gm.graph.erase_node(bn_node)
        with self.gm.graph.inserting_after(nxt):
            new = self.gm.graph.call_module(target, (nxt,))
        nxt.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
        with torch.no_grad():
            abs_d, rel_d = _diff(module(layer(value)), before(bn(value)))
        reason = f"{why_not}; {PADDED_MAP_NOTE}{note}"
        self.report.rows.append(FoldRow(name, PADDED_MAP, str(nxt.target), reason, abs_d, rel_d))

    def lower(
        self,
        bn_node: fx.Node,
        s: torch.Tensor,
        t: torch.Tensor,
        dtype: torch.dtype,
        name: str,
        reference: nn.Module | None,
        reason: str,
    ) -> None:
        target = f"{name.replace('.', '_')}_scaleshift"
        affine = ScaleShift(s, t, dtype)
        self.gm.add_submodule(target, affine)
        x_in = bn_node.args[0]
        with self.gm.graph.inserting_after(bn_node):
            new = self.gm.graph.call_module(target, (x_in,))
        bn_node.replace_all_uses_with(new)
        self.gm.graph.erase_node(bn_node)
        value = self.values.get(x_in)  # type: ignore[arg-type]
        abs_d, rel_d = (0.0, 0.0)
        if isinstance(value, torch.Tensor) and reference is not None:
            with torch.no_grad():
                abs_d, rel_d = _diff(affine(value), reference(value))
        self.report.rows.append(FoldRow(name, "lowered-to-scale-shift", target, reason, abs_d, rel_d))


def _refuse_untracked(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and (not m.track_running_stats or m.running_mean is None):
            raise ExportError(
                f"BatchNorm layer {name!r} has track_running_stats=False: it always normalises with the statistics "
                "of the batch it is given, so it has no population statistics to fold, and served as it is its "
                "answers would depend on the rest of the batch. Rebuild it with track_running_stats=True and "
                "compute population statistics (training.population.recalibrate_bn), then export."
            )


def _functional_bn(gm: fx.GraphModule, node: fx.Node) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """(s, t, dtype) of a functional batch_norm call whose statistics are module attributes."""
    kwargs = node.normalized_arguments(gm, normalize_to_only_use_kwargs=True)
    if kwargs is None:
        raise ExportError(f"cannot read the arguments of functional batch_norm at node {node.name}")
    args = kwargs.kwargs

    def const(key: str) -> torch.Tensor | None:
        value = args.get(key)
        if value is None:
            return None
        if not (isinstance(value, fx.Node) and value.op == "get_attr"):
            raise ExportError(
                f"functional batch_norm at node {node.name}: {key} is computed, not a stored tensor; "
                "only population statistics held as module attributes can be folded"
            )
        tensor = functools.reduce(getattr, str(value.target).split("."), gm)
        if not isinstance(tensor, torch.Tensor):
            raise ExportError(f"functional batch_norm at node {node.name}: {value.target} is not a tensor")
        return tensor.detach()

    mean, var = const("running_mean"), const("running_var")
    if mean is None or var is None:
        raise ExportError(f"functional batch_norm at node {node.name} has no running statistics to fold")
    s, t = population_scale_shift(mean, var, const("weight"), const("bias"), float(args.get("eps", 1e-5)))
    return s, t, mean.dtype


def _trace(model: nn.Module) -> fx.GraphModule:
    """An eval-mode, gradient-free copy of ``model`` traced by torch.fx (the original is never touched)."""
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    try:
        return fx.symbolic_trace(work)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, NotImplementedError, ...)
        raise ExportError(
            f"{type(model).__name__} cannot be traced by torch.fx ({type(exc).__name__}: {exc}); "
            "fold_batchnorm needs a model without data-dependent control flow in forward()"
        ) from exc


def _fold_all(folder: _Folder) -> None:
    """Every BN module into its preceding layer where possible, else its following layer, else lowered;
    then every functional batch_norm call lowered."""
    gm = folder.gm
    bn_nodes = [(n, m) for n in gm.graph.nodes if isinstance(m := folder.module(n), _BatchNorm)]
    names = {
        n: str(n.target) + (f" (call {i + 1})" if folder.sites[n.target] > 1 else "")
        for i, (n, _) in enumerate(bn_nodes)
    }
    remaining: list[tuple[fx.Node, _BatchNorm, str]] = []
    for node, bn in bn_nodes:
        why = folder.why_not_preceding(node, bn)
        if why is None:
            folder.fold_preceding(node, bn, names[node])
        else:
            remaining.append((node, bn, why))
    for node, bn, why_prev in remaining:
        why_next = folder.why_not_following(node, bn)
        why_padded = folder.why_not_padded(node, bn) if why_next is not None and "padding" in why_next else why_next
        if why_next is None:
            folder.fold_following(node, bn, names[node], why_prev)
        elif why_padded is None:
            fold = folder.fold_bias_map if folder.padded == "bias-map" else folder.fold_padded
            fold(node, bn, names[node], f"not into the preceding layer ({why_prev})")
        else:
            s, t = bn_scale_shift(bn)
            reason = f"no exact fold: {why_prev}; {why_next}" + (f"; {why_padded}" if why_padded != why_next else "")
            folder.lower(node, s, t, bn.running_mean.dtype, names[node], bn, reason)  # type: ignore[union-attr]
    for node in [n for n in gm.graph.nodes if n.op == "call_function" and n.target in FUNCTIONAL_BN]:
        s, t, dtype = _functional_bn(gm, node)
        folder.lower(node, s, t, dtype, f"functional:{node.name}", None, "functional batch_norm call")


def fold_batchnorm(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], padded: str = "add"
) -> tuple[nn.Module, FoldReport]:
    """Return an eval-mode copy of ``model`` with every BatchNorm folded or lowered, and a report.

    The original is untouched. Population (running) statistics are used whatever mode ``model`` is in.
    ``padded``: a BN before a zero-padded conv keeps its shift as an Add before it ("add"), or as a bias map
    after it fixed to the example inputs' size ("bias-map"; the model then serves that input size only).
    Raises :class:`ExportError` for a BN with ``track_running_stats=False`` or an untraceable model.
    """
    if padded not in PADDED_MODES:
        raise ExportError(f"unknown padded-conv fold {padded!r}; expected one of {', '.join(PADDED_MODES)}")
    _refuse_untracked(model)
    gm = _trace(model)
    recorder = _Recorder(gm)
    with torch.no_grad():
        recorder.run(*example_inputs)
    folder = _Folder(gm, recorder.values, padded)
    _fold_all(folder)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    _assert_no_batchnorm(gm)
    gm.eval()
    logger.info("%s", folder.report.summary())
    return gm, folder.report


def _assert_no_batchnorm(gm: fx.GraphModule) -> None:
    left = [name for name, m in gm.named_modules() if isinstance(m, _BatchNorm)]
    calls = [n.name for n in gm.graph.nodes if n.op == "call_function" and n.target in FUNCTIONAL_BN]
    if left or calls:
        raise RuntimeError(f"bnfold bug: BatchNorm left after folding: modules {left}, calls {calls}")
