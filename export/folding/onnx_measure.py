"""Per-BN differences for the ONNX fold report: each folded site's tensor, original graph vs folded graph.

Every rewrite keeps one tensor name (the BN's output when folded into the layer before or lowered, the layer's
output when folded into the layer after). Both graphs run in ONNX Runtime (CPU, ORT_DISABLE_ALL) on a sample
input with those tensors exposed as outputs; a row's difference is the largest absolute difference there, and
that relative to the original tensor's largest magnitude. It includes what earlier rewrites passed on.
"""

from __future__ import annotations

import numpy as np
import onnx

from contracts.sessions import open_session
from export.report import FoldReport
from export.verification.feeds import feed


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in present)
    return copy


def _values(model: onnx.ModelProto, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    session = open_session(_with_outputs(model, names).SerializeToString(), level="disable_all")
    outputs = session.run(names, feed(x, [i.name for i in session.get_inputs()]))
    return dict(zip(names, (np.asarray(o, dtype=np.float64) for o in outputs), strict=True))


def measure_rows(
    original: onnx.ModelProto, folded: onnx.ModelProto, report: FoldReport, kept: list[str], x: np.ndarray
) -> None:
    """Fill ``report.rows[i]``'s max_abs_diff/max_rel_diff at tensor ``kept[i]`` on input ``x``.

    A graph with nothing folded has no rows and is not run (ONNX Runtime asked for no outputs returns all).
    """
    if not kept:
        return
    before, after = _values(original, kept, x), _values(folded, kept, x)
    for row, name in zip(report.rows, kept, strict=True):
        diff = float(np.abs(after[name] - before[name]).max()) if before[name].size else 0.0
        row.max_abs_diff = diff
        row.max_rel_diff = diff / max(float(np.abs(before[name]).max()) if before[name].size else 0.0, 1e-12)
