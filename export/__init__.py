"""bnfold's export stage: fold BatchNorm into the weights, emit verified ONNX, write a model repository.

``fold_batchnorm`` returns a module with no BatchNorm left; ``export_onnx`` folds, exports, checks and
verifies numerically; ``export_checkpoint`` does all of it from a training checkpoint into a Triton-layout
model repository.
"""

from export.errors import ExportError, VerificationError
from export.fold import fold_batchnorm
from export.onnx_files import check_onnx_input, load_onnx, save_onnx
from export.onnx_fold import fold_onnx
from export.onnx_oracle import onnx_float64_oracle
from export.report import FoldReport, FoldRow

__all__ = [
    "ExportError",
    "FoldReport",
    "FoldRow",
    "VerificationError",
    "check_onnx_input",
    "fold_batchnorm",
    "fold_onnx",
    "load_onnx",
    "onnx_float64_oracle",
    "save_onnx",
]
