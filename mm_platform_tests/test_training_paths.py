"""Training a local lake's model set reads the bucketed training set in Spark's workers
(``train_local_buckets``, no shuffle); it must give exactly what the general path
(``groupBy(keys).applyInPandas`` over ``read_training_set``) gives."""

from datetime import date

import pandas as pd
import sqlalchemy as sa

from mm_platform.config import load_config
from mm_platform.datagen import write_sales
from mm_platform.spark.train import train_grouped
from mm_platform.steps.ingest import ingest
from mm_platform.steps.train import build_training_sets
from mm_platform.stores.lake import Lake
from mm_platform.stores.training_sets import LocalTrainingSets, training_set_store
from mm_platform_tests.conftest import write_config

RUN = date(2025, 12, 31)


def _general(spark, lake, cfg, only=None, **kw) -> pd.DataFrame:
    ts = training_set_store(lake, cfg).dataframe(spark, RUN)
    if only is not None:
        ts = ts.where(ts["series_id"].isin(only))
    return train_grouped(ts, cfg, **kw).sort_values("series_id").reset_index(drop=True)


def test_local_bucket_training_equals_the_groupby_path(tmp_path, spark):
    cfg = load_config(write_config(tmp_path))
    write_sales(cfg.source.url, "sales", 2, 4, 220, seed=21)
    with sa.create_engine(cfg.source.url).begin() as conn:  # one series too short to train
        conn.execute(sa.text("DELETE FROM sales WHERE store = 2 AND item = 4 AND date < '2025-11-01'"))
    lake = Lake(cfg.storage.lake_url)
    ingest(cfg, lake, cfg.source.url, RUN)
    build_training_sets(spark, lake, cfg, RUN)

    fast = LocalTrainingSets(lake, cfg).train(spark, RUN)
    slow = _general(spark, lake, cfg)
    assert len(fast) == 8 and set(fast["status"]) == {"trained", "skipped"}
    pd.testing.assert_frame_equal(fast.drop(columns="fit_seconds"), slow.drop(columns="fit_seconds"))

    # with fingerprints of registered models (unchanged series are not refitted) and a subset
    known = {"store=1,item=1": fast.loc[0, "fingerprint"], "store=1,item=2": "an older fingerprint"}
    only = ["store=1,item=1", "store=1,item=2", "store=2,item=3"]
    fast = LocalTrainingSets(lake, cfg).train(spark, RUN, known=known, only_series=only)
    slow = _general(spark, lake, cfg, only=only, known=known)
    assert fast["series_id"].tolist() == only
    assert fast["status"].tolist() == ["unchanged", "trained", "trained"]
    pd.testing.assert_frame_equal(fast.drop(columns="fit_seconds"), slow.drop(columns="fit_seconds"))
