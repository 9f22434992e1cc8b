# bnfold: the README's two commands. Both set themselves up from nothing.
#   make demo   train on the bundled digits, fold + export to ONNX, serve it, classify a real digit
#   make test   lint, type-check and run the whole test suite
#   make test-fast   the edit loop: every test that starts no server and trains nothing (under two minutes)
#   make test-onnx-only   bnfold[onnx,serve] in a fresh environment without torch: export --onnx, then serve

PYTHON ?= python3
VENV ?= .venv
PIP_CONSTRAINT ?= constraints/torch-cpu.txt
RUN_DIR ?= runs/demo
REPOSITORY ?= model_repository
MODEL_NAME ?= digits
PORT ?= 8000
BIN := $(VENV)/bin
STAMP := $(VENV)/.bnfold-dev-installed

.PHONY: demo test test-fast test-onnx-only lint typecheck unit install clean

$(STAMP): pyproject.toml $(PIP_CONSTRAINT)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(PIP_CONSTRAINT),--constraint $(PIP_CONSTRAINT)) --editable '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	BIN=$(BIN) RUN_DIR=$(RUN_DIR) REPOSITORY=$(REPOSITORY) MODEL_NAME=$(MODEL_NAME) PORT=$(PORT) bash scripts/demo.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || test -n "$$BNFOLD_CHROMIUM" || \
		echo "make test: no Chromium found, so the page's browser tests are skipped (apt-get install chromium)"
	$(BIN)/python -m pytest

test: lint typecheck unit

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not heavy" -q

test-onnx-only:
	PYTHON=$(PYTHON) bash .ci/onnx_only.sh

clean:
	rm -rf $(VENV) runs model_repository .pytest_cache .mypy_cache .ruff_cache
