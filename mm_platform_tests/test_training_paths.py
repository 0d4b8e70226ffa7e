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


def test_large_buckets_are_cut_between_series_and_training_deals_files_by_rows(tmp_path, spark, monkeypatch):
    """A bucket larger than ``BUCKET_FILE_ROWS`` is written as several files cut between
    series (a series is in one file), so training can run more tasks than there are buckets;
    the models are the same as from one file per bucket."""
    import pyarrow.parquet as pq

    import mm_platform.stores.training_sets as ts
    from mm_platform.spark import train as spark_train

    cfg = load_config(write_config(tmp_path))
    write_sales(cfg.source.url, "sales", 4, 10, 120, seed=5)
    lake = Lake(cfg.storage.lake_url)
    ingest(cfg, lake, cfg.source.url, RUN)
    build_training_sets(spark, lake, cfg, RUN)
    whole = LocalTrainingSets(lake, cfg).train(spark, RUN)

    monkeypatch.setattr(ts, "BUCKET_FILE_ROWS", 250)  # about two series a file
    stats = build_training_sets(spark, lake, cfg, RUN)
    assert stats["series"] == 40
    store = LocalTrainingSets(lake, cfg)
    files = store._bucket_files(RUN)
    buckets = {b for _, b in files}
    assert len(files) > len(buckets)  # some buckets were cut
    seen = set()
    for f, _ in files:
        t = pq.read_table(f)
        assert t.num_rows <= 250 or t["series_id"].unique().to_pylist().__len__() == 1
        ids = t["series_id"].to_pylist()
        assert ids == sorted(ids)  # sorted by series within the file
        assert not seen & set(ids)  # no series in two files
        seen |= set(ids)
    assert len(seen) == 40

    dealt = []
    real = spark_train.balanced_shares
    monkeypatch.setattr(spark_train, "balanced_shares", lambda sizes, n: dealt.append((sizes, n)) or real(sizes, n))
    import mm_platform.spark.session as session

    monkeypatch.setattr(session, "ROWS_PER_TASK", 100)  # a task per file, as a large set on a large cluster
    previous = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", str(len(files)))
    try:
        cut = store.train(spark, RUN)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)
    sizes, tasks = dealt[-1]
    assert sizes == [pq.read_metadata(f).num_rows for f, _ in files]
    assert tasks == len(files) > len(buckets)
    pd.testing.assert_frame_equal(cut.drop(columns="fit_seconds"), whole.drop(columns="fit_seconds"))
    assert store.history(RUN, ["store=1,item=1"])["ds"].is_monotonic_increasing


def test_balanced_shares_deal_the_largest_first_to_the_least_loaded_task():
    from mm_platform.spark.session import balanced_shares

    sizes = [10, 90, 40, 40, 30, 30, 20, 10]
    shares = balanced_shares(sizes, 3)
    assert sorted(i for s in shares for i in s) == list(range(len(sizes)))
    totals = [sum(sizes[i] for i in s) for s in shares]
    assert totals == sorted(totals, reverse=True)  # heaviest task first
    assert max(totals) == 90  # the best possible: the largest unit alone
    # contiguous runs (what spark.range deals) would give 140 / 100 / 30 here
    assert balanced_shares([5, 5], 4) == [[0], [1]]  # never an empty task
    assert balanced_shares([3, 1, 1, 1], 1) == [[0, 1, 2, 3]]


def test_series_come_from_the_builds_index_and_sets_without_it_are_scanned(tmp_path, spark):
    """The build writes each bucket's series (keys and id) beside its files; ``series()``
    reads those, and a bucket without one (a set built before it) is scanned as before, with
    the same answer. The index is not data: training and ``dataframe`` do not read it."""
    cfg = load_config(write_config(tmp_path))
    write_sales(cfg.source.url, "sales", 3, 4, 60, seed=9)
    lake = Lake(cfg.storage.lake_url)
    ingest(cfg, lake, cfg.source.url, RUN)
    build_training_sets(spark, lake, cfg, RUN)
    store = LocalTrainingSets(lake, cfg)
    indexes = sorted(p for p in (tmp_path / "lake").rglob("_series_index"))
    assert len(indexes) == len({b for _, b in store._bucket_files(RUN)}) > 1
    assert all(f.endswith("part-00000.parquet") for f, _ in store._bucket_files(RUN))
    indexed = store.series(RUN)
    assert indexed.columns.tolist() == ["store", "item", "series_id"] and len(indexed) == 12

    indexes[0].unlink()  # one bucket as an older build left it
    partly = store.series(RUN)
    for p in indexes[1:]:
        p.unlink()
    scanned = store.series(RUN)
    rows = store.dataframe(spark, RUN).select("store", "item", "series_id").distinct().toPandas()
    for got in (partly, scanned, rows):
        pd.testing.assert_frame_equal(got.sort_values("series_id").reset_index(drop=True),
                                      indexed.sort_values("series_id").reset_index(drop=True), check_dtype=False)


def test_file_bounds_cut_only_between_series():
    import numpy as np

    from mm_platform.stores.training_sets import _file_bounds, _series_starts

    series = np.repeat([0, 1, 2, 3, 4], [3, 3, 7, 1, 2])  # 16 rows; series 2 is longer than a file
    starts = _series_starts(series)
    assert starts.tolist() == [0, 3, 6, 13, 14]
    bounds = _file_bounds(starts, 16, 5)
    assert bounds[0] == (0, 3) and bounds[-1][1] == 16
    assert all(a == b for (_, a), (b, _) in zip(bounds, bounds[1:], strict=False))  # contiguous
    for start, end in bounds:
        assert start == 0 or series[start] != series[start - 1]  # never inside a series
        assert end - start <= 5 or len(set(series[start:end])) == 1
    assert (6, 13) in bounds  # the long series alone
    assert _file_bounds(starts, 16, 16) == [(0, 16)]
    assert _file_bounds(_series_starts(np.array([], dtype=int)), 0, 5) == [(0, 0)]
