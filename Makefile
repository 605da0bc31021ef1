# Two entry points, both from a fresh clone:
#   make demo  -> .venv with emseg, trains on the embedded sample, segments, evaluates
#   make test  -> .venv with the dev extras and the system packages the tests use
#                 (scripts/test-system-deps: chromium), checks the import layers
#                 (lint-imports, contracts in pyproject.toml), runs the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test venv venv-dev clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

venv: $(VENV)/.installed
venv-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/emseg demo --out emseg-demo

test: $(VENV)/.installed-dev
	bash scripts/test-system-deps
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) emseg-demo
