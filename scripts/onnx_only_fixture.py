"""Write a small BN classifier (``in.onnx``), labelled PNGs (``images/``) and a request (``request.json``) into a
folder, for ``.ci/onnx_only.sh``: the same fixtures as tests/export/test_without_torch.py, with no torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.export.classifier_fixture import _classifier, _images


def main(folder: Path) -> None:
    onnx.save(_classifier(), str(folder / "in.onnx"))
    _images(folder / "images")
    request = {"inputs": [{"name": "image", "shape": [1, 1, 6, 6], "datatype": "FP32", "data": [0.9] * 36}]}
    (folder / "request.json").write_text(json.dumps(request))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
