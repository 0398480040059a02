# Two commands: `make demo` and `make test`. Each creates (or reuses) .venv, installs torch first
# (TORCH=... to choose another build), then the project: the core for the demo, with every extra
# for the tests (the Hugging Face, tracking and Ray integrations are tested too). `make test`
# runs everything (CI must); `make test-quick` skips the tests marked slow, which start processes.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
VERSION := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
CORE := $(VENV)/.installed-core-$(VERSION)
FULL := $(VENV)/.installed-full-$(VERSION)

.PHONY: demo test test-quick lint install clean

$(CORE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-core-*
	touch $(CORE)

$(FULL): $(CORE)
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e ".[dev,hf,tracking,ray]"
	rm -f $(VENV)/.installed-full-*
	touch $(FULL)

install: $(FULL)

demo: $(CORE)
	$(BIN)/lifelong demo

test: $(FULL)
	$(BIN)/python -m pytest -q -n 2

test-quick: $(FULL)
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

lint: $(CORE)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
