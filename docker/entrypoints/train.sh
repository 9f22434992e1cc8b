#!/bin/sh
# The `train` container's command: train on the bundled digits (or BNFOLD_TRAIN_ARGS) into BNFOLD_RUN_DIR.
set -eu
: "${BNFOLD_RUN_DIR:?set BNFOLD_RUN_DIR to the run directory on the runs volume, e.g. /data/runs/digits}"
# BNFOLD_TRAIN_ARGS is split into words on purpose: it carries extra bnfold-train flags.
# shellcheck disable=SC2086
exec bnfold-train --out "$BNFOLD_RUN_DIR" --overwrite --progress ${BNFOLD_TRAIN_ARGS:-}
