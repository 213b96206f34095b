# driftless: the two set-up commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
N ?= 1000000
REPS ?= 3
EXECUTOR ?= local
WORKERS ?= 2

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

# A local Airflow (api-server, scheduler, dag-processor, triggerer) for trying pipelines and backfills by hand.
# EXECUTOR=celery: the CeleryExecutor with WORKERS Celery workers (default 2), Redis broker, PostgreSQL results.
airflow: install
	$(BIN)/python -m tools.airflow_local up --executor $(EXECUTOR) --workers $(WORKERS)

# Headless Chromium (Debian package), Node.js and playwright-core (npm, into tests/browser/node_modules) for the
# UI test. Idempotent: a no-op (well under a second) when all three are present; apt-get runs non-interactively,
# through `sudo -n` when not root.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo -n)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
browser-deps:
	@command -v chromium >/dev/null || command -v google-chrome >/dev/null || { $(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends chromium; }
	@command -v npm >/dev/null || { $(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends nodejs npm; }
	@test -f tests/browser/node_modules/.package-lock.json || npm ci --prefix tests/browser --no-audit --no-fund

# pytest-xdist: TEST_WORKERS processes (default 2, one per core here); TEST_WORKERS=0: one process. --dist loadgroup
# keeps the tests of one xdist_group in one worker (LIVE_STACK in tests/helpers.py: one Airflow stack at a time).
TEST_WORKERS ?= 2
# The browser deps come first: under CI=true the UI test must run, so failing to install them fails here;
# elsewhere the UI test skips (saying why) when they could not be installed.
test: install
	@$(MAKE) --no-print-directory browser-deps || case "$${CI,,}" in 1|true|yes) exit 1;; \
	  *) echo "make test: browser deps not installed; the headless-browser test will skip" >&2;; esac
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy driftless --ignore-missing-imports

bench: install
	$(BIN)/python benchmarks/run.py --n $(N) --reps $(REPS)

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
