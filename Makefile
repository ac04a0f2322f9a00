# Verified Reading Notes: every command a user or CI needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0# the CPU build this machine ships; a newer range would pull a multi-GB CUDA build
STAMP := $(VENV)/.installed
export NO_MKDOCS_2_WARNING := 1
export PYTHONHASHSEED := 0
LINTED := snippets vrn_site tests notebooks
NBVAL ?= --nbval# `make test NBVAL=--nbval-lax` on a GPU: asserts only, outputs not compared

.PHONY: help setup serve build test lint unit site notebooks lab test-gpu clean

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml package.json package-lock.json
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,xcheck]"
	npm ci --no-audit --no-fund --loglevel=error
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "The browser test needs Debian's chromium: sudo apt-get install chromium" >&2; exit 1; }
	touch $(STAMP)

setup: $(STAMP) ## virtual environment, CPU torch, the package with its extras, MathJax and Mermaid

serve: $(STAMP) ## build the site and serve it at http://127.0.0.1:8000
	$(VENV)/bin/mkdocs serve --strict --dev-addr 127.0.0.1:8000

build: $(STAMP) ## build the static site into site/
	$(VENV)/bin/mkdocs build --strict

lint: $(STAMP) ## ruff lint and format check of code, tests and notebooks
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

unit: $(STAMP) ## unit tests, cross-checks, ledger checks and every notebook under nbval (records the run)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile -m "not site" tests notebooks \
	  $(NBVAL) --sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 300

site: $(STAMP) ## strict site build and the browser test (shows the run recorded by `make unit`)
	$(PY) -m pytest -m site tests

test: lint unit site ## every check; ends with pytest's summary

test-gpu: ## the same on a GPU machine: notebooks in lax mode, their asserts still hold
	$(MAKE) test NBVAL=--nbval-lax

notebooks: $(STAMP) ## re-execute every notebook and store its outputs (one thread, as the tests run them)
	OMP_NUM_THREADS=1 $(PY) -m vrn_site.execute

lab: $(STAMP) ## open the notebooks in JupyterLab
	$(PY) -m pip install --quiet -e ".[lab]"
	$(VENV)/bin/jupyter lab notebooks

clean: ## remove built files (keeps the virtual environment)
	rm -rf site build .pytest_cache .hypothesis
