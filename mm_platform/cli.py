"""``mm-platform``: generate sample data and run the whole pipeline in-process."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from datetime import date

from mm_platform.config import ConfigError, load_config


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

    from mm_platform.datagen import DEFAULT_END_DATE, write_sales

    cfg = load_config(args.config) if args.config else None
    url = args.source_url or (cfg.source.url if cfg else load_config().source.url)
    table = args.table or (cfg.source.table if cfg else "sales")
    if args.future_days < 0:
        raise ConfigError(f"--future-days must be 0 or more, got {args.future_days}")
    total = args.stores * args.items * (args.days + args.future_days)
    with tqdm(total=total, unit="rows", disable=not sys.stderr.isatty(), desc="generate") as bar:
        rows = write_sales(url, table, args.stores, args.items, args.days, args.seed, args.end_date or DEFAULT_END_DATE, bar.update,
                           future_days=args.future_days)
    print(json.dumps({"rows": rows, "series": args.stores * args.items, "source_url": url, "table": table}))
    return 0


def latest_source_date(cfg) -> date:
    import sqlalchemy as sa

    from mm_platform.sql import create_engine

    engine = create_engine(cfg.source.url)
    try:
        with engine.connect() as conn:
            # (rows past the last sale carry only planned regressor values: not history)
            value = conn.execute(
                sa.select(sa.func.max(sa.column(cfg.columns.date)))
                .select_from(sa.table(cfg.source.table))
                .where(sa.column(cfg.columns.target).is_not(None))
            ).scalar()
    finally:
        engine.dispose()
    if value is None:
        raise ConfigError(f"source table {cfg.source.table} at {cfg.source.url} is empty: run `mm-platform generate` first")
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def cmd_run(args) -> int:
    import dagster as dg

    from mm_platform.definitions import defs
    from mm_platform.defs.resources import build_resources
    from mm_platform.warehouse import Warehouse

    cfg = load_config(args.config)
    if args.config:
        os.environ["MM_CONFIG"] = os.path.abspath(args.config)
    run_date = args.run_date or latest_source_date(cfg)
    started = time.time()
    graph = defs()
    assets = list(graph.assets)
    result = dg.materialize(
        assets,
        partition_key=str(run_date),
        resources=build_resources(cfg, os.path.abspath(args.config) if args.config else ""),
        instance=dg.DagsterInstance.ephemeral() if args.ephemeral else None,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": args.log_level}}}},
    )
    if not result.success:
        for ev in result.all_events:
            if ev.is_step_failure and ev.event_specific_data is not None and getattr(ev.event_specific_data, "error", None):
                print(f"step {ev.step_key} failed: {ev.event_specific_data.error.message.strip()}", file=sys.stderr)
        return 1

    def meta(asset: str, key: str):
        mats = result.asset_materializations_for_node(asset)
        return mats[-1].metadata[key].value if mats and key in mats[-1].metadata else None

    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    summary = {
        "run_date": str(run_date),
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
        "seconds": round(time.time() - started, 2),
    }
    wh.dispose()
    print(json.dumps(summary))
    return 0


def cmd_retrain(args) -> int:
    from mm_platform.lake import Lake
    from mm_platform.pipeline import failed_series, train_and_register, training_registry
    from mm_platform.spark_jobs import get_session
    from mm_platform.warehouse import Warehouse

    cfg = load_config(args.config)
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    run_date, series = failed_series(wh, args.run_date)
    if not series:
        print(json.dumps({"run_date": str(run_date) if run_date else None, "retrained": 0, "note": "no failed series"}))
        return 0
    spark = get_session(cfg.spark)
    outcome = train_and_register(spark, Lake(cfg.storage.lake_url), cfg, run_date, training_registry(cfg), wh, "retrain-failed", series)
    print(json.dumps({"run_date": str(run_date), "retried": len(series), "registered": outcome.registered,
                      "still_failed": outcome.failed, "skipped": outcome.skipped}))
    return 0


def cmd_rollback(args) -> int:
    from mm_platform.pipeline import production_registry, rollback
    from mm_platform.warehouse import Warehouse

    cfg = load_config(args.config)
    log = rollback(cfg, production_registry(cfg, writable=True), Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys),
                   args.series, args.to_version)
    for row in log.to_dict("records"):
        print(json.dumps({k: row[k] for k in ("series_id", "model_name", "production_version", "reasons")}))
    return 0


def cmd_jvm_archive(args) -> int:
    from mm_platform.spark import jvm_archive

    return jvm_archive.main(["--force"] if args.force else [])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mm-platform", description="Many models at scale: train, promote, score, serve.")
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
    g.add_argument("--config", help="dataset config YAML")
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser("run", help="materialize the whole asset graph in-process and print a JSON summary")
    r.add_argument("--config", help="dataset config YAML (default: $MM_CONFIG or the packaged retail example)")
    r.add_argument("--run-date", type=_date, help="run date / partition (default: the newest date in the source)")
    r.add_argument("--log-level", default="WARNING", help="Dagster console log level (default WARNING)")
    r.add_argument("--ephemeral", action="store_true", help="do not record the run in $DAGSTER_HOME")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("retrain", help="retrain only the series that failed in the last training run")
    t.add_argument("--failed", action="store_true", required=True, help="retrain the failed series (required)")
    t.add_argument("--config")
    t.add_argument("--run-date", type=_date, help="the training run to repair (default: the newest)")
    t.set_defaults(func=cmd_retrain)

    j = sub.add_parser("jvm-archive", help="make the class archive local Spark sessions start from (make install runs it)")
    j.add_argument("--force", action="store_true", help="make it again even if it exists")
    j.set_defaults(func=cmd_jvm_archive)

    rb = sub.add_parser("rollback", help="point series back at an earlier production model version")
    rb.add_argument("--series", nargs="+", required=True, metavar="SERIES_ID", help="series ids such as store=3,item=17")
    rb.add_argument("--to-version", type=_positive, help="production version to restore (default: the previous one)")
    rb.add_argument("--config")
    rb.set_defaults(func=cmd_rollback)

    # Other concerns add their subcommands here: each module has add_commands(subparsers).
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return p


COMMAND_MODULES: list[str] = ["mm_platform.dashboard.cli", "mm_platform.serving.cli", "mm_platform.evaluate"]


def main(argv: list[str] | None = None) -> int:
    _quiet()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, PermissionError, FileNotFoundError) as err:
        # Bad input gets one clear line, not a traceback.
        print(f"mm-platform: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
