#!/usr/bin/env bash
# CI step: bnfold[onnx,serve] in a fresh virtual environment with NO torch; bnfold-export --onnx folds, verifies
# and writes float32, fp16 and int8 versions of a small classifier, and bnfold-serve serves them (loopback only).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
# the server drains on SIGTERM: wait for it, so its last lines come before this script's end and its
# virtual environment is not removed under it
trap 'if [ -n "${SERVER_PID:-}" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" || true; fi; rm -rf "$WORK"' EXIT
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet --upgrade pip
"$WORK/venv/bin/python" -m pip install --quiet ".[onnx,serve]"
if "$WORK/venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "onnx_only: torch is installed in the bnfold[onnx,serve] environment" >&2
    exit 1
fi
# the test graph and images, written by the checkout's own helper (numpy, onnx and pillow only)
"$WORK/venv/bin/python" scripts/onnx_only_fixture.py "$WORK"
cd "$WORK"
for variant in "" --fp16 --int8; do
    venv/bin/bnfold-export --onnx in.onnx --images images --repository repo --name m $variant
done
PORT=$("$WORK/venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
venv/bin/bnfold-serve --repository repo --host 127.0.0.1 --port "$PORT" &
SERVER_PID=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null 2>&1 && break
    sleep 0.2
done
for name in m m-fp16 m-int8; do
    curl -fsS -X POST "http://127.0.0.1:$PORT/v2/models/$name/infer" -H 'content-type: application/json' \
        -d @request.json | grep -q '"outputs"'
    echo "onnx_only: $name served"
done
kill "$SERVER_PID"
status=0
wait "$SERVER_PID" || status=$?
SERVER_PID=
if [ "$status" -ne 0 ]; then
    echo "onnx_only: bnfold-serve exited $status after SIGTERM (expected 0 after its drain)" >&2
    exit 1
fi
echo "onnx_only: bnfold-serve drained and exited 0"
