# robustsweep: every target installs what it needs first (offline-safe: PyPI only).
# torch==2.13.0 is installed FIRST: a plain `torch` requirement would pull a multi-GB CUDA build.

VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.robustsweep-installed
export HF_HUB_OFFLINE      := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help install resources demo test test-fast lint bench clean

help:  ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install robustsweep with test extras and offline resources

resources: install  ## Provision offline resources (NLTK data for TextAttack) into the cache dir
	$(BIN)/robustsweep prefetch

demo: resources  ## Run the quickstart sweep (3 methods, multi-objective, offline attack, report)
	$(BIN)/robustsweep sweep jobs/quickstart_sweep.yaml --overwrite

test: resources  ## Run the whole test suite (slow end-to-end tests included)
	$(BIN)/pytest -q

test-fast: resources  ## Run the tests not marked slow
	$(BIN)/pytest -q -m "not slow"

lint: install  ## ruff over the package, tests and benchmarks (installs ruff into the venv)
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check platform tests benchmarks

bench: resources  ## Print the overhead and method-cost benchmarks
	$(BIN)/python benchmarks/overhead.py

clean:  ## Remove run outputs (keeps the venv and the cache)
	rm -rf runs ray_results mlruns mlflow.db .pytest_cache
