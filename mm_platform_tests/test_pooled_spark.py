"""``algorithm: auto`` in Spark training with the pooled choice (spark/pooled.py): stage 1
reduces backtest sums in the driver (no data rows), stage 2 trains every series with it."""

from datetime import date

import sqlalchemy as sa

from mm_platform.config import load_config
from mm_platform.datagen import write_sales
from mm_platform.forecasting.series import add_summaries, combo_name, pooled_choice
from mm_platform.spark.pooled import sample_series, series_summary
from mm_platform.spark.train import train_spec
from mm_platform.steps.ingest import ingest
from mm_platform.steps.train import build_training_sets, train_and_register
from mm_platform.stores.lake import Lake
from mm_platform.stores.registry import training_registry
from mm_platform.stores.training_sets import training_set_store
from mm_platform.stores.warehouse import Warehouse
from mm_platform_tests import driver_guard
from mm_platform_tests.conftest import write_config

RUN = date(2025, 12, 31)


def test_sample_is_deterministic_and_bounded():
    ids = [f"store={s},item={i}" for s in range(10) for i in range(10)]
    a = sample_series(ids, 7)
    assert len(a) == 7 and a == sample_series(list(reversed(ids)), 7) and set(a) <= set(ids)
    assert set(a) <= set(sample_series(ids, 20))  # a bigger sample keeps the smaller one
    assert sample_series(ids[:3], 7) == sorted(ids[:3])


def test_auto_trains_every_series_with_the_pooled_choice(tmp_path, spark, monkeypatch):
    cfg = load_config(write_config(
        tmp_path, algorithm={"name": "auto", "auto": {"folds": 2, "candidates": ["seasonal_naive", "croston", "regression"]}},
    ))
    write_sales(cfg.source.url, "sales", 2, 3, 200, seed=11)
    lake = Lake(cfg.storage.lake_url)
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)

    def day():
        ingest(cfg, lake, cfg.source.url, RUN)
        build_training_sets(spark, lake, cfg, RUN)
        with monkeypatch.context() as m:  # training may not hold data rows in the driver
            driver_guard.install(cfg.columns.target, m.setattr)
            return train_and_register(spark, lake, cfg, RUN, training_registry(cfg), wh, "t")

    def expected_choice():
        # The same reduction over every series, from the stored set read here with pyarrow.
        data = training_set_store(lake, cfg)._dataset(RUN).to_table().to_pandas()
        spec, total = train_spec(cfg), {}
        for _, pdf in data.sort_values(["series_id", "ds"]).groupby("series_id"):
            s = series_summary(pdf.reset_index(drop=True), spec)
            if s:
                add_summaries(total, s)
        return combo_name(pooled_choice(total))

    first = day()
    assert first.registered == 6
    choice = expected_choice()
    latest = training_registry(cfg).latest_by_series(cfg.name)
    for mv in latest.values():  # prior_margin 1.0: every series keeps the dataset choice
        assert mv.tags["dataset_choice"] == choice
        assert mv.tags["champion"] == choice
        assert mv.tags["selection_reason"].startswith("dataset choice")

    engine = sa.create_engine(cfg.source.url)
    with engine.begin() as conn:  # a late correction of one series: only it is refitted
        conn.execute(sa.text("UPDATE sales SET units = units + 30 WHERE store = 2 AND item = 3 AND date >= '2025-12-01'"))
    second = day()
    assert second.registered == 1 and second.unchanged == 5
    after = training_registry(cfg).latest_by_series(cfg.name)
    refit = after["store=2,item=3"]
    assert refit.version == latest["store=2,item=3"].version + 1
    assert refit.tags["dataset_choice"] == expected_choice()  # the current run's choice


def test_pooled_stage_can_be_switched_off(tmp_path, spark):
    """``algorithm.auto.pooled_sample: 0``: each series chooses alone, as before (no dataset_choice)."""
    cfg = load_config(write_config(
        tmp_path, algorithm={"name": "auto", "auto": {"folds": 2, "candidates": ["seasonal_naive", "croston"],
                                                      "pooled_sample": 0}},
    ))
    write_sales(cfg.source.url, "sales", 1, 2, 200, seed=3)
    lake = Lake(cfg.storage.lake_url)
    ingest(cfg, lake, cfg.source.url, RUN)
    build_training_sets(spark, lake, cfg, RUN)
    out = train_and_register(spark, lake, cfg, RUN, training_registry(cfg),
                             Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys), "t")
    assert out.registered >= 1
    for mv in training_registry(cfg).latest_by_series(cfg.name).values():
        assert "dataset_choice" not in mv.tags
        assert mv.tags["selection_reason"] and not mv.tags["selection_reason"].startswith("dataset choice")


def test_both_stage_one_paths_agree_and_the_sample_bounds_them(tmp_path, spark):
    """Whole buckets per task (fsspec lakes) and the grouped DataFrame path (``lake_io:
    spark``) reduce the same sums; a sample of n series backtests n of them."""
    from mm_platform.spark.pooled import pooled_prior

    auto = {"name": "auto", "auto": {"folds": 2, "candidates": ["seasonal_naive", "croston", "regression"]}}
    ref_home, home = tmp_path / "fsspec", tmp_path / "spark"
    ref_home.mkdir()
    home.mkdir()
    ref_cfg = load_config(write_config(ref_home, algorithm=auto))
    write_sales(ref_cfg.source.url, "sales", 2, 3, 200, seed=5)
    cfg = load_config(write_config(home, algorithm=auto, source={"url": ref_cfg.source.url, "table": "sales"},
                                   storage={"lake_io": "spark"}))
    out = {}
    for name, c in (("buckets", ref_cfg), ("grouped", cfg)):
        lake = Lake(c.storage.lake_url)
        ingest(c, lake, c.source.url, RUN)
        store = training_set_store(lake, c)
        store.build(spark, RUN)
        out[name] = pooled_prior(spark, store, c, RUN, train_spec(c), n=200)
        small = pooled_prior(spark, store, c, RUN, train_spec(c), n=2)[1]
        assert small["series_sampled"] == 2 and small["series_backtested"] <= 2
    (a, sa_), (b, sb) = out["buckets"], out["grouped"]
    assert a and a == b
    assert sa_["series_backtested"] == sb["series_backtested"] > 0
    assert sa_["backtest_wape"] == sb["backtest_wape"]
