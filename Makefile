# quillgpt: two commands for a fresh machine.
#   make demo  - install, prepare the built-in corpus, train the CPU preset, print a sample
#   make test  - install what the tests need and run ruff and the test suite
#
# On a machine without an NVIDIA GPU the pinned CPU wheel of torch is installed first, so pip
# never pulls a multi-GB CUDA build. Set TORCH_SPEC to override (e.g. TORCH_SPEC="torch" on CUDA).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HAS_NVIDIA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1)
TORCH_SPEC ?= $(if $(HAS_NVIDIA),torch,torch==2.13.0)

.PHONY: install demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install --quiet -e ".[dev]"  # llama.cpp builds on every core
	touch $@

install: $(VENV)/.installed

# The demo trains the CPU preset for 5 minutes of training time (data preparation and the final
# evaluation on the whole validation split come on top) into runs/demo, replacing an earlier demo.
# `quill prepare` without options builds what the preset trains on: they share their defaults.
DEMO_CONFIG ?= configs/shakespeare-bpe-cpu.toml
DEMO_TIME ?= 5m
DEMO_DIR ?= runs/demo

demo: install
	$(BIN)/quill prepare
	rm -rf $(DEMO_DIR)
	$(BIN)/quill train --config $(DEMO_CONFIG) --max_time $(DEMO_TIME) --out_dir $(DEMO_DIR)
	@echo "training and validation curves: $(DEMO_DIR)/loss.png"

test: install lint
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
