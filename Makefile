# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A machine with a local CPU build of torch 2.13.0 picks it up here; set
# TORCH_SPEC=torch to take the newest release instead.
TORCH_SPEC ?= torch==2.13.0
DEMO_DB ?= demo.db
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test install install-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/semsearch --uri $(DEMO_DB) ingest samples/ --exclude README.md --exclude 'LICENSES/*'
	$(BIN)/semsearch --uri $(DEMO_DB) search "How does SQLite roll back a transaction after a crash?" -k 5

test: install-test
	bash scripts/install-milvus-server.sh
	$(BIN)/python -m pytest
