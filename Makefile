# Verified Reading Notes: every command a user or CI needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0# the CPU build this machine ships; a newer range would pull a multi-GB CUDA build
STAMP := $(VENV)/.installed
BROWSER := /usr/bin/chromium# Debian's, for the browser test only: reading the site does not need it
export NO_MKDOCS_2_WARNING := 1
export PYTHONHASHSEED := 0
LINTED := snippets vrn_site tests notebooks
NBVAL ?= --nbval# `make test NBVAL=--nbval-lax` on a GPU: asserts only, outputs not compared
SHARD ?=# `make test SHARD=1/2`: shard 1 of 2 (whole notes), its own run record; `make merge` joins them
SHARD_RECORD := build/verification-shard-$(subst /,-of-,$(SHARD)).json
SHARD_ARGS := $(if $(SHARD),--shard $(SHARD) --ledger-record $(SHARD_RECORD))

.PHONY: help setup browser serve build test lint hooks unit merge site portability bench mutants screenshots note notebooks lab test-lax test-gpu clean

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml package.json package-lock.json
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,xcheck]"
	npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

$(BROWSER):
	@[ "$$(id -u)" = 0 ] || { echo "The browser test needs Debian's chromium at $(BROWSER): \
	  sudo apt-get install chromium (reading the site with 'make serve' does not)" >&2; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

setup: $(STAMP) ## virtual environment, CPU torch, the package with its extras, MathJax and Mermaid

browser: $(BROWSER) ## Debian's Chromium for the browser test (installed when root; `make test` needs it)

serve: $(STAMP) ## build the site and serve it at http://127.0.0.1:8000
	$(VENV)/bin/mkdocs serve --strict --dev-addr 127.0.0.1:8000

build: $(STAMP) ## build the static site into site/
	$(VENV)/bin/mkdocs build --strict

lint: $(STAMP) ## ruff, the claims ledger, and notebooks stored executed without local paths
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(PY) -m vrn_site.ledger
	$(PY) -m vrn_site.checks

hooks: $(STAMP) ## install the pre-commit hooks (the fast checks of `make lint`) into .git/hooks
	$(PY) -m pip install --quiet "pre-commit>=3,<5"
	$(VENV)/bin/pre-commit install

unit: $(STAMP) ## unit tests, cross-checks, ledger checks and every notebook under nbval (records the run)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile -m "not site" tests notebooks \
	  $(NBVAL) --sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 300 \
	  --ledger-require-all $(SHARD_ARGS)

merge: $(STAMP) ## join the shards' run records (build/verification-shard-*.json) into the site's one
	$(PY) -m vrn_site.record merge build/verification-shard-*.json --out build/verification.json

site: $(STAMP) $(BROWSER) ## strict site build and the browser test (shows the run recorded by `make unit`)
	$(PY) -m pytest -m site tests

# A shard runs its notes' checks only; the site is built once from the merged records (`make
# merge site`). A full run also records its own duration for the benchmark page (`make bench`).
test: ## every check; ends with pytest's summary (with SHARD=i/n: lint and that shard's checks)
ifeq ($(SHARD),)
	@start=$$(date +%s); $(MAKE) --no-print-directory lint unit site && \
	  printf '{"seconds": %d, "date": "%s"}\n' $$(( $$(date +%s) - start )) \
	    "$$(date -u '+%Y-%m-%d %H:%M UTC')" > build/test-seconds.json
else
	$(MAKE) --no-print-directory lint unit
endif

screenshots: $(STAMP) $(BROWSER) ## every page at 1280 and 390 px, as PNGs in build/screenshots/
	VRN_SCREENSHOTS=build/screenshots $(PY) -m pytest -m site tests/test_site.py -q -k loads_cleanly

# The notebooks pin their numerics (snippets/runtime.py). This pass forces other choices from
# outside (AVX2 kernels and MKL branch, two threads) and still compares every stored output
# strictly: it passes only if the pin wins. CI runs it after `make test`.
portability: $(STAMP) ## every notebook under strict nbval with other CPU kernels and 2 threads forced
	ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 \
	  $(PY) -m pytest -n 2 --dist loadfile notebooks --nbval \
	  --sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 300 \
	  --ledger-record build/verification-portability.json --ledger-require-all $(if $(SHARD),--shard $(SHARD))
	$(PY) -m vrn_site.record same $(if $(SHARD),$(SHARD_RECORD),build/verification.json) \
	  build/verification-portability.json

bench: $(STAMP) ## every speed claim measured side by side (build/bench.json, copied to docs/ for the site)
	$(PY) -m vrn_site.bench --out build/bench.json
	cp build/bench.json docs/bench.json

mutants: $(STAMP) ## mutation testing of snippets/: how many planted bugs the checks catch (docs/mutants.json)
	$(PY) -m vrn_site.mutants --jobs 2 --report docs/mutants.json

test-lax: ## for machines that cannot reproduce x86 bits (ARM, GPU): asserts and published values within tolerance
	$(MAKE) test NBVAL=--nbval-lax

test-gpu: test-lax ## the same on a GPU machine

note: $(STAMP) ## scaffold a note: make note NAME=<slug> TITLE="<paper title>" ARXIV=<arXiv id>
	@$(PY) -m vrn_site.scaffold "$(NAME)" "$(TITLE)" "$(ARXIV)"

notebooks: $(STAMP) ## re-execute every notebook and store its outputs (one thread, as the tests run them)
	OMP_NUM_THREADS=1 $(PY) -m vrn_site.execute

lab: $(STAMP) ## open the notebooks in JupyterLab
	$(PY) -m pip install --quiet -e ".[lab]"
	$(VENV)/bin/jupyter lab notebooks

clean: ## remove built files (keeps the virtual environment)
	rm -rf site build .pytest_cache .hypothesis
