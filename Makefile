# Two set-up commands for a fresh machine: `make demo` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bundle clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned: these releases install from local disk; any other version downloads gigabytes
$(VENV)/.torch: $(BIN)/python
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/carparts predict src/carparts/assets/samples --out runs/demo

test: $(VENV)/.dev
	$(BIN)/ruff check src tests
	$(BIN)/pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

# Retrain the bundled default model with the fast preset and copy it into the package (about 55 min on 2 cores).
BUNDLE_RUN := bundle-$(shell date +%Y%m%d-%H%M%S)
bundle: $(VENV)/.installed
	$(BIN)/carparts train --preset fast --name $(BUNDLE_RUN)
	$(BIN)/python -m carparts.tools.bundle runs/$(BUNDLE_RUN) --input-size 320

clean:
	rm -rf $(VENV) runs
