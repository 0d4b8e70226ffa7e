# Two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export MM_HOME ?= $(CURDIR)/.mm_home
export DAGSTER_HOME ?= $(MM_HOME)/dagster
PYTEST_ARGS ?=

.PHONY: install demo test test-slow dev mlflow-ui lint clean bench-train bench-score bench-serve

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# The class archive local Spark sessions start from (half the JVM's start-up; see mm_platform/spark/jvm_archive.py).
	$(VENV)/bin/mm-platform jvm-archive || echo "warning: no JVM class archive; Spark sessions start without it" >&2
	touch $(STAMP)

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# Generate ~20 series of sample sales, then run the whole asset graph on embedded defaults.
demo: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/mm-platform generate --stores 4 --items 5 --days 1095 --future-days 28
	$(VENV)/bin/mm-platform run
	@echo "Look at: warehouse $(MM_HOME)/warehouse.db (tables predictions, scoring_report, training_report, promotion_log, forecast_metrics),"
	@echo "         registries $(MM_HOME)/mlflow/{training,production}.db, lake $(MM_HOME)/lake;"
	@echo "         'make dev' for the Dagster UI, 'make mlflow-ui' for the registries."

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

dev: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml

# Training registry on :5000, production registry on :5001.
mlflow-ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(MM_HOME)/mlflow/training.db --port 5000 & \
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(MM_HOME)/mlflow/production.db --port 5001

# Benchmarks (numbers side by side with a baseline, not tests): BENCH_ARGS passes options through,
# e.g. make bench-train BENCH_ARGS="--series 1000 --days 4000 --baseline-series 50 --json".
BENCH_ARGS ?= --series 1000 --days 1000 --baseline-series 50
bench-train bench-score: install
	$(PY) -m benchmarks $(@:bench-%=%) $(BENCH_ARGS)

bench-serve: install
	$(PY) -m benchmarks serve $(BENCH_ARGS_SERVE)

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf .mm_home
