"""The ingestion contract (docs/ingestion.md): typed keys fixed at the first write, bad rows
quarantined with the reason (never lost), planned rows kept out of the history, dates read by
date semantics, and series that disappear from the source reported. Real SQLite/PostgreSQL
sources, a real lake folder and real Spark where the defect showed in Spark."""

from __future__ import annotations

import uuid
from datetime import date

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from mm_platform.config import ConfigError, load_config
from mm_platform.datagen import write_sales
from mm_platform.steps.ingest import ContractError, ingest, newest_actual_date
from mm_platform.steps.train import build_training_sets
from mm_platform.stores.lake import Lake
from mm_platform.stores.training_sets import training_set_store
from mm_platform_tests.conftest import write_config

END = date(2025, 12, 31)


def _setup(tmp_path, days=60, future_days=0, **over):
    cfg = load_config(write_config(tmp_path, **over))
    write_sales(cfg.source.url, cfg.source.table, stores=2, items=3, days=days, seed=3, future_days=future_days)
    return cfg, Lake(cfg.storage.lake_url)


def _exec(cfg, *statements):
    engine = sa.create_engine(cfg.source.url)
    with engine.begin() as conn:
        for s in statements:
            conn.execute(sa.text(s))
    engine.dispose()


def _source_rows(cfg) -> int:
    engine = sa.create_engine(cfg.source.url)
    with engine.connect() as conn:
        n = conn.execute(sa.text(f"SELECT COUNT(*) FROM {cfg.source.table}")).scalar()
    engine.dispose()
    return n


def _key_types(lake, table="sales"):
    return {
        str(pq.read_schema(f, filesystem=lake.fs).field(k).type) for f in lake.raw_files(table) for k in ("store", "item")
    }


NULL_STORE = "UPDATE sales SET store = NULL WHERE store = 1 AND item = 1 AND date > '2025-12-26'"


# -- case 2: one NULL key -------------------------------------------------------------------


def test_null_key_on_a_new_home_keeps_integer_keys_and_series_names(tmp_path, spark):
    cfg, lake = _setup(tmp_path)
    _exec(cfg, NULL_STORE)
    stats = ingest(cfg, lake, cfg.source.url, END)
    assert _key_types(lake) == {"int64"}  # not double: series stay store=1, not store=1.0
    assert stats["rows_quarantined"] == 5 and stats["quarantine_reasons"] == {"missing key store": 5}
    assert lake.read_manifest("sales")["contract"]["keys"] == {"store": "int64", "item": "int64"}
    build_training_sets(spark, lake, cfg, END)
    ids = set(spark.read.parquet(training_set_store(lake, cfg).uri(END)).select("series_id").toPandas()["series_id"])
    assert "store=1,item=1" in ids and not any(".0" in s for s in ids)
    assert stats["rows_read"] == len(lake.read_raw("sales")) + len(lake.read_quarantine("sales"))


def test_null_key_on_an_existing_home_leaves_the_lake_readable(tmp_path, spark):
    cfg, lake = _setup(tmp_path)
    ingest(cfg, lake, cfg.source.url, date(2025, 12, 28))
    _exec(cfg, NULL_STORE)  # inside the look-back window of the next copy
    ingest(cfg, lake, cfg.source.url, END)
    assert _key_types(lake) == {"int64"}  # the rewritten month kept the contract's key type
    stats = build_training_sets(spark, lake, cfg, END)
    assert stats["series"] == 6
    _exec(cfg, "UPDATE sales SET store = 1 WHERE store IS NULL")  # the source is corrected
    ingest(cfg, lake, cfg.source.url, END)
    raw = lake.read_raw("sales")
    assert len(raw) == _source_rows(cfg) and _key_types(lake) == {"int64"}
    assert build_training_sets(spark, lake, cfg, END)["rows"] == len(raw)


def test_a_legacy_lake_file_with_float_keys_is_repaired(tmp_path, spark):
    # A home written by the old code: one month file with double keys, no contract in the manifest.
    cfg, lake = _setup(tmp_path)
    ingest(cfg, lake, cfg.source.url, END)
    manifest = lake.read_manifest("sales")
    rel = manifest["files"]["2025-12"]
    path = lake.path("raw", "sales", rel)
    t = pq.read_table(path)
    t = t.set_column(t.schema.get_field_index("store"), "store", t["store"].cast(pa.float64()))
    pq.write_table(t, path)
    del manifest["contract"]
    manifest["watermark"] = "2026-01-28"  # the old code moved it to the last planned date
    lake._write_manifest("sales", manifest)
    ingest(cfg, lake, cfg.source.url, END)
    assert _key_types(lake) == {"int64"}
    assert lake.read_manifest("sales")["watermark"] == "2025-12-31"  # the newest actual again
    assert build_training_sets(spark, lake, cfg, END)["series"] == 6


def test_key_type_is_fixed_at_the_first_write_and_checked_later(tmp_path):
    cfg, lake = _setup(tmp_path)
    ingest(cfg, lake, cfg.source.url, date(2025, 12, 28))
    _exec(cfg, "INSERT INTO sales VALUES ('2025-12-30', 'A1', 2, 3, 1.0, 0, 0)")
    stats = ingest(cfg, lake, cfg.source.url, END)
    assert stats["quarantine_reasons"] == {"key store value 'A1' does not fit its type int64": 1}
    assert _key_types(lake) == {"int64"}
    # A declared type that disagrees with the lake's is a clear error, not a mixed lake.
    declared = load_config(write_config(tmp_path, ingest={"key_types": {"store": "string"}}))
    with pytest.raises(ContractError, match="key_types.store is string .* store as int64"):
        ingest(declared, lake, cfg.source.url, END)


def test_declared_key_type_is_used_at_the_first_write(tmp_path):
    cfg, lake = _setup(tmp_path, ingest={"key_types": {"store": "string"}})
    _exec(cfg, NULL_STORE)
    ingest(cfg, lake, cfg.source.url, END)
    raw = lake.read_raw("sales")
    assert sorted(raw["store"].unique()) == ["1", "2"]  # not "1.0"
    with pytest.raises(ConfigError, match="ingest.key_types"):
        load_config(write_config(tmp_path, ingest={"key_types": {"shop": "string"}}))


# -- case 3: a run date after the last actuals ------------------------------------------------


def test_run_date_after_the_last_actuals_keeps_planned_rows_out_of_history(tmp_path):
    cfg, lake = _setup(tmp_path, future_days=28)
    stats = ingest(cfg, lake, cfg.source.url, date(2026, 6, 30))
    raw = lake.read_raw("sales")
    assert raw["date"].max() == pd.Timestamp(END) and raw["units"].notna().all()
    assert stats["watermark"] == "2025-12-31" and lake.read_manifest("sales")["watermark"] == "2025-12-31"
    assert stats["rows_planned"] == 6 * 28
    future = lake.read_future("sales", date(2026, 6, 30))
    assert len(future) == 6 * 28  # the planned rows are the run's future regressor snapshot
    # Actuals then arrive for 2026-01-01..10: the next copy takes them.
    _exec(cfg, "UPDATE sales SET units = 5 WHERE date >= '2026-01-01' AND date <= '2026-01-10'")
    ingest(cfg, lake, cfg.source.url, date(2026, 6, 30))
    raw = lake.read_raw("sales")
    assert raw["date"].max() == pd.Timestamp("2026-01-10") and raw["units"].notna().all()
    assert (raw["date"] > pd.Timestamp(END)).sum() == 6 * 10
    assert lake.read_manifest("sales")["watermark"] == "2026-01-10"


# -- case 4: unparsable dates -----------------------------------------------------------------

BAD_DATES = ["not-a-date", "31/12/2025", "2025-02-30"]


def _insert_bad_dates(cfg):
    _exec(cfg, *(f"INSERT INTO sales VALUES ('{d}', 1, 1, 3, 1.0, 0, 0)" for d in BAD_DATES))


def test_unparsable_dates_are_quarantined_never_lost_sqlite(tmp_path):
    from mm_platform.cli import latest_source_date

    cfg, lake = _setup(tmp_path)
    _insert_bad_dates(cfg)
    assert latest_source_date(cfg) == END == newest_actual_date(cfg)  # by date semantics, no crash
    ingest(cfg, lake, cfg.source.url, date(2025, 12, 20))
    stats = ingest(cfg, lake, cfg.source.url, END)
    q = lake.read_quarantine("sales")
    assert sorted(q["date"]) == sorted(BAD_DATES)  # each once, though read by both copies
    assert set(q["reason"]) == {"unparsable or missing date"}
    assert len(lake.read_raw("sales")) + len(q) == _source_rows(cfg)
    # the non-ISO texts are read by every copy ('2025-02-30' only while in the window), quarantined once
    assert stats["rows_quarantined"] == 2 and stats["rows_newly_quarantined"] == 0


@pytest.mark.services
def test_unparsable_text_dates_are_quarantined_never_lost_postgresql(tmp_path):
    from mm_platform_tests.test_prod_support import PG_URL, require_postgres

    require_postgres()
    table = f"sales_{uuid.uuid4().hex[:8]}"
    cfg = load_config(write_config(tmp_path, source={"url": PG_URL, "table": table}))
    engine = sa.create_engine(PG_URL)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE TABLE {table} (date TEXT, store INTEGER, item INTEGER, units DOUBLE PRECISION, '
                                 'price DOUBLE PRECISION, promo INTEGER, holiday INTEGER)'))
            conn.execute(sa.text(f"INSERT INTO {table} SELECT to_char(d, 'YYYY-MM-DD'), 1, 1, 2, 1.0, 0, 0 "
                                 "FROM generate_series(DATE '2025-11-01', DATE '2025-12-31', INTERVAL '1 day') d"))
            for d in [*BAD_DATES, None]:
                conn.execute(sa.text(f"INSERT INTO {table} VALUES (:d, 1, 1, 3, 1.0, 0, 0)"), {"d": d})
        assert newest_actual_date(cfg) == END
        lake = Lake(cfg.storage.lake_url)
        ingest(cfg, lake, PG_URL, date(2025, 12, 20))
        ingest(cfg, lake, PG_URL, END)
        q = lake.read_quarantine(table)
        assert sorted(q["date"]) == sorted([*BAD_DATES, "None"])
        assert len(lake.read_raw(table)) == 61
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


# -- case 6: duplicates, absurd targets, deleted series ---------------------------------------


def test_conflicting_duplicates_and_absurd_targets_are_quarantined(tmp_path):
    cfg, lake = _setup(tmp_path, ingest={"max_abs_target": 1e9})
    _exec(
        cfg,
        "INSERT INTO sales SELECT date, store, item, units + 1, price, promo, holiday FROM sales "
        "WHERE store = 1 AND item = 2 AND date = '2025-12-30'",  # conflicts with the original row
        "INSERT INTO sales SELECT * FROM sales WHERE store = 1 AND item = 3 AND date = '2025-12-30'",  # same values
        "UPDATE sales SET units = 1e300 WHERE store = 2 AND item = 1 AND date = '2025-12-29'",
        "UPDATE sales SET units = 9e999 WHERE store = 2 AND item = 2 AND date = '2025-12-29'",  # +inf
    )
    stats = ingest(cfg, lake, cfg.source.url, END)
    assert stats["quarantine_reasons"] == {
        "conflicting duplicate rows for (store, item, date)": 2,
        "units beyond ingest.max_abs_target (1e+09)": 1,
        "non-finite units": 1,
    }
    raw = lake.read_raw("sales")
    assert len(raw[(raw.store == 1) & (raw.item == 3) & (raw.date == "2025-12-30")]) == 1
    assert raw[(raw.store == 1) & (raw.item == 2) & (raw.date == "2025-12-30")].empty
    assert raw["units"].abs().max() < 1e9


def test_a_deleted_series_is_reported_in_metadata_and_the_warehouse(tmp_path):
    import dagster as dg

    from mm_platform.defs.dataset import Dataset
    from mm_platform.stores.warehouse import Warehouse

    path = write_config(tmp_path)
    cfg = load_config(path)
    write_sales(cfg.source.url, cfg.source.table, stores=2, items=3, days=60, seed=3)
    assert cfg.ingest.on_missing_series == "keep_scoring"

    ds = Dataset.from_file(path)
    graph = ds.definitions()

    def materialize():
        result = dg.materialize(list(graph.assets), selection=[ds.key("raw_sales")], partition_key=str(END),
                                resources=graph.resources)
        return result.asset_materializations_for_node(ds.key("raw_sales").to_python_identifier())[0].metadata

    materialize()
    _exec(cfg, "DELETE FROM sales WHERE store = 2 AND item = 3", "UPDATE sales SET units = -1 WHERE date = '2025-12-31' AND item = 1")
    meta = materialize()
    assert meta["missing_series"].value == 1 and meta["rows_quarantined"].value == 2
    assert meta["quarantine_reasons"].value == {"negative units": 2}
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    missing = wh.read("SELECT * FROM v_missing_series")
    assert missing[["series_id", "store", "item", "last_date", "action"]].to_dict("records") == [
        {"series_id": "store=2,item=3", "store": 2, "item": 3, "last_date": "2025-12-31", "action": "keep_scoring"}
    ]
    _exec(cfg, "UPDATE sales SET units = 1 WHERE units = -1")
    write_sales(cfg.source.url, cfg.source.table, stores=2, items=3, days=60, seed=3)  # the series is back
    assert materialize()["missing_series"].value == 0
    assert wh.read("SELECT * FROM v_missing_series").empty


def test_stop_scoring_skips_a_series_deleted_at_the_source(tmp_path, spark):
    from mm_platform.core.vocabulary import SCORED, SCORING_SKIPPED
    from mm_platform.steps.promote import promote
    from mm_platform.steps.score import score_and_write
    from mm_platform.steps.train import train_and_register
    from mm_platform.stores.registry import production_by_series, production_registry, training_registry
    from mm_platform.stores.warehouse import Warehouse

    cfg, lake = _setup(
        tmp_path, days=150, algorithm={"name": "seasonal_naive"}, ingest={"on_missing_series": "stop_scoring"},
        promotion={"max_wape": None, "beats_seasonal_naive": False, "not_worse_than_production": False},
    )
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    ingest(cfg, lake, cfg.source.url, END)
    build_training_sets(spark, lake, cfg, END)
    train_and_register(spark, lake, cfg, END, training_registry(cfg), wh, "t")
    promote(cfg, END, training_registry(cfg), production_registry(cfg, writable=True), wh, training_set_store(lake, cfg))
    _exec(cfg, "DELETE FROM sales WHERE store = 2 AND item = 3")
    assert ingest(cfg, lake, cfg.source.url, END)["missing_series"] == ["store=2,item=3"]
    build_training_sets(spark, lake, cfg, END)
    out = score_and_write(spark, lake, cfg, END, production_registry(cfg), wh, "s")
    report = out.report.set_index("series_id")
    assert report.loc["store=2,item=3", "status"] == SCORING_SKIPPED
    assert "missing from the source" in report.loc["store=2,item=3", "reason"]
    with_model = set(production_by_series(production_registry(cfg), cfg.name)) - {"store=2,item=3"}
    assert len(with_model) >= 4 and (report.loc[sorted(with_model), "status"] == SCORED).all()
    assert "store=2,item=3" not in set(wh.read("SELECT series_id FROM predictions")["series_id"])
