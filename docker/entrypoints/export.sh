#!/bin/sh
# The `export` container's command: fold, export and verify the run's latest checkpoint into the repository.
# A failed export exits non-zero and leaves the repository exactly as it was.
set -eu
: "${BNFOLD_RUN_DIR:?set BNFOLD_RUN_DIR to the run directory that training wrote}"
: "${BNFOLD_REPOSITORY:?set BNFOLD_REPOSITORY to the model repository root, e.g. /models}"
: "${BNFOLD_MODEL_NAME:?set BNFOLD_MODEL_NAME to the model name in the repository, e.g. digits}"
# shellcheck disable=SC2086
exec bnfold-export --checkpoint "$BNFOLD_RUN_DIR" --repository "$BNFOLD_REPOSITORY" --name "$BNFOLD_MODEL_NAME" \
  ${BNFOLD_EXPORT_ARGS:-}
