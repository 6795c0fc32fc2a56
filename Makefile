# The two commands a fresh clone needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= dev,postgres,redis,vault,demo,gateway,aws

.PHONY: demo test services browser bench bench-lineage bench-postgres bench-openbao bench-faults bench-soak bench-serving bench-ledger bench-targets clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes (editable, so the source tree is what runs).
# The demo extra (pgserver: an embedded PostgreSQL) is optional: where it cannot be installed,
# the demo runs without its PostgreSQL part.
$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]' || $(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@ $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	$(BIN)/python -m broker.devtools.demo

# The suite talks to real PostgreSQL and Redis; start them if this machine has them stopped.
services:
	@scripts/ensure-services

# The web-page tests drive a real headless Chromium (Debian's chromium + chromium-driver).
browser:
	@scripts/ensure-browser

# Lint and types first (configured in pyproject.toml), then the suite on PYTEST_WORKERS processes
# (pytest-xdist; a test file stays on one process, so its module fixtures are built once). Many
# tests wait on servers and clocks, so 3 processes on 2 cores finish in about 60 % of the time.
PYTEST_WORKERS ?= 3
test: $(VENV)/.installed-test services browser
	$(BIN)/ruff check broker tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

bench: $(VENV)/.installed-test services
	$(BIN)/python -m bench.exchange

# Audit query latency on a 1,000,000-event ledger (SQLite and PostgreSQL); a few minutes.
bench-lineage: $(VENV)/.installed-test services
	$(BIN)/python -m bench.lineage

# PostgreSQL credentials: mints/s and p50/p99 vs bare CREATE/DROP ROLE, usage-ingest lines/s.
bench-postgres: $(VENV)/.installed-test services
	$(BIN)/python -m bench.postgres

# JWT exchange vs OpenBao auth/jwt/login (in-memory dev server and raft), same JWTs, one run.
bench-openbao: $(VENV)/.installed-test services
	BROKER_INSECURE_DEV_ISSUER=1 $(BIN)/python -m bench.openbao

# The fault suite's scenarios, longer, with figures (docs/operations.md).
bench-faults: $(VENV)/.installed-test services
	$(BIN)/python -m bench.faults

# A worker's RSS over 100,000 mints (PostgreSQL + Redis): growth after warm-up; several minutes.
bench-soak: $(VENV)/.installed-test services
	$(BIN)/python -m bench.soak

# Serving models on the JWT exchange: gunicorn gthread/sync/gevent and granian (the last two
# when installed), side by side, ratios against `broker serve`'s default.
bench-serving: $(VENV)/.installed-test services
	BROKER_INSECURE_DEV_ISSUER=1 $(BIN)/python -m bench.serving

# Concurrent ledger appends on PostgreSQL: group commit vs one commit each, and append_many.
bench-ledger: $(VENV)/.installed-test services
	$(BIN)/python -m bench.ledger

# Issue 14's targets table: every row's bench in sequence, with its command and figures
# (about half an hour; QUICK=1 for smaller sizes).
bench-targets: $(VENV)/.installed-test services
	$(BIN)/python -m bench.targets $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) .broker .pytest_cache .mypy_cache .ruff_cache build *.egg-info
