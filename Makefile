# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install services

demo: install
	$(BIN)/continuum demo

test: install services lint
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check continuum_celery tests bench
	$(BIN)/mypy continuum_celery

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

services:
	bash scripts/services.sh
