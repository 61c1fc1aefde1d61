# `make demo` and `make test` set up .venv on first use (idempotent, fast afterwards).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU wheel: installed first, only when the venv has no torch, so no CUDA build is pulled.
TORCH_CPU := torch==2.13.0

.PHONY: setup demo test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_CPU)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/instructcraft demo --out outputs/demo

test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15 tests

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -m "not slow" tests

lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

bench: $(STAMP)
	$(VENV)/bin/instructcraft bench env --json

clean:
	rm -rf $(VENV) outputs
