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
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -c "import torch; from quillgpt import DecoderLM, ModelConfig; \
	m = DecoderLM(ModelConfig.preset('tiny')); \
	print(m.generate(torch.zeros(1, 1, dtype=torch.long), 16, temperature=1.0, seed=0))"

test: install lint
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
