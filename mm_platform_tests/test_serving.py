"""The real-time scoring service: real server processes on 127.0.0.1 reading a real production
registry (MLflow on SQLite) filled the way promotion fills it. No mocks, no timing assertions."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote, unquote, urlparse

import httpx
import numpy as np
import pandas as pd
import pytest

from benchmarks.seeding import fast_sqlite_writes, production_tags, register_production
from mm_platform.config import load_config
from mm_platform.core.vocabulary import model_name
from mm_platform.datagen import generate_sales
from mm_platform.forecasting.series import TRAINED, TrainSpec, forecast_arrays, train_series
from mm_platform.serving.cache import ENTRY_OVERHEAD
from mm_platform.serving.model import PreparedModel, deep_sizeof
from mm_platform.stores.registry import production_registry
from mm_platform_tests.conftest import write_config

TOKEN = "serving-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
REGS = ("price", "promo", "holiday")
LIB_KEYS = {"store": 50, "item": 1}  # the series whose model was fitted by the prophet library
ROOT = Path(__file__).resolve().parents[1]


def keys_of(store: int, item: int) -> dict:
    return {"store": store, "item": item}


def library_prophet_artifact() -> tuple[dict, pd.DataFrame, np.ndarray]:
    """A library-fitted Prophet (multiplicative seasonality, two regressors) as a model
    artifact, its future frame and the library's own yhat for it."""
    from mm_platform.forecasting.prophet_fast import CompactProphet, ProphetSpec, make_prophet

    rng = np.random.default_rng(5)
    n, h = 730, 21
    ds = pd.date_range("2024-01-01", periods=n + h, freq="D")
    days = np.arange(n + h, dtype=np.float64)
    price = 10.0 + np.cumsum(rng.normal(0, 0.05, n + h))
    promo = (rng.random(n + h) < 0.1).astype(np.float64)
    season = 0.15 * np.sin(2 * np.pi * days / 365.25) + 0.1 * np.sin(2 * np.pi * ds.dayofweek.to_numpy() / 7)
    y = (100 + 0.02 * days) * (1 + season - 0.03 * (price - 10) + 0.2 * promo) * (1 + rng.normal(0, 0.03, n + h))
    df = pd.DataFrame({"ds": ds, "y": y, "price": price, "promo": promo})
    train, future = df.iloc[:n], df.iloc[n:].reset_index(drop=True)
    spec = ProphetSpec(seasonality_mode="multiplicative", regressors=("price", "promo"))
    lib = make_prophet(spec, uncertainty_samples=0)
    lib.fit(train)
    expected = lib.predict(future)["yhat"].to_numpy()
    artifact = {
        "family": "prophet",
        "model": CompactProphet.from_prophet(lib).to_dict(),
        "interval_sigma": 2.0,
        "interval_coverage": 0.9,
        "freq": "D",
        "last_ds": str(train["ds"].iloc[-1].date()),
        "regressor_names": ["price", "promo"],
        "last_regressors": {"price": float(train["price"].iloc[-1]), "promo": 0.0},
    }
    return artifact, future, expected


@pytest.fixture(scope="module")
def prod(tmp_path_factory):
    """A production registry with ten trained Prophet models, one library-fitted Prophet,
    and one model whose artifact file is then corrupted on disk."""
    import json

    pytest.importorskip("prophet")
    home = tmp_path_factory.mktemp("serving")
    path = write_config(home)
    cfg = load_config(path)
    sales = generate_sales(2, 5, 400, seed=3).rename(columns={"date": "ds", "units": "y"})
    prophet_spec = TrainSpec("prophet", "D", 7, 28, 90, REGS)
    naive_spec = TrainSpec("seasonal_naive", "D", 7, 28, 90, REGS)
    models, naive = [], {}
    for (store, item), g in sales.groupby(["store", "item"]):
        keys = keys_of(int(store), int(item))
        r = train_series(g, prophet_spec)
        assert r.status == TRAINED, r.reason
        models.append((keys, r.model_json().encode(), production_tags(cfg.name, keys, "prophet", r.metrics)))
        naive[(int(store), int(item))] = train_series(g, naive_spec)
    lib_artifact, lib_future, lib_expected = library_prophet_artifact()
    models.append((LIB_KEYS, json.dumps(lib_artifact).encode(), production_tags(cfg.name, LIB_KEYS, "prophet_library")))
    registry = production_registry(cfg, writable=True)
    with fast_sqlite_writes():
        registered = {mv.series_id: mv for mv in register_production(registry, cfg.name, models)}
    # Corrupt one artifact on disk: its sha256 no longer matches the registered one.
    corrupted = registered["store=1,item=3"]
    file = Path(unquote(urlparse(corrupted.source).path))
    file.write_bytes(file.read_bytes().replace(b'"family"', b'"family" ', 1))
    return SimpleNamespace(home=home, path=path, cfg=cfg, registry=registry, registered=registered, naive=naive,
                           lib_future=lib_future, lib_expected=lib_expected)


# --- servers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, config: Path, *options: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "mm_platform.cli", "serve", "--config", str(config), "--port", str(self.port), *options]
        self.log = open(config.parent / f"server-{self.port}.log", "w")
        env = {**os.environ, "MM_API_TOKEN": TOKEN}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, headers=AUTH, timeout=120)
        self.initial_metrics: dict[str, float] = {}

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, Path(self.log.name).read_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    self.initial_metrics = self.metrics()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server did not start: {Path(self.log.name).read_text()}")

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def forecast(self, keys: dict, **body) -> httpx.Response:
        return self.client.post("/v1/forecast", json={"keys": keys, **body})

    def metrics(self) -> dict[str, float]:
        text = self.client.get("/metrics").text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out


def model_bytes(prod, sid: str) -> int:
    """What the service counts for one cached model (same estimator, same inputs)."""
    mv = prod.registry.find(prod.cfg.name, sid)
    return deep_sizeof(PreparedModel(prod.registry.load_model(mv))) + deep_sizeof(mv) + ENTRY_OVERHEAD


@pytest.fixture(scope="module")
def servers(prod):
    """Three services on the same registry: the main one (1 s version TTL), one capped at two
    models, one capped at about 1.5 models' bytes (both with a long TTL)."""
    one_model = max(model_bytes(prod, f"store=2,item={i}") for i in (1, 2, 3))
    started = {
        "main": Server(prod.path, "--version-ttl", "1"),
        "count": Server(prod.path, "--cache-models", "2", "--version-ttl", "600"),
        "bytes": Server(prod.path, "--cache-mb", f"{1.5 * one_model / 2**20:.6f}", "--version-ttl", "600"),
    }
    try:
        for s in started.values():
            s.wait_ready()
        yield SimpleNamespace(**started, one_model=one_model)
    finally:
        for s in started.values():
            s.stop()


def assert_forecast_equals_artifact(body: dict, artifact: dict, horizon: int, regressors=None) -> None:
    ds, yhat, lower, upper = forecast_arrays(artifact, horizon, regressors)
    assert body["dates"] == [str(d) for d in ds.astype("datetime64[D]")]
    np.testing.assert_array_equal(np.asarray(body["yhat"]), yhat)
    np.testing.assert_array_equal(np.asarray(body["lower"]), lower)
    np.testing.assert_array_equal(np.asarray(body["upper"]), upper)


def error_locs(response: httpx.Response) -> list[str]:
    return [".".join(str(p) for p in e["loc"]) for e in response.json()["detail"]]


# --- tests ---------------------------------------------------------------------------------------


def test_nothing_is_loaded_at_startup(servers):
    for server in (servers.main, servers.count, servers.bytes):
        assert server.initial_metrics["mm_serving_models_in_cache"] == 0
        assert server.initial_metrics["mm_serving_model_loads_total"] == 0
        assert server.initial_metrics["mm_serving_cache_bytes"] == 0


def test_prepared_model_equals_forecast_arrays(prod):
    for sid in ("store=1,item=1", "store=2,item=5"):
        artifact = prod.registry.load_model(prod.registered[sid])
        for regs in (None, {"price": np.linspace(1, 3, 10)}):
            expected = forecast_arrays(artifact, 10, regs)
            got = PreparedModel(artifact).forecast(10, regs)
            for a, b in zip(got, expected, strict=True):
                np.testing.assert_array_equal(a, b)
    naive = prod.naive[(1, 1)].model
    for a, b in zip(PreparedModel(naive).forecast(9), forecast_arrays(naive, 9), strict=True):
        np.testing.assert_array_equal(a, b)


def test_direct_registry_reads_agree_with_the_client_api(prod):
    """The registry's direct SQL reads (what serving uses) give what MLflow's client API gives."""
    from mm_platform.core.vocabulary import PRODUCTION_ALIAS
    from mm_platform.serving.source import ProductionSource

    registry = production_registry(prod.cfg)
    source = ProductionSource(registry, prod.cfg.name, prod.cfg.keys)
    names = [mv.name for mv in prod.registered.values()] + ["retail.store_404.item_404"]
    fast = registry.aliased_versions(names)
    assert registry._sql_ok, "the direct queries did not answer"
    assert fast == registry._production_versions_api(names, PRODUCTION_ALIAS)
    assert fast["retail.store_404.item_404"] is None and all(fast[mv.name] >= mv.version for mv in prod.registered.values())
    for name in names:
        assert registry.aliased_version(name) == registry._lookup_api(name, PRODUCTION_ALIAS)
    lookup = source.lookup({"store": "2", "item": "1"})
    assert lookup.name == prod.registered["store=2,item=1"].name and source.lookup({"store": "404", "item": "1"}) is None


def test_forecast_loads_on_demand_and_equals_forecast_arrays(servers, prod):
    main = servers.main
    artifact = prod.registry.load_model(prod.registered["store=1,item=1"])
    before = main.metrics()
    first = main.forecast(keys_of(1, 1), horizon=14)
    assert first.status_code == 200, first.text
    assert first.headers["x-model-cache"] == "miss"
    body = first.json()
    assert body["model"] == {"name": model_name("retail", keys_of(1, 1)), "version": 1, "algorithm": "prophet"}
    assert body["series_id"] == "store=1,item=1" and body["horizon"] == 14 and body["freq"] == "D"
    assert_forecast_equals_artifact(body, artifact, 14)
    second = main.forecast(keys_of(1, 1))  # default horizon: the config's (14)
    assert second.headers["x-model-cache"] == "hit"
    assert second.json()["yhat"] == body["yhat"]
    after = main.metrics()
    assert after["mm_serving_model_loads_total"] - before["mm_serving_model_loads_total"] == 1
    assert after["mm_serving_cache_hits_total"] - before["mm_serving_cache_hits_total"] == 1
    assert after["mm_serving_models_in_cache"] >= 1 and after["mm_serving_cache_bytes"] > 0
    # Future regressors given for some names; the others carry the last value forward.
    price = list(np.round(np.linspace(2.0, 4.0, 7), 2))
    r = main.forecast(keys_of(1, 1), horizon=7, regressors={"price": price, "promo": [1, 0, 0, 1, 0, 0, 0]})
    assert r.status_code == 200, r.text
    assert_forecast_equals_artifact(r.json(), artifact, 7, {"price": price, "promo": [1, 0, 0, 1, 0, 0, 0]})
    # A later start: the same model evaluated further out.
    later = main.forecast(keys_of(1, 1), horizon=3, start="2026-01-10").json()
    full = forecast_arrays(artifact, 12)
    assert later["dates"] == ["2026-01-10", "2026-01-11", "2026-01-12"]
    np.testing.assert_array_equal(later["yhat"], full[1][9:12])


def test_library_prophet_parity_through_the_service(servers, prod):
    """The service's yhat for a library-fitted Prophet (multiplicative, regressors) equals
    prophet.Prophet.predict's yhat."""
    future = prod.lib_future
    r = servers.main.forecast(
        LIB_KEYS, horizon=len(future), regressors={"price": future["price"].tolist(), "promo": future["promo"].tolist()}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dates"] == [str(d.date()) for d in future["ds"]]
    assert body["model"]["algorithm"] == "prophet_library"
    np.testing.assert_allclose(body["yhat"], prod.lib_expected, rtol=1e-6)


def test_model_info(servers, prod):
    main = servers.main
    mv = prod.registered["store=2,item=4"]
    r = main.client.get("/v1/models/" + quote("store=2,item=4", safe=""))
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["name"] == mv.name and info["version"] == mv.version
    assert info["keys"] == {"store": "2", "item": "4"}
    assert info["algorithm"] == "prophet"
    assert info["metrics"]["wape"] == pytest.approx(mv.metric("wape"))
    assert info["tags"]["artifact_sha256"] == mv.tags["artifact_sha256"]
    assert info["cached"] is False  # looking a model up does not load it
    assert main.client.get("/v1/models/" + quote("item=4,store=2", safe="")).json()["name"] == mv.name
    assert main.client.get("/v1/models/" + quote("store=9,item=9", safe="")).status_code == 404
    bad = main.client.get("/v1/models/" + quote("store=2", safe=""))
    assert bad.status_code == 422 and error_locs(bad) == ["path.series"]


def test_unknown_series_is_404(servers):
    r = servers.main.forecast(keys_of(77, 1))
    assert r.status_code == 404
    assert r.json()["series_id"] == "store=77,item=1" and "no production model" in r.json()["detail"]
    assert servers.main.forecast(keys_of(77, 1)).status_code == 404  # remembered, still 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"keys": {"store": [1], "item": 1}}, "body.keys.store"),
        ({"keys": {"store": 1.5, "item": 1}}, "body.keys.store"),
        ({"keys": {"store": True, "item": 1}}, "body.keys.store"),
        ({"keys": {"store": 1}}, "body.keys.item"),
        ({"keys": {"store": 1, "item": 1, "color": "red"}}, "body.keys.color"),
        ({"keys": {"store": 1, "item": 1}, "horizon": 0}, "body.horizon"),
        ({"keys": {"store": 1, "item": 1}, "horizon": 57}, "body.horizon"),  # max: 4 x the config's 14
        ({"keys": {"store": 1, "item": 1}, "horizon": "7"}, "body.horizon"),
        ({"keys": {"store": 1, "item": 1}, "horizon": 3, "regressors": {"price": [1, 2]}}, "body.regressors"),
        ({"keys": {"store": 1, "item": 1}, "regressors": {"weather": [1]}}, "body.regressors.weather"),
        ({"keys": {"store": 1, "item": 1}, "start": "2020-01-01"}, "body.start"),
        ({"keys": {"store": 1, "item": 1}, "start": "tomorrow"}, "body.start"),
        ({"keys": {"store": 1, "item": 1}, "unexpected": 1}, "body.unexpected"),
        ({"store": 1, "item": 1}, "body.keys"),
    ],
)
def test_bad_requests_are_422_naming_the_field(servers, body, field):
    r = servers.main.client.post("/v1/forecast", json=body)
    assert r.status_code == 422, r.text
    assert any(loc == field or loc.startswith(field + ".") for loc in error_locs(r)), r.text


def test_malformed_json_is_422(servers):
    r = servers.main.client.post("/v1/forecast", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and error_locs(r)[0].startswith("body")


def test_auth(servers):
    url = servers.main.url
    assert httpx.get(f"{url}/healthz").status_code == 200
    for method, path in [("POST", "/v1/forecast"), ("GET", "/metrics"), ("GET", "/openapi.json"),
                         ("GET", "/v1/models/store%3D1%2Citem%3D1"), ("POST", "/v1/refresh")]:
        assert httpx.request(method, url + path, json={}).status_code == 401
        wrong = httpx.request(method, url + path, json={}, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert servers.main.forecast(keys_of(1, 1)).status_code == 200


def test_openapi_spec_has_the_configured_keys(servers):
    spec = servers.main.client.get("/openapi.json").json()
    assert {"/v1/forecast", "/v1/forecast/batch", "/v1/models/{series}", "/v1/refresh", "/healthz", "/metrics"} <= set(spec["paths"])
    keys = spec["components"]["schemas"]["SeriesKeys"]
    assert set(keys["properties"]) == {"store", "item"} and set(keys["required"]) == {"store", "item"}


def test_one_load_for_concurrent_first_requests(servers):
    main = servers.main
    before = main.metrics()

    async def burst():
        async with httpx.AsyncClient(base_url=main.url, headers=AUTH, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/forecast", json={"keys": keys_of(1, 2)}) for _ in range(20)))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 20
    assert len({tuple(r.json()["yhat"]) for r in responses}) == 1
    assert sorted(r.headers["x-model-cache"] for r in responses).count("miss") == 1
    after = main.metrics()
    assert after["mm_serving_model_loads_total"] - before["mm_serving_model_loads_total"] == 1


def test_corrupted_artifact_is_503_for_that_series_only(servers):
    main = servers.main
    for _ in range(2):  # the failure is remembered, the process keeps serving
        r = main.forecast(keys_of(1, 3))
        assert r.status_code == 503, r.text
        assert r.json()["series_id"] == "store=1,item=3"
        assert main.forecast(keys_of(2, 5)).status_code == 200
    assert main.metrics()['mm_serving_model_load_failures_total{reason="integrity"}'] >= 1
    assert main.client.get("/healthz").json()["status"] == "ok"


def test_batch(servers, prod):
    r = servers.main.client.post("/v1/forecast/batch", json={"items": [
        {"keys": keys_of(2, 1), "horizon": 5},
        {"keys": keys_of(77, 2)},
        {"keys": {"store": "x"}},
        {"keys": keys_of(1, 3)},
        {"keys": keys_of(2, 1), "horizon": 2},
    ]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [200, 404, 422, 503, 200]
    artifact = prod.registry.load_model(prod.registered["store=2,item=1"])
    assert_forecast_equals_artifact(results[0]["forecast"], artifact, 5)
    assert results[4]["forecast"]["yhat"] == results[0]["forecast"]["yhat"][:2]
    assert "items.2.keys.item" in [".".join(map(str, e["loc"])) for e in results[2]["detail"]]
    too_many = servers.main.client.post("/v1/forecast/batch", json={"items": []})
    assert too_many.status_code == 422 and error_locs(too_many) == ["body.items"]


def test_eviction_under_the_count_cap(servers):
    s = servers.count
    before = s.metrics()
    outcomes = [s.forecast(keys_of(2, i)).headers["x-model-cache"] for i in (1, 2, 1, 3, 1, 2)]
    # 1, 2 load; 1 hits (now most recent); 3 evicts 2 (least recent); 1 hits; 2 loads again.
    assert outcomes == ["miss", "miss", "hit", "miss", "hit", "miss"]
    after = s.metrics()
    assert after["mm_serving_models_in_cache"] == 2
    assert after['mm_serving_cache_evictions_total{reason="count"}'] - before.get('mm_serving_cache_evictions_total{reason="count"}', 0) == 2
    assert after["mm_serving_model_loads_total"] - before["mm_serving_model_loads_total"] == 4


def test_eviction_under_the_byte_cap(servers):
    s = servers.bytes
    cap = s.metrics()["mm_serving_cache_max_bytes"]
    outcomes = []
    for i in (1, 2, 1, 3):
        outcomes.append(s.forecast(keys_of(2, i)).headers["x-model-cache"])
        m = s.metrics()
        assert m["mm_serving_cache_bytes"] <= cap
        assert m["mm_serving_models_in_cache"] == 1  # two models do not fit in 1.5 models' bytes
    assert outcomes == ["miss", "miss", "miss", "miss"]
    assert m['mm_serving_cache_evictions_total{reason="bytes"}'] == 3
    assert m["mm_serving_cache_bytes"] == pytest.approx(servers.one_model, rel=0.1)


def promote_new_version(prod, keys: dict, artifact: dict) -> int:
    import json

    (mv,) = register_production(
        prod.registry, prod.cfg.name, [(keys, json.dumps(artifact).encode(), production_tags(prod.cfg.name, keys, "seasonal_naive"))]
    )
    return mv.version


def test_new_version_replaces_the_cached_one_after_the_ttl(servers, prod):
    main = servers.main
    keys = keys_of(1, 4)
    assert main.forecast(keys).json()["model"]["version"] == 1
    new_artifact = prod.naive[(1, 4)].model
    version = promote_new_version(prod, keys, new_artifact)
    assert version == 2
    deadline = time.time() + 90
    while True:  # the 1 s TTL expires, a background check finds v2 and swaps it in
        body = main.forecast(keys, horizon=10).json()
        if body["model"]["version"] == version or time.time() > deadline:
            break
        time.sleep(0.2)
    assert body["model"] == {"name": model_name("retail", keys), "version": 2, "algorithm": "seasonal_naive"}
    assert_forecast_equals_artifact(body, new_artifact, 10)
    assert main.metrics()["mm_serving_model_replacements_total"] >= 1


def test_refresh_loads_a_new_version_now(servers, prod):
    s = servers.count  # version TTL 600 s: only /v1/refresh can pick the new version up
    keys = keys_of(1, 5)
    assert s.forecast(keys).json()["model"]["version"] == 1
    version = promote_new_version(prod, keys, prod.naive[(1, 5)].model)
    assert s.forecast(keys).json()["model"]["version"] == 1
    r = s.client.post("/v1/refresh", json={"series": ["store=1,item=5"]})
    assert r.status_code == 200 and r.json()["replaced"] == 1, r.text
    body = s.forecast(keys, horizon=10).json()
    assert body["model"]["version"] == version
    assert_forecast_equals_artifact(body, prod.naive[(1, 5)].model, 10)
    everything = s.client.post("/v1/refresh")
    assert everything.status_code == 200 and everything.json()["replaced"] == 0


def test_metrics_endpoint(servers):
    text = servers.main.client.get("/metrics").text
    for name in ("mm_serving_request_seconds_bucket", "mm_serving_cache_hits_total", "mm_serving_cache_misses_total",
                 "mm_serving_model_loads_total", "mm_serving_cache_evictions_total", "mm_serving_models_in_cache",
                 "mm_serving_cache_bytes", "mm_serving_model_load_seconds_bucket"):
        assert name in text
    assert re.search(r'mm_serving_request_seconds_count\{method="POST",route="/v1/forecast",status="200"\} [1-9]', text)


def test_fallback_covered_series_are_served_and_say_their_tier(servers, prod):
    """Promotion gives a series with no passing model a fitted fallback in the production
    registry (as the platform does, docs/accuracy.md); the service answers for it and says the
    tier and why, beside champions (untagged models promoted before tiers: champions)."""
    import json

    from mm_platform.core.vocabulary import TAG_TIER, TAG_TIER_REASON, TIER_CHAMPION, TIER_FALLBACK
    from mm_platform.steps.promote import promote
    from mm_platform_tests.fakes import FakeHistories, FakeRegistry, FakeWarehouse

    keys = keys_of(3, 1)
    history = generate_sales(1, 1, 200, seed=8).assign(store=3, item=1, series_id="store=3,item=1")
    history = history.rename(columns={"date": "ds", "units": "y"})
    run = pd.Timestamp(history["ds"].max()).date()
    out = promote(prod.cfg, run, FakeRegistry(), prod.registry, FakeWarehouse(), FakeHistories(history, prod.cfg.keys),
                  decided_by="test")
    assert out.coverage_counts()[TIER_FALLBACK] == 1
    mv = prod.registry.find(prod.cfg.name, "store=3,item=1")
    assert mv.tags[TAG_TIER] == TIER_FALLBACK

    r = servers.main.forecast(keys, horizon=7)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tier"] == TIER_FALLBACK and body["tier_reason"] == mv.tags[TAG_TIER_REASON]
    assert body["tier_reason"].startswith("fallback: ") and "no model passed the promotion rules" in body["tier_reason"]
    assert body["model"] == {"name": model_name("retail", keys), "version": mv.version, "algorithm": mv.tags["algorithm"]}
    assert_forecast_equals_artifact(body, json.loads(prod.registry.read_artifact(mv)), 7)
    info = servers.main.client.get("/v1/models/" + quote("store=3,item=1", safe="")).json()
    assert info["tier"] == TIER_FALLBACK and info["tier_reason"] == body["tier_reason"]
    batch = servers.main.client.post("/v1/forecast/batch", json={"items": [{"keys": keys}, {"keys": keys_of(2, 2)}]}).json()
    assert [(i["status"], i["forecast"]["tier"]) for i in batch["results"]] == [(200, TIER_FALLBACK), (200, TIER_CHAMPION)]
    champion = servers.main.forecast(keys_of(2, 1)).json()
    assert champion["tier"] == TIER_CHAMPION and champion["tier_reason"] is None
