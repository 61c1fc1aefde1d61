# `make demo` and `make test` set up .venv on first use (idempotent, fast afterwards).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU wheel: installed first, only when the venv has no torch, so no CUDA build is pulled.
TORCH_CPU := torch==2.13.0

.PHONY: setup browser demo test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_CPU)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/instructcraft demo --out outputs/demo

# The attention viewer's test drives Debian's Chromium (playwright only speaks to it).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "could not install chromium (needs root and Debian): the browser test will fail"

test: $(STAMP) browser
	$(PY) -m pytest -n 2 --durations=15 tests

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -m "not slow" tests

lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

bench: $(STAMP)
	for what in env policy bc attention; do $(VENV)/bin/instructcraft bench $$what --json; done

clean:
	rm -rf $(VENV) outputs
