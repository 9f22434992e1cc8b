#!/usr/bin/env bash
# make demo: train on the bundled digits, fold + export, serve, and classify a real digit over HTTP.
set -euo pipefail
BIN=${BIN:-.venv/bin}
RUN_DIR=${RUN_DIR:-runs/demo}
REPOSITORY=${REPOSITORY:-model_repository}
MODEL_NAME=${MODEL_NAME:-digits}
PORT=${PORT:-8000}

"$BIN/bnfold-train" --out "$RUN_DIR" --overwrite
"$BIN/bnfold-export" --checkpoint "$RUN_DIR" --repository "$REPOSITORY" --name "$MODEL_NAME"
"$BIN/python" -m training.sample_image --out "$RUN_DIR/digit.png" --index 2

"$BIN/bnfold-serve" --repository "$REPOSITORY" --port "$PORT" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 120); do
  curl -fs "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { echo "bnfold-serve did not start" >&2; exit 1; }
  sleep 0.5
done
curl_line="curl -s -F file=@$RUN_DIR/digit.png http://127.0.0.1:$PORT/v1/models/$MODEL_NAME/classify"
echo
echo "classify a real digit image:"
echo "  $curl_line"
eval "$curl_line"
echo
echo
echo "open the page: http://127.0.0.1:$PORT/  (draw a digit, see the fold proof and the live figures)"
echo "bnfold-serve is answering on http://127.0.0.1:$PORT (API docs: /docs). Ctrl-C stops it."
if [ "${DEMO_EXIT:-0}" = "1" ]; then exit 0; fi
wait $server
