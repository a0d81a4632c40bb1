# ledgerflow — the two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
export LEDGERFLOW_DATABASE_URL ?= sqlite:///./ledgerflow.db
# Bytecode is cached (some CI images set PYTHONDONTWRITEBYTECODE): the tests start hundreds of
# worker processes, and each would otherwise compile ledgerflow and the test apps again.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test system lint bench install dev clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(BIN)/activate
	$(PY) -m pip install --quiet -e '.[server,gdrive,s3,receipts]'

dev: $(BIN)/activate
	$(PY) -m pip install --quiet -e '.[dev]'

## Set up, migrate the embedded SQLite database, run the demo, then keep the service running.
run: install
	$(BIN)/ledgerflow init
	$(BIN)/ledgerflow demo
	$(BIN)/ledgerflow serve

## What the tests need from the system (Chromium, Dovecot, Tesseract jpn/tha, fonts, PostgreSQL):
## installed when missing, or one line saying what is needed and why (see .ci/setup-system).
system:
	.ci/setup-system

## The whole test suite (SQLite and PostgreSQL), with line coverage, in 3 processes (pytest-xdist;
## each test file stays in one process): most tests wait on worker processes and servers. Files
## are handed out longest first, in the order of tests/durations.json (see docs/testing.md).
test: dev system
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -n 3 --dist loadfile --no-loadscope-reorder --cov=ledgerflow --cov-report=term --cov-fail-under=85 --durations=15 $(PYTEST_ARGS)

lint: dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

## Benchmarks: one JSON document (also in bench/results/latest.json) and the growth plot
## (docs/benchmarks-growth.svg); see docs/benchmarks.md. BENCH_ARGS=--quick validates the harness.
bench: dev
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run --out bench/results/latest.json --plot docs/benchmarks-growth.svg $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .coverage* htmlcov build dist src/*.egg-info
