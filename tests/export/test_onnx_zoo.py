"""The torch fold's zoo of BatchNorm patterns, exported by torch with every BN kept, folded by fold_onnx: the same
action as the torch path takes for each, zero BatchNormalization left, and float32-accurate outputs."""

from __future__ import annotations

import io
import warnings

import onnx
import pytest
import torch

from export.folding.onnx_fold import fold_onnx
from tests.export.onnx_graphs import count_ops, judge
from tests.export.zoo import CASES, Case, build_case


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_zoo_through_onnx(case: Case) -> None:
    net, x = build_case(case)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buffer, dynamo=False, opset_version=15, do_constant_folding=False)
    exported = onnx.load_from_string(buffer.getvalue())
    assert count_ops(exported, "BatchNormalization") == len(case.actions)
    folded, report = fold_onnx(exported)
    assert count_ops(folded, "BatchNormalization") == 0
    assert tuple(row.action for row in report.rows) == case.actions
    verdict = judge(exported, folded, x.numpy())
    assert verdict.passed, verdict.line()
