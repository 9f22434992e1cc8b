"""``bnfold-export --onnx`` needs no torch: fold, verify, report, fp16 and int8, then ``bnfold-serve`` serves it.

The run happens in a fresh interpreter where ``import torch`` fails (an import hook stands for an environment
with only ``bnfold[onnx,serve]`` installed; CI also runs ``make test-onnx-only`` in a real one, see
``.ci/onnx_only.sh``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.export.classifier_fixture import _classifier, _images

NO_TORCH = """
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'", name=name)
        return None

sys.meta_path.insert(0, _NoTorch())
"""

RUN = """
import json, sys
from pathlib import Path
from export.cli import main
source, images, repo = (Path(a) for a in sys.argv[1:4])
codes = {}
for variant in ([], ["--fp16"], ["--int8"]):
    argv = ["--onnx", str(source), "--images", str(images), "--repository", str(repo), "--name", "m", *variant]
    codes[" ".join(variant) or "float32"] = main(argv)
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings
x = [0.9] * 36
body = {"inputs": [{"name": "image", "shape": [1, 1, 6, 6], "datatype": "FP32", "data": x}]}
served = {}
with TestClient(create_app(Settings(repository=repo))) as client:
    for name in ("m", "m-fp16", "m-int8"):
        r = client.post(f"/v2/models/{name}/infer", json=body)
        served[name] = [r.status_code, r.json()["outputs"][0]["data"] if r.status_code == 200 else r.text]
print(json.dumps({"codes": codes, "served": served, "torch": "torch" in sys.modules}))
"""


@pytest.mark.slow
def test_onnx_export_and_serving_run_without_torch(tmp_path: Path) -> None:
    onnx.save(_classifier(), str(tmp_path / "in.onnx"))
    images, repo = _images(tmp_path / "images"), tmp_path / "repo"
    args = [str(tmp_path / "in.onnx"), str(images), str(repo)]
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH + RUN, *args], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["codes"] == {"float32": 0, "--fp16": 0, "--int8": 0}, done.stderr[-3000:]
    assert result["torch"] is False
    for name in ("m", "m-fp16", "m-int8"):
        status, logits = result["served"][name]
        assert status == 200, logits
        assert int(np.argmax(logits)) == 0  # a bright image is class 0 in every variant
    for name in ("m", "m-fp16", "m-int8"):
        written = onnx.load(str(repo / name / "1" / "model.onnx"))
        assert not any(n.op_type == "BatchNormalization" for n in written.graph.node)


def test_the_import_hook_really_blocks_torch() -> None:
    """The hook above must make ``import torch`` fail, or the test above proves nothing."""
    done = subprocess.run([sys.executable, "-c", NO_TORCH + "import torch"], capture_output=True, text=True)
    assert done.returncode != 0 and "No module named 'torch'" in done.stderr
