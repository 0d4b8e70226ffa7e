"""``mm-platform``: generate sample data and run the whole pipeline in-process."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings
from datetime import date

from mm_platform.config import ConfigError, config_path, find_dataset, load_config
from mm_platform.core.errors import USER_ERROR_METADATA_KEY, USER_ERROR_TRACEBACK_KEY, UserError, one_line


def _quiet() -> None:
    for name in ("cmdstanpy", "py4j", "prophet", "mlflow", "alembic", "dagster"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")


def _positive(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}")
    return n


def _date(v: str) -> date:
    try:
        return date.fromisoformat(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {v!r}") from None


def cmd_generate(args) -> int:
    from tqdm import tqdm

    from mm_platform.datagen import DEFAULT_END_DATE, KIND_CONFIGS, write_sales

    # Without --config/--dataset, the weekly kinds go where their packaged configs read them from.
    chosen = args.config or getattr(args, "dataset", None)
    cfg = load_config(dataset_path(args) if chosen else KIND_CONFIGS[args.kind]) if chosen or args.kind != "retail_daily" else None
    url = args.source_url or (cfg.source.url if cfg else load_config().source.url)
    table = args.table or (cfg.source.table if cfg else "sales")
    if args.future_days < 0:
        raise ConfigError(f"--future-days must be 0 or more, got {args.future_days}")
    total = args.stores * args.items * (args.days + args.future_days)
    with tqdm(total=total, unit="rows", disable=not sys.stderr.isatty(), desc="generate") as bar:
        rows = write_sales(url, table, args.stores, args.items, args.days, args.seed, args.end_date or DEFAULT_END_DATE, bar.update,
                           future_days=args.future_days, kind=args.kind)
    series = args.stores * args.items * (2 if args.kind == "weekly_multikey" else 1)  # 2 warehouses
    print(json.dumps({"rows": rows, "series": series, "source_url": url, "table": table}))
    return 0


def latest_source_date(cfg) -> date:
    # By date semantics, ignoring unparsable dates (ingestion quarantines them): mm_platform.steps.ingest.
    from mm_platform.steps.ingest import newest_actual_date

    value = newest_actual_date(cfg)
    if value is None:
        raise ConfigError(f"source table {cfg.source.table} at {cfg.source.url} is empty: run `mm-platform generate` first")
    return value


def dataset_path(args):
    """The dataset config a command means: ``--dataset NAME`` (from the datasets folder,
    ``$MM_DATASETS``), ``--config PATH``, else ``$MM_CONFIG`` or the packaged retail example."""
    if getattr(args, "dataset", None):
        return find_dataset(args.dataset)[1]
    return config_path(getattr(args, "config", None))


def load_dataset_config(args):
    return load_config(dataset_path(args))


def add_dataset_options(p: argparse.ArgumentParser) -> None:
    """``--config PATH`` or ``--dataset NAME``, not both."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", help="dataset config YAML (default: $MM_CONFIG or the packaged retail example)")
    g.add_argument("--dataset", metavar="NAME", help="a dataset of the datasets folder ($MM_DATASETS, default the "
                   "packaged examples) by its name or file name, e.g. retail, weekly_revenue")


def dataset_of(args):
    """The Dagster side of the dataset a command means (mm_platform.defs.dataset.Dataset)."""
    from mm_platform.defs.dataset import Dataset

    return Dataset.from_file(dataset_path(args))


def cmd_run(args) -> int:
    import dagster as dg

    from mm_platform.defs.dataset import PIPELINE_JOB
    from mm_platform.stores.warehouse import Warehouse

    ds = dataset_of(args)
    cfg = ds.cfg
    # Checked before anything (home, lock, Dagster run) is created: a bad source or run date
    # is one line and leaves no trace.
    check_source_exists(cfg)
    run_date = args.run_date or latest_source_date(cfg)
    check_run_date(cfg, run_date, ds.partitions)
    from mm_platform.stores.home import hold_run_lock

    # One run per home and dataset; held until this function returns (or the process dies).
    home_lock = hold_run_lock(cfg, run_date, wait=getattr(args, "wait", False))  # noqa: F841
    debug = getattr(args, "debug", False)
    # Quiet by default: the CLI prints a failed step as one line itself, where Dagster's console
    # logger would print it with its stack. --debug shows Dagster's full logs.
    log_level = args.log_level or ("DEBUG" if debug else "CRITICAL")
    started = time.time()
    # The dataset's pipeline job: its assets and their checks, a run under the job's name (the
    # checks' results go to the instance and the summary).
    job = ds.definitions().resolve_job_def(ds.prefixed(PIPELINE_JOB))
    with dagster_instance(args.ephemeral) as instance, _jvm_output_hidden(not debug and not args.log_level):
        result = job.execute_in_process(
            partition_key=str(run_date),
            instance=instance,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
            tags={LAUNCHED_BY_TAG: "mm-platform run", **code_location_tags()},
        )
    evaluations = result.get_asset_check_evaluations()
    blocked = [e for e in evaluations if not e.passed and e.blocking and e.severity == dg.AssetCheckSeverity.ERROR]
    if blocked:  # the run stopped at a quality gate: the input is what is wrong, not the code
        for e in blocked:
            print(f"mm-platform: check {e.check_name} on {e.asset_key.to_user_string()} failed: "
                  f"{one_line(Exception(e.description or 'no description'))}", file=sys.stderr)
        return 2
    if not result.success:
        return report_step_failures(result, debug)

    latest = {e.asset_key: e.materialization for e in result.get_asset_materialization_events()}

    def meta(asset: str, key: str):
        mat = latest.get(ds.key(asset))
        return mat.metadata[key].value if mat is not None and key in mat.metadata else None

    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    summary = {
        "run_date": str(run_date),
        "dataset": cfg.name,
        "series": meta("model_set", "series"),
        "models_registered": meta("model_set", "models_registered"),
        "models_unchanged": meta("model_set", "models_unchanged"),
        "models_failed": meta("model_set", "models_failed"),
        "models_promoted": meta("promoted_models", "promoted"),
        "series_scored": meta("batch_predictions", "series_scored"),
        "series_not_scored": meta("batch_predictions", "series_failed"),
        "prediction_rows": meta("batch_predictions", "prediction_rows"),
        "warehouse_url": wh.engine.url.render_as_string(hide_password=True),
        "training_registry_uri": cfg.storage.training_registry_uri,
        "production_registry_uri": cfg.storage.production_registry_uri,
        "checks": {e.check_name: "passed" if e.passed else "failed" for e in evaluations},
        "check_warnings": [f"{e.check_name}: {e.description}" for e in evaluations if not e.passed],
        "dagster_run_id": None if args.ephemeral else result.run_id,
        "dagster_job": job.name,
        "seconds": round(time.time() - started, 2),
    }
    wh.dispose()
    print(json.dumps(summary))
    return 0


LAUNCHED_BY_TAG = "mm_platform/launched_by"
CODE_LOCATION = "mm_platform"  # location_name in workspace.yaml and docker/workspace.yaml


def code_location_tags() -> dict[str, str]:
    """The tag Dagster puts on the runs it launches from a code location (repository@location):
    the UI lists a job's runs by it, so with it the CLI's in-process runs appear on their job's
    page (and partition status) in `make dev` too, not only in the run list."""
    from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
    from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

    return {REPOSITORY_LABEL_TAG: f"{SINGLETON_REPOSITORY_NAME}@{CODE_LOCATION}"}

# The instance `mm-platform` writes to when $DAGSTER_HOME is unset: the same settings as the
# repo's dagster.yaml (which the Makefile copies to $MM_HOME/dagster for `make dev`).
DEFAULT_DAGSTER_YAML = """# Written by mm-platform: local SQLite run/event/schedule storage in this folder.
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 1  # Spark in local mode uses all cores; one run at a time
"""


def dagster_home() -> str:
    """$DAGSTER_HOME (absolute), else $MM_HOME/dagster, the folder `make dev` opens; a folder
    that does not exist yet is created with DEFAULT_DAGSTER_YAML."""
    from pathlib import Path

    from mm_platform.config import mm_home

    home = Path(os.environ.get("DAGSTER_HOME") or mm_home() / "dagster").expanduser().resolve()
    if not home.exists():
        home.mkdir(parents=True)
        (home / "dagster.yaml").write_text(DEFAULT_DAGSTER_YAML)
    elif not home.is_dir():
        raise UserError(f"DAGSTER_HOME {home} is not a folder")
    os.environ["DAGSTER_HOME"] = str(home)  # Dagster's own lookups (and child processes) agree
    return str(home)


def dagster_instance(ephemeral: bool = False):
    """The persistent Dagster instance runs are recorded in (see dagster_home), or an
    ephemeral one; a context manager that disposes of it."""
    import dagster as dg

    return dg.DagsterInstance.ephemeral() if ephemeral else dg.DagsterInstance.from_config(dagster_home())


def launch_job(ds, name: str, run_config: dict, args, operation: str):
    """Run dataset ``ds``'s job ``<dataset>_<name>`` in-process, recorded in the instance. The
    op's output on success, else None after printing the failure (``args.exit_code`` is set)."""
    job = ds.definitions().resolve_job_def(ds.prefixed(name))
    debug = getattr(args, "debug", False)
    log_level = "DEBUG" if debug else "CRITICAL"  # quiet: a failure is printed as one line below
    with dagster_instance(getattr(args, "ephemeral", False)) as instance, _jvm_output_hidden(not debug):
        result = job.execute_in_process(
            run_config={**run_config, "loggers": {"console": {"config": {"log_level": log_level}}}},
            instance=instance, raise_on_error=False, tags={LAUNCHED_BY_TAG: operation, **code_location_tags()},
        )
    if not result.success:
        args.exit_code = report_step_failures(result, debug)
        return None
    (node,) = [n.name for n in job.graph.node_defs]
    return result.output_for_node(node)


def cmd_retrain(args) -> int:
    from mm_platform.defs.operations.jobs import RETRAIN_JOB

    ds = dataset_of(args)
    # Checked before the instance is opened: a missing home stays missing.
    _require_store(ds.cfg.storage.warehouse_url, "warehouse", "there is no training run to repair")
    config = {"run_date": str(args.run_date) if args.run_date else None}
    out = launch_job(ds, RETRAIN_JOB, {"ops": {"retrain_failed_series": {"config": config}}}, args,
                     "mm-platform retrain --failed")
    if out is None:
        return args.exit_code
    if not out["retried"]:
        print(json.dumps({"run_date": out["run_date"], "retrained": 0, "note": "no failed series"}))
    else:
        print(json.dumps(out))
    return 0


def cmd_rollback(args) -> int:
    from mm_platform.defs.operations.jobs import ROLLBACK_JOB

    ds = dataset_of(args)
    _require_store(ds.cfg.storage.production_registry_uri, "production registry", "there is nothing to roll back")
    config = {"series": list(args.series), "to_version": args.to_version}
    rows = launch_job(ds, ROLLBACK_JOB, {"ops": {"rollback_series": {"config": config}}}, args, "mm-platform rollback")
    if rows is None:
        return args.exit_code
    for row in rows:
        print(json.dumps(row))
    return 0


def cmd_jvm_archive(args) -> int:
    from mm_platform.spark import jvm_archive

    return jvm_archive.main(["--force"] if args.force else [])


def _require_store(url: str, what: str, consequence: str) -> None:
    """A command that only reads or repairs a home must not create it: a missing SQLite store
    is a user error (one line), not a new empty database."""
    from mm_platform.stores.sql import missing_sqlite_file

    path = missing_sqlite_file(url)
    if path is not None:
        raise UserError(f"the {what} {path} does not exist: {consequence} (run `mm-platform run` first)")


def check_source_exists(cfg) -> None:
    """Before anything is created: the source database, table and configured columns exist."""
    from mm_platform.stores.sql import check_source

    c = cfg.columns
    check_source(cfg.source.url, cfg.source.table, [c.date, c.target, *c.keys, *c.regressors])


def first_source_date(cfg) -> date | None:
    """The oldest date with a target in the source (None if it cannot be told)."""
    import sqlalchemy as sa

    from mm_platform.stores.sql import source_engine

    engine = source_engine(cfg.source.url)
    try:
        with engine.connect() as conn:
            value = conn.execute(
                sa.select(sa.func.min(sa.column(cfg.columns.date)))
                .select_from(sa.table(cfg.source.table))
                .where(sa.column(cfg.columns.target).is_not(None))
            ).scalar()
    finally:
        engine.dispose()
    if value is None or isinstance(value, date):
        return value
    try:  # text dates: ISO strings sort in date order; anything else is for ingestion to quarantine
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


def check_run_date(cfg, run_date: date, partitions) -> None:
    """A run date must be one of the dataset's partitions and not before the source's first data
    (else the run would fail deep inside a step with a message about the lake)."""
    first, last = partitions.get_first_partition_key(), partitions.get_last_partition_key()
    if first is None or last is None or not (first <= str(run_date) <= last):
        newest = "yesterday" if cfg.frequency == "daily" else "the last whole week"
        raise UserError(
            f"run date {run_date} is outside the run-date partitions: {first} (the config's start_date) "
            f"to {last} ({newest})"
        )
    if not partitions.has_partition_key(str(run_date)):
        raise UserError(
            f"run date {run_date} is a {run_date:%A}: the run dates of weekly dataset {cfg.name} are "
            f"{date.fromisoformat(first):%A}s, the weekday of its start_date {cfg.start_date} (e.g. {last})"
        )
    oldest = first_source_date(cfg)
    if oldest is not None and run_date < oldest:
        raise UserError(
            f"run date {run_date} is before the first data in source table {cfg.source.table!r} ({oldest}): "
            f"nothing to train on"
        )


@contextlib.contextmanager
def _jvm_output_hidden(hide: bool):
    """Spark's JVM writes its start-up lines straight to the process's stderr (file descriptor 2,
    inherited at launch). Unless --debug or --log-level asks for logs, fd 2 points at an unlinked
    temporary file while the run executes, so that a failure reaches the terminal as one line."""
    if not hide:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def report_step_failures(result, debug: bool = False) -> int:
    """Print each failed step as one line; return 2 if every failure is a user error, else 1."""
    code = 0
    for ev in result.all_events:
        if not ev.is_step_failure or ev.event_specific_data is None:
            continue
        data = ev.event_specific_data
        user = getattr(data, "user_failure_data", None)
        error = getattr(data, "error", None)
        is_user = user is not None and USER_ERROR_METADATA_KEY in (user.metadata or {})
        if debug:
            stack = user.metadata.get(USER_ERROR_TRACEBACK_KEY) if is_user else None
            print(stack.value if stack is not None else error.to_string() if error is not None else "", file=sys.stderr)
        if is_user:
            print(f"mm-platform: {user.description}", file=sys.stderr)
            code = code or 2
        else:
            message = one_line(error.message) if error is not None else "unknown error"
            print(f"mm-platform: step {ev.step_key} failed with an internal error: {message[:500]}"
                  f"{'' if debug else ' (rerun with --debug for the traceback)'}", file=sys.stderr)
            code = 1
    return code or 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mm-platform", description="Many models at scale: train, promote, score, serve.")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write a generated retail sales table to a source database")
    g.add_argument("--stores", type=_positive, required=True)
    g.add_argument("--items", type=_positive, required=True)
    g.add_argument("--days", type=_positive, required=True)
    g.add_argument("--source-url", help="SQLAlchemy URL (default: the config's source.url)")
    g.add_argument("--table", help="table name (default: the config's source.table)")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--end-date", type=_date, help="last date of the data (default 2025-12-31)")
    g.add_argument("--future-days", type=int, default=0,
                   help="also write this many days after the end with planned price/promo/holiday and no units")
    add_dataset_options(g)
    g.add_argument("--kind", choices=["retail_daily", "price_weekly", "weekly_multikey"], default="retail_daily",
                   help="retail_daily (default: store x item daily units); price_weekly (region x product weekly revenue "
                   "driven by planned prices; --stores/--items/--days are regions/products/weeks); weekly_multikey "
                   "(region x 2 warehouses x SKU weekly revenue; regions/SKUs/weeks)")
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser("run", help="run a dataset's pipeline job (its whole asset graph) in-process and print a JSON summary")
    add_dataset_options(r)
    r.add_argument("--run-date", type=_date, help="run date / partition (default: the newest date in the source)")
    r.add_argument("--log-level", help="Dagster console log level (default CRITICAL, i.e. quiet: a failed step is printed "
                   "as one line by the CLI; DEBUG with --debug)")
    r.add_argument("--ephemeral", action="store_true", help="do not record the run in $DAGSTER_HOME")
    r.add_argument("--wait", action="store_true", help="if another run holds this home, wait for it instead of exiting 2")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("retrain", help="retrain only the series that failed in the last training run")
    t.add_argument("--failed", action="store_true", required=True, help="retrain the failed series (required)")
    add_dataset_options(t)
    t.add_argument("--run-date", type=_date, help="the training run to repair (default: the newest)")
    t.set_defaults(func=cmd_retrain)

    j = sub.add_parser("jvm-archive", help="make the class archive local Spark sessions start from (make install runs it)")
    j.add_argument("--force", action="store_true", help="make it again even if it exists")
    j.set_defaults(func=cmd_jvm_archive)

    rb = sub.add_parser("rollback", help="point series back at an earlier production model version")
    rb.add_argument("--series", nargs="+", required=True, metavar="SERIES_ID", help="series ids such as store=3,item=17")
    rb.add_argument("--to-version", type=_positive, help="production version to restore (default: the previous one)")
    add_dataset_options(rb)
    rb.set_defaults(func=cmd_rollback)

    # Other concerns add their subcommands here: each module has add_commands(subparsers).
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    for command in sub.choices.values():  # `mm-platform run --debug` works too
        if "--debug" not in command._option_string_actions:
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return p


DEBUG_HELP = "on errors, show the traceback and Dagster's full logs"


COMMAND_MODULES: list[str] = ["mm_platform.dashboard.cli", "mm_platform.serving.cli", "mm_platform.evaluate", "mm_platform.stores.home"]


def main(argv: list[str] | None = None) -> int:
    _quiet()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("MM_DEBUG", "") not in ("", "0")
    args.debug = debug
    try:
        return args.func(args)
    except (UserError, PermissionError, FileNotFoundError) as err:
        # Bad input (mm_platform.core.errors.UserError, or a path or permission the user can fix):
        # one clear line, no traceback.
        if debug:
            traceback.print_exc()
        print(f"mm-platform: {one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug: a short line, the traceback on request
        if debug:
            traceback.print_exc()
        print(f"mm-platform: internal error: {type(err).__name__}: {one_line(err)[:500]}"
              f"{'' if debug else ' (rerun with --debug for the traceback)'}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
