# The two commands a new user needs: `make demo` (the main job on the embedded default data)
# and `make test` (lint, type check and the whole test suite). Both create .venv when missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps reinstall only when the dependency list or the pins change.
$(VENV)/.installed-core: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e '.[dev,serve,onnx,interop,ray]'
	touch $@ $(VENV)/.installed-core $(VENV)/.installed-serve

$(VENV)/.installed-serve: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e '.[serve]'
	touch $@ $(VENV)/.installed-core

demo: $(VENV)/.installed-serve
	$(BIN)/misentry demo --out runs/demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
