# The two commands a fresh clone needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= dev,postgres,redis,vault

.PHONY: demo test services bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes (editable, so the source tree is what runs).
$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@ $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	$(BIN)/python -m broker.devtools.demo

# The suite talks to real PostgreSQL and Redis; start them if this machine has them stopped.
services:
	@scripts/ensure-services

test: $(VENV)/.installed-test services
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed-test services
	$(BIN)/python bench/exchange.py

clean:
	rm -rf $(VENV) .broker .pytest_cache build *.egg-info
