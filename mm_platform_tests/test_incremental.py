"""Daily incremental retraining: unchanged series keep their model, changed ones are refitted."""

from datetime import date

import sqlalchemy as sa

from mm_platform.config import load_config
from mm_platform.datagen import write_sales
from mm_platform.ingestion import ingest
from mm_platform.lake import Lake
from mm_platform.pipeline import train_and_register, training_registry
from mm_platform.spark_jobs import build_training_sets
from mm_platform.warehouse import Warehouse
from mm_platform_tests.conftest import write_config

RUN = date(2025, 12, 31)


def test_only_changed_series_are_refitted_and_registered(tmp_path, spark):
    cfg = load_config(write_config(tmp_path))
    write_sales(cfg.source.url, "sales", 2, 3, 200, seed=11)
    lake = Lake(cfg.storage.lake_url)
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)

    def day():
        ingest(cfg, lake, cfg.source.url, RUN)
        build_training_sets(spark, lake, cfg, RUN)
        return train_and_register(spark, lake, cfg, RUN, training_registry(cfg), wh, "t")

    first = day()
    assert first.registered == 6
    before = training_registry(cfg).latest_by_series(cfg.name)
    engine = sa.create_engine(cfg.source.url)
    with engine.begin() as conn:  # a late correction of one series
        conn.execute(sa.text("UPDATE sales SET units = units + 3 WHERE store = 2 AND item = 3 AND date = '2025-12-30'"))
    second = day()
    assert second.registered == 1 and second.unchanged == 5
    rep = second.report.set_index("series_id")
    assert rep.loc["store=2,item=3", "registration"] == "registered"
    kept = rep[rep["registration"] == "unchanged"]
    assert (kept["fit_seconds"] == 0).all()  # not refitted at all
    assert (kept["status"] == "trained").all() and kept["wape"].notna().all()  # registered metrics carried over
    after = training_registry(cfg).latest_by_series(cfg.name)
    assert after["store=2,item=3"].version == before["store=2,item=3"].version + 1
    assert all(after[s].version == before[s].version for s in before if s != "store=2,item=3")
