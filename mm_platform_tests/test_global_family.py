"""The global LightGBM family in the product (issue #21): trained in Spark, its shared model
registered once per training run and referred to by every series' model, promoted, scored in
batch and served, with the shared artifact's sha256 checked everywhere. Real Spark, MLflow
(SQLite) and lake; the steps driven as the CLI drives them."""

from __future__ import annotations

import asyncio
import json
from datetime import date
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest

from mm_platform.config import load_config
from mm_platform.datagen import write_sales
from mm_platform.forecasting import global_lgbm as G
from mm_platform.forecasting.series import forecast_arrays
from mm_platform.steps.ingest import ingest
from mm_platform.steps.promote import promote
from mm_platform.steps.score import score_and_write
from mm_platform.steps.train import build_training_sets, train_and_register
from mm_platform.stores.lake import Lake
from mm_platform.stores.registry import production_by_series, production_registry, training_registry
from mm_platform.stores.training_sets import training_set_store
from mm_platform.stores.warehouse import Warehouse
from mm_platform_tests.conftest import write_config

RUN = date(2025, 12, 31)


def _shared_file(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))


@pytest.fixture(scope="module")
def global_run(tmp_path_factory, spark):
    home = tmp_path_factory.mktemp("global")
    cfg = load_config(write_config(
        home, algorithm={"name": "global_lgbm"},
        # Every trained model goes to production: this tests the plumbing, not the rules.
        promotion={"max_wape": None, "beats_seasonal_naive": False, "not_worse_than_production": False},
    ))
    write_sales(cfg.source.url, cfg.source.table, 2, 4, 400, seed=3)
    lake = Lake(cfg.storage.lake_url)
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    ingest(cfg, lake, cfg.source.url, RUN)
    build_training_sets(spark, lake, cfg, RUN)
    G.forget_shared()  # nothing left from other tests: the models must come from the registry
    trained = train_and_register(spark, lake, cfg, RUN, training_registry(cfg), wh, "t1")
    promoted = promote(cfg, RUN, training_registry(cfg), production_registry(cfg, writable=True), wh,
                       training_set_store(lake, cfg))
    return cfg, lake, wh, trained, promoted


def test_one_shared_artifact_and_every_series_refers_to_it(global_run):
    cfg, _, _, trained, _ = global_run
    assert trained.failed == 0 and trained.registered == 8
    latest = training_registry(cfg).latest_by_series(cfg.name)
    artifacts = {sid: training_registry(cfg).load_model(mv) for sid, mv in latest.items()}
    assert len(artifacts) == 8 and {a["family"] for a in artifacts.values()} == {"global_lgbm"}
    refs = {(a["model"]["shared_sha256"], a["model"]["shared_uri"]) for a in artifacts.values()}
    assert len(refs) == 1  # one shared model for the run, stored once
    sha, uri = refs.pop()
    text = _shared_file(uri).read_text()
    assert G.GlobalModel.from_json(text).n_series == 8
    import hashlib

    assert hashlib.sha256(text.encode()).hexdigest() == sha
    # Per series: its own state (keys, scale, recent history), small beside the shared model.
    sizes = [len(json.dumps(a)) for a in artifacts.values()]
    assert max(sizes) < len(text) / 5
    assert {a["model"]["keys"]["store"] for a in artifacts.values()} == {"1", "2"}


def test_promotion_copies_the_shared_artifact_into_production_once(global_run):
    cfg, _, _, _, promoted = global_run
    prod = production_by_series(production_registry(cfg), cfg.name)
    assert promoted.promoted == 8 and len(prod) == 8
    refs = {(a["model"]["shared_sha256"], a["model"]["shared_uri"])
            for a in (production_registry(cfg).load_model(mv) for mv in prod.values())}
    assert len(refs) == 1
    _, uri = refs.pop()
    # Production does not depend on the training registry's store.
    assert production_registry(cfg)._owns(uri) and not training_registry(cfg)._owns(uri)


def test_batch_scoring_and_serving_answer_with_the_shared_model(global_run, spark):
    cfg, lake, wh, _, _ = global_run
    G.forget_shared()
    out = score_and_write(spark, lake, cfg, RUN, production_registry(cfg), wh, "s1")
    assert out.scored == 8 and out.failed == 0
    preds = out.predictions.to_pandas()
    assert len(preds) == 8 * cfg.horizon and np.isfinite(preds["yhat"]).all() and (preds["yhat"] > 0).any()
    # Serving: the production source and the model cache, as the service runs them.
    from mm_platform.serving.cache import ModelCache
    from mm_platform.serving.metrics import ServingMetrics
    from mm_platform.serving.source import ProductionSource

    G.forget_shared()
    source = ProductionSource(production_registry(cfg), cfg.name, cfg.keys)

    async def serve():
        cache = ModelCache(source, ServingMetrics(), max_models=100, max_bytes=10**9, version_ttl=600)
        await cache.start()
        try:
            entries = [await cache.get({"store": "1", "item": str(i)}) for i in (1, 2)]
            return entries
        finally:
            await cache.close()

    entries = asyncio.run(serve())
    assert len(G._CACHE) == 1 and not G._PINNED  # the shared model read once for both series
    for entry, _ in entries:
        ds, yhat, lo, hi = entry.prepared.forecast(cfg.horizon)
        art = production_registry(cfg).load_model(entry.model)
        np.testing.assert_allclose(forecast_arrays(art, cfg.horizon)[1], yhat, rtol=1e-9)
        # The per-series model's bytes do not count the shared booster (it is cached once).
        assert entry.nbytes < len(_shared_file(art["model"]["shared_uri"]).read_bytes())


def test_a_shared_artifact_failing_its_sha256_fails_cleanly(global_run, spark):
    cfg, lake, wh, _, _ = global_run
    prod = production_by_series(production_registry(cfg), cfg.name)
    art = production_registry(cfg).load_model(next(iter(prod.values())))
    path = _shared_file(art["model"]["shared_uri"])
    good = path.read_bytes()
    try:
        path.write_bytes(good.replace(b'"n_series":8', b'"n_series":9', 1))
        G.forget_shared()
        from mm_platform.steps.thresholds import ErrorThresholdExceeded

        # Every series uses the bad shared model: all fail, past the error threshold, each
        # with the reason; the run date's earlier predictions are kept.
        with pytest.raises(ErrorThresholdExceeded, match="shared model"):
            score_and_write(spark, lake, cfg, RUN, production_registry(cfg), wh, "s2")
        report = wh.read("SELECT * FROM scoring_report WHERE run_date = :r", r=RUN)
        assert (report["status"] == "failed").all() and len(report) == 8
        assert report["reason"].str.contains("shared model").all() and report["reason"].str.contains("sha256").all()
        assert len(wh.read("SELECT * FROM predictions WHERE run_date = :r", r=RUN)) == 8 * cfg.horizon
        # Serving: the load fails (the service answers 503) with an integrity error.
        from mm_platform.serving.source import ProductionSource
        from mm_platform.stores.artifacts import ArtifactIntegrityError

        source = ProductionSource(production_registry(cfg), cfg.name, cfg.keys)
        with pytest.raises(ArtifactIntegrityError, match="sha256"):
            source.load(source.lookup({"store": "1", "item": "1"}))
    finally:
        path.write_bytes(good)
        G.forget_shared()


def test_auto_with_the_global_candidate_trains_in_spark(tmp_path, spark):
    cfg = load_config(write_config(
        tmp_path, algorithm={"name": "auto", "auto": {"candidates": ["seasonal_naive", "regression", "global_lgbm"],
                                                      "fallback": "regression", "folds": 2}},
    ))
    write_sales(cfg.source.url, cfg.source.table, 2, 4, 400, seed=3)
    lake = Lake(cfg.storage.lake_url)
    ingest(cfg, lake, cfg.source.url, RUN)
    build_training_sets(spark, lake, cfg, RUN)
    G.forget_shared()
    out = train_and_register(spark, lake, cfg, RUN, training_registry(cfg),
                             Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys), "a1")
    assert out.failed == 0 and out.registered == 8
    latest = training_registry(cfg).latest_by_series(cfg.name)
    for mv in latest.values():
        # The global family was backtested on the same folds as the local ones.
        assert mv.tags.get("backtest.global_lgbm.wape") not in (None, ""), mv.tags
        assert mv.tags.get("backtest.regression.wape") not in (None, "")
    arts = [training_registry(cfg).load_model(mv) for mv in latest.values()]
    for a in arts:
        if a["family"] == "global_lgbm":
            assert _shared_file(a["model"]["shared_uri"]).exists()
    assert all(a["selection"]["folds"] == 2 for a in arts)


def test_backtest_origins_never_use_a_later_model():
    models = {"2025-10-01": "a", "2025-11-15": "b", "2025-12-31": "c"}
    assert G.model_for_origin(models, "2025-12-31") == ("2025-12-31", "c")
    assert G.model_for_origin(models, "2025-12-30") == ("2025-11-15", "b")
    assert G.model_for_origin(models, "2025-10-15") == ("2025-10-01", "a")
    assert G.model_for_origin(models, "2025-09-30") is None


def test_shared_models_read_through_the_resolver_are_a_bounded_cache(monkeypatch):
    rng = np.random.default_rng(0)
    ds = pd.date_range("2024-01-01", periods=200, freq="D")
    frame = pd.DataFrame({"ds": ds, "y": 10 + rng.normal(0, 1, 200)})
    texts = {}
    for i in range(G.SHARED_CACHE_SIZE + 3):
        spec = G.FeatureSpec.default("D", rounds=3 + i)
        m = G.fit_global([({}, frame)], spec)
        texts[m.sha256] = m.to_json()
    reads = []
    G.forget_shared()
    G.set_resolver(lambda sha, uri: reads.append(sha) or texts[sha])
    try:
        for sha in texts:
            G.resolve_shared(sha)
            G.resolve_shared(sha)
        assert len(reads) == len(texts)  # once each
        assert len(G._CACHE) == G.SHARED_CACHE_SIZE
        G.set_resolver(lambda sha, uri: texts[sha].replace("3", "4", 1))
        bad = next(iter(texts))
        with pytest.raises(ValueError, match="sha256"):
            G.resolve_shared(bad)  # evicted, re-read, and the content does not match
    finally:
        G.set_resolver(None)
        G.forget_shared()


def test_grouped_training_path_gives_each_series_its_groups_shared_model(tmp_path, spark):
    """The per-series stage over any training-set DataFrame (``train_grouped``, the path of
    the Spark-I/O store): per-group models reach each series through the job."""
    from mm_platform.datagen import generate_sales
    from mm_platform.forecasting.series import regularize
    from mm_platform.spark.global_train import SharedSetup
    from mm_platform.spark.train import train_grouped, train_spec

    cfg = load_config(write_config(tmp_path, algorithm={"name": "global_lgbm", "global_lgbm": {"group_by": "store"}}))
    sales = generate_sales(2, 4, 400, seed=3).rename(columns={"date": "ds", "units": "y"})
    sales["ds"] = pd.to_datetime(sales["ds"])
    sales["series_id"] = "store=" + sales["store"].astype(str) + ",item=" + sales["item"].astype(str)
    regs = tuple(cfg.columns.regressors)
    setup = SharedSetup("store")
    for store, g in sales.groupby("store"):
        series = [({"store": str(store), "item": str(i)}, regularize(h[["ds", "y", *regs]], "D", regs))
                  for i, h in g.groupby("item")]
        spec = G.FeatureSpec.default("D", regs, ("store", "item"), rounds=20,
                                     categories={"store": ["1", "2"], "item": ["1", "2", "3", "4"]})
        last = max(h["ds"].iloc[-1] for _, h in series)
        for off in (0, cfg.holdout):
            m = G.fit_global(series, spec, (last - pd.Timedelta(days=off)).date())
            setup.texts.append(m.to_json())
            setup.models.setdefault(str(store), {})[m.origin] = m.sha256
    G.forget_shared()
    df = spark.createDataFrame(sales[["store", "item", "series_id", "ds", "y", *regs]])
    out = train_grouped(df, cfg, spec=train_spec(cfg), shared=setup)
    assert (out["status"] == "trained").all() and len(out) == 8, out[["series_id", "status", "reason"]]
    for r in out.to_dict("records"):
        payload = json.loads(r["model_json"])["model"]
        store = r["series_id"].split(",")[0].split("=")[1]
        assert payload["shared_sha256"] == setup.models[store][max(setup.models[store])]


def test_one_shared_model_per_group_of_the_configured_key(tmp_path, spark):
    cfg = load_config(write_config(tmp_path, algorithm={"name": "global_lgbm", "global_lgbm": {"group_by": "store"}}))
    write_sales(cfg.source.url, cfg.source.table, 2, 4, 400, seed=3)
    lake = Lake(cfg.storage.lake_url)
    ingest(cfg, lake, cfg.source.url, RUN)
    build_training_sets(spark, lake, cfg, RUN)
    out = train_and_register(spark, lake, cfg, RUN, training_registry(cfg),
                             Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys), "g1")
    assert out.failed == 0 and out.registered == 8
    by_store: dict[str, set] = {}
    for mv in training_registry(cfg).latest_by_series(cfg.name).values():
        m = training_registry(cfg).load_model(mv)["model"]
        by_store.setdefault(m["keys"]["store"], set()).add(m["shared_sha256"])
        shared = G.GlobalModel.from_json(_shared_file(m["shared_uri"]).read_text())
        assert shared.n_series == 4  # the store's series only
    assert all(len(v) == 1 for v in by_store.values()) and len(set.union(*by_store.values())) == 2
