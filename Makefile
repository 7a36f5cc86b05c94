# bevlabels: `make help` lists the targets. Every target depends on `setup`, which is idempotent.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The local CPU wheel; override for a GPU box, e.g. `make setup TORCH="torch==2.11.0"`.
TORCH  ?= torch==2.13.0
ARGS   ?=
STAMP  := $(VENV)/.setup-stamp

.PHONY: help setup test test-all lint format labels train synth bench clean

help: ## Show this help
	@echo "bevlabels: make targets (pass Hydra overrides with ARGS=\"key=value ...\")"
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

setup: $(STAMP) ## Create .venv, install torch first, then bevlabels (editable, dev extras); idempotent

$(STAMP): pyproject.toml
	@bash scripts/ensure_libusb.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)
	@echo "setup done: $(VENV) ($$($(PY) -c 'import torch; print("torch", torch.__version__)'))"

test: setup ## Run the test suite (excludes `slow` and `gpu` markers)
	$(PY) -m pytest -q $(ARGS)

test-all: setup ## Run every test, slow ones included
	$(PY) -m pytest -q -m "" $(ARGS)

lint: setup ## Ruff lint and format check
	$(VENV)/bin/ruff check bevlabels pipelines trainer scripts tests
	$(VENV)/bin/ruff format --check bevlabels pipelines trainer scripts tests

format: setup ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix bevlabels pipelines trainer scripts tests
	$(VENV)/bin/ruff format bevlabels pipelines trainer scripts tests

labels: setup ## Label stage: DINOv2 BEV grids + projected LiDAR into a zarr store
	@echo "make labels: the label stage (pipelines.labels) comes with a later issue (#4); nothing was run." >&2; exit 2

train: setup ## Train a camera detector (Hydra: ARGS="experiment=...")
	@echo "make train: the trainer (trainer.train) comes with a later issue (#6); nothing was run." >&2; exit 2

clean: ## Remove caches and build debris (keeps .venv; `make clean VENV_TOO=1` removes it too)
	rm -rf .pytest_cache .ruff_cache build *.egg-info outputs multirun
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	@if [ -n "$(VENV_TOO)" ]; then rm -rf $(VENV); fi
