# driftless: the two set-up commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
N ?= 1000000

export AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export DRIFTLESS_STAGING_DIR := $(CURDIR)/.airflow/staging

.PHONY: install demo test lint typecheck bench bench-deps constraints clean airflow browser-deps

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

demo: install
	$(BIN)/python scripts/demo.py

# A local Airflow (api-server, scheduler, dag-processor) for trying pipelines and backfills by hand.
airflow: install
	$(BIN)/python -m etl.airflow_local up

# Headless Chromium (Debian package) and playwright-core (npm, into tests/browser/node_modules) for the UI test.
browser-deps:
	command -v chromium >/dev/null || command -v google-chrome >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; }
	test -f tests/browser/node_modules/.package-lock.json || npm ci --prefix tests/browser --no-audit --no-fund

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy etl connectors --ignore-missing-imports

bench: install
	$(BIN)/python benchmarks/run.py --n $(N)

# dlt (compared against in the benchmarks) lives in its own venv: its pins may conflict with Airflow's.
bench-deps:
	test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q "dlt[postgres,sql_database]==1.31.0" "psycopg[binary]" pyarrow sqlalchemy

# Re-resolve the pinned dependency set (needs the package index).
constraints:
	rm -rf /tmp/driftless-constraints && $(PYTHON) -m venv /tmp/driftless-constraints
	/tmp/driftless-constraints/bin/pip install -q --upgrade pip && /tmp/driftless-constraints/bin/pip install -q -e ".[dev]"
	( head -3 constraints.txt; /tmp/driftless-constraints/bin/pip freeze --exclude-editable ) > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf .airflow .demo .staging .pytest_cache
