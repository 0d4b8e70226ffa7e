"""The dashboard: server-side queries on a 10,000-series warehouse, the pages over HTTP, the
matplotlib plots, and a real headless Chromium run against a warehouse filled by a real
pipeline run (skipped when Chromium, chromedriver or selenium are missing)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mm_platform.config import load_config
from mm_platform.dashboard.queries import MAX_PAGE_SIZE, DashboardQueries
from mm_platform.defs.plots import accuracy_histogram_png, png_markdown, sample_forecasts_png
from mm_platform.stores.lake import Lake
from mm_platform.stores.warehouse import Warehouse
from mm_platform_tests.conftest import write_config

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

ARTIFACTS = Path(__file__).parent / "artifacts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STORES, ITEMS = 10, 1000  # 10,000 series
RUN, PREV_RUN = date(2025, 12, 31), date(2025, 12, 30)


# -- a synthetic warehouse with 10,000 series ------------------------------------------------------


def _sid(store: int, item: int) -> str:
    return f"store={store},item={item}"


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """Warehouse tables for 10,000 series written through the Warehouse API (as the pipeline
    writes them), an older run that the views must ignore, and lake history for two series."""
    home = tmp_path_factory.mktemp("dash_big")
    cfg = load_config(write_config(home, horizon=7))
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    rng = np.random.default_rng(3)
    n = STORES * ITEMS
    store = np.repeat(np.arange(1, STORES + 1), ITEMS)
    item = np.tile(np.arange(1, ITEMS + 1), STORES)
    naive = rng.gamma(4, 0.15, n)
    ours = naive * rng.uniform(0.5, 1.15, n)
    ours[:5] = 3.0 + np.arange(5)  # above the histogram cap
    status = np.where(np.arange(n) % 50 == 49, "skipped", "trained").astype(object)
    status[7] = "failed"
    trained = status == "trained"
    report = pd.DataFrame({
        "store": store, "item": item, "series_id": [_sid(s, i) for s, i in zip(store, item, strict=True)],
        "status": status, "reason": np.where(trained, "", "too short"), "n_obs": 400, "last_date": str(RUN),
        "fingerprint": "f" * 32, "wape": np.where(trained, ours, np.nan), "mape": np.where(trained, ours * 1.3, np.nan),
        "rmse": np.where(trained, ours * 5, np.nan), "naive_wape": np.where(trained, naive, np.nan),
        "naive_mape": np.where(trained, naive * 1.3, np.nan), "naive_rmse": np.where(trained, naive * 5, np.nan),
        "fit_seconds": 0.01, "algorithm": "prophet", "model_name": [f"retail.store_{s}.item_{i}" for s, i in zip(store, item, strict=True)],
        "model_version": np.where(trained, 2, None), "registration": np.where(trained, "registered", None), "training_run_id": "r1",
    })
    promoted = trained & (ours < naive) & (ours <= 0.6)
    wh.replace_run("training_report", PREV_RUN, report.head(100).assign(wape=9.0))
    wh.replace_run("training_report", RUN, report)
    prom = report[promoted]
    days = pd.date_range(pd.Timestamp(RUN) + pd.Timedelta(days=1), periods=cfg.horizon).date
    preds = prom[["store", "item", "series_id", "model_name"]].loc[prom.index.repeat(cfg.horizon)].reset_index(drop=True)
    preds["ds"] = np.tile(days, len(prom))
    preds["yhat"] = 10.0
    preds["yhat_lower"] = 7.0
    preds["yhat_upper"] = 13.0
    preds["model_version"] = 1
    preds["scoring_run_id"] = "s1"
    wh.replace_run("predictions", RUN, preds)
    scoring = report[["store", "item", "series_id", "model_name"]].assign(
        status=np.where(promoted, "scored", "skipped"), reason=np.where(promoted, "", "no production model"),
        tier=np.where(promoted, "champion", None))
    scoring.loc[scoring.index[promoted][:3], ["status", "reason"]] = ["failed", "forecast has non-finite values"]
    wh.replace_run("scoring_report", RUN, scoring)
    wh.replace_run("promotion_coverage", RUN, pd.DataFrame({
        "series_id": report["series_id"], "tier": np.where(promoted, "champion", "not_forecast"),
        "family": "prophet", "reason": np.where(promoted, "passed the promotion rules", "no model passed the promotion rules"),
        "model_name": report["model_name"], "production_version": np.where(promoted, 1, None)}))
    decided = report[trained]
    log = pd.DataFrame({
        "series_id": decided["series_id"], "model_name": decided["model_name"], "training_version": 2,
        "production_version": np.where(promoted[trained], 1, None),
        "action": np.where(promoted[trained], "promoted", "rejected"),
        "reasons": np.where(promoted[trained], "", "wape above max_wape 0.6"),
        "wape": decided["wape"], "mape": decided["mape"], "naive_wape": decided["naive_wape"], "production_wape": None,
        "decided_by": "test", "decided_at": datetime(2026, 1, 1, 3, 0),
    })
    rollback = log.head(40).assign(action="rollback", decided_at=datetime(2025, 12, 31, 3))
    wh.append("promotion_log", PREV_RUN, rollback)
    wh.append("promotion_log", RUN, log)
    wh.refresh_metrics(PREV_RUN)
    wh.refresh_metrics(RUN)
    wh.dispose()
    lake = Lake(cfg.storage.lake_url)
    dates = pd.date_range(end=pd.Timestamp(RUN), periods=400)
    raw = pd.concat([pd.DataFrame({"store": 1, "item": i, "date": dates, "units": float(i) + np.arange(400) % 7,
                                   "price": 1.0, "promo": 0.0, "holiday": 0.0}) for i in (1, 2)], ignore_index=True)
    lake.upsert_raw(cfg.source.table, raw, cfg.keys, "date")
    q = DashboardQueries(cfg)
    yield cfg, q, {"report": report, "promoted": promoted, "trained": trained, "log": pd.concat([rollback, log])}
    q.dispose()


def test_series_search_pages_in_sql(big):
    cfg, q, _ = big
    first = q.search_series("", page=1, size=25)
    assert first.total == STORES * ITEMS and len(first.rows) == 25 and first.pages == 400
    assert [r["series_id"] for r in first.rows[:3]] == [_sid(1, 1), _sid(1, 2), _sid(1, 3)]  # keys, numerically
    last = q.search_series("", page=400, size=25)
    assert last.rows[-1]["series_id"] == _sid(STORES, ITEMS) and last.first == 9976 and last.last == 10000
    assert q.search_series("", page=9999).page == 400  # clamped to the last page
    assert len(q.search_series("", size=10_000).rows) == MAX_PAGE_SIZE
    ids = {r["series_id"] for r in q.search_series("", page=2).rows}
    assert not ids & {r["series_id"] for r in first.rows}


def test_series_search_matches_keys_exactly_and_text_loosely(big):
    _, q, _ = big
    page = q.search_series("item=7", size=50)
    assert page.total == STORES and {r["item"] for r in page.rows} == {7}  # not 70 or 700
    assert q.search_series("ITEM=7 store=3").total == 1
    assert [r["series_id"] for r in q.search_series(_sid(4, 321)).rows] == [_sid(4, 321)]  # a pasted series id
    assert q.search_series("item=99").total == STORES
    assert q.search_series("item=99 ").total == q.search_series("item=99,").total == STORES
    assert q.search_series("m=99").total == STORES * 11  # not a key: substring (items 99 and 990-999)
    assert q.search_series("store=10,item=1").total == 1
    assert q.search_series("%").total == 0 and q.search_series("_").total == 0  # LIKE wildcards are escaped
    assert q.search_series("item=1000").total == STORES
    assert q.search_series("tem=100").total == STORES * 2  # 100 and 1000, as substrings


def test_series_search_sorts_and_flags_production(big):
    _, q, data = big
    worst = q.search_series("", sort="wape_desc", size=5).rows
    assert [r["wape"] for r in worst] == sorted([r["wape"] for r in worst], reverse=True)
    assert worst[0]["wape"] == pytest.approx(7.0)
    best = q.search_series("", sort="wape_asc", size=5).rows
    assert best[0]["wape"] == pytest.approx(np.nanmin(data["report"]["wape"]))
    rows = q.search_series("store=1", size=200).rows
    flags = {r["series_id"]: r["production_version"] is not None for r in rows}
    expected = dict(zip(data["report"]["series_id"], data["promoted"], strict=True))
    assert flags == {sid: bool(expected[sid]) for sid in flags}


def test_overview_aggregates_in_sql(big):
    _, q, data = big
    report, trained = data["report"], data["trained"]
    ov = q.overview()
    assert ov["series"] == STORES * ITEMS and ov["status"]["trained"] == trained.sum() and ov["status"]["failed"] == 1
    assert ov["training_run_date"] == str(RUN) and ov["in_production"] == data["promoted"].sum()
    assert ov["decisions"] == {"promoted": int(data["promoted"].sum()), "rejected": int(trained.sum() - data["promoted"].sum())}
    assert ov["latest_run"]["run_date"] == str(RUN)
    assert ov["scoring"] == {"scored": int(data["promoted"].sum()) - 3, "failed": 3,
                             "skipped": int((~data["promoted"]).sum())}
    cov = ov["coverage"]  # the newest scoring run: forecast by tier, and not forecast with why
    assert cov["run_date"] == str(RUN)
    assert cov["counts"] == {"champion": int(data["promoted"].sum()) - 3, "fallback": 0,
                             "not_forecast": int((~data["promoted"]).sum()) + 3}
    assert len(cov["not_forecast"]) == 20 and cov["not_forecast"][0]["reason"]
    assert [r["series_id"] for r in cov["not_forecast"]] == sorted(r["series_id"] for r in cov["not_forecast"])
    hist = q.accuracy_distribution("wape")
    assert sum(hist["ours"]) == trained.sum() == sum(hist["naive"]) and hist["nbins"] == 30
    assert hist["capped"] and hist["hi"] == 2.0
    assert hist["over_ours"] == (report.loc[trained, "wape"] > 2).sum() >= 5
    assert hist["over_naive"] == (report.loc[trained, "naive_wape"] > 2).sum()
    cmp = q.naive_comparison("wape")
    ours, naive = report.loc[trained, "wape"], report.loc[trained, "naive_wape"]
    assert cmp["better"] == (ours < naive).sum() and cmp["better"] + cmp["ties"] + cmp["worse"] == trained.sum()
    assert sum(c["n"] for c in cmp["cells"]) == trained.sum() and len(cmp["cells"]) <= 2 * 40 * 40
    by_item = q.accuracy_by_key("item")
    assert by_item["n_values"] == report.loc[trained, "item"].nunique() > 900 and by_item["worst_only"] and len(by_item["rows"]) == 30
    means = [r["ours"] for r in by_item["rows"]]
    assert means == sorted(means, reverse=True)
    expected = report[trained].groupby("item")["wape"].mean().sort_values(ascending=False)
    assert means[0] == pytest.approx(expected.iloc[0])
    by_store = q.accuracy_by_key("store")
    assert [r["value"] for r in by_store["rows"]] == list(range(1, STORES + 1)) and not by_store["worst_only"]
    assert sum(r["series"] for r in by_store["rows"]) == trained.sum()
    assert [r["run_date"] for r in q.runs()] == [str(PREV_RUN), str(RUN)]


def test_promotion_log_filters_and_pages(big):
    _, q, data = big
    facets = q.promotion_facets()
    n_promoted = int(data["promoted"].sum())
    assert facets["actions"]["promoted"] == n_promoted and facets["actions"]["rollback"] == 40
    assert facets["run_dates"] == [str(RUN), str(PREV_RUN)]
    page = q.promotion_page(action="promoted", size=20)
    assert page.total == n_promoted and len(page.rows) == 20 and {r["action"] for r in page.rows} == {"promoted"}
    assert q.promotion_page(action="promoted", page=2, size=20).rows[0]["series_id"] != page.rows[0]["series_id"]
    rejected = q.promotion_page(action="rejected", q="store=2 item=5")
    assert rejected.total <= 1 and all(r["series_id"] == _sid(2, 5) for r in rejected.rows)
    assert q.promotion_page(run_date=str(PREV_RUN)).total == 40
    assert q.promotion_page(q="item=11").total == data["log"]["series_id"].str.endswith(",item=11").sum() == 10 + 1
    newest = q.promotion_page(size=1).rows[0]
    assert str(newest["run_date"]) == str(RUN)  # newest decisions first
    by_run = q.promotions_by_run()
    assert {(r["run_date"], r["action"]) for r in by_run} == {(str(PREV_RUN), "rollback"), (str(RUN), "promoted"), (str(RUN), "rejected")}


def test_series_detail_and_history_from_the_lake(big):
    cfg, q, data = big
    sid = _sid(1, 1)
    detail = q.series_detail(sid)
    assert detail["keys"] == {"store": 1, "item": 1} and detail["accuracy"]["run_date"] == str(RUN)
    assert len(detail["forecast"]) == (cfg.horizon if data["promoted"][0] else 0)
    assert [p["action"] for p in detail["promotions"]][-1] == "rollback"  # newest decision first
    assert len(detail["promotions"]) == 2
    hist = q.series_history(detail["keys"], until=str(RUN))
    assert len(hist) == 400 and list(hist.columns) == ["ds", "y"] and hist["ds"].is_monotonic_increasing
    assert (hist["y"] >= 1).all()
    short = q.series_history({"store": 1, "item": 2}, until=str(RUN), days=30)
    assert len(short) == 31 and (short["y"] >= 2).all()
    assert q.series_history({"store": 9, "item": 9}, until=str(RUN)).empty
    assert q.series_detail("store=99,item=1") is None


def test_pages_stay_small_and_fast_with_10000_series(big):
    from fastapi.testclient import TestClient

    from mm_platform.dashboard.app import create_app

    cfg, _, _ = big
    with TestClient(create_app(cfg)) as client:
        for url in ["/", "/series", "/series?q=item%3D7", f"/series?sid={_sid(1, 1)}", "/series/list?q=store%3D3&page=4",
                    "/promotions", "/promotions?action=rejected&q=store%3D2&page=3", "/api/series?q=item=7",
                    "/api/promotions?action=promoted", "/api/overview", f"/api/series/detail?sid={_sid(1, 1)}", "/healthz",
                    "/accuracy", "/api/accuracy"]:
            started = time.perf_counter()
            resp = client.get(url)
            elapsed = time.perf_counter() - started
            assert resp.status_code == 200, (url, resp.text[:500])
            # Bounded whatever the series count: pages carry aggregates and one page of rows.
            assert len(resp.content) < 200_000, (url, len(resp.content))
            assert elapsed < 10, (url, elapsed)  # generous: shared CI machines are slow
            print(f"{url}: {len(resp.content):,} bytes in {elapsed:.3f} s")
        html = client.get("/").text
        assert "cdn." not in html and 'src="https://' not in html and '/static/plotly.min.js' in html
        assert 'id="kpi-coverage"' in html and "<h2>Not forecast" in html and "no model passed the promotion rules" in html
        assert client.get("/api/series?size=100000").json()["size"] == MAX_PAGE_SIZE
        js = client.get("/static/plotly.min.js")
        assert js.status_code == 200 and len(js.content) > 1_000_000 and b"plotly" in js.content[:2000].lower()
        assert client.get("/static/app.js").status_code == 200
        assert client.get("/series?sid=store%3D99%2Citem%3D1").status_code == 404
        assert client.get("/api/series/detail?sid=nope").status_code == 404


def test_pages_explain_an_empty_warehouse(tmp_path):
    from fastapi.testclient import TestClient

    from mm_platform.dashboard.app import create_app

    cfg = load_config(write_config(tmp_path))
    with TestClient(create_app(cfg)) as client:
        assert "no BI views" in client.get("/").text
        assert "No realized accuracy yet" in client.get("/accuracy").text
        assert client.get("/api/accuracy").json() == {"tier": None, "q": "", "run_dates": [], "drift": []}
        for url in ["/series", "/series?q=x", "/promotions", "/api/series", "/api/overview", "/accuracy?tier=fallback"]:
            assert client.get(url).status_code == 200, url


# -- realized accuracy over time ---------------------------------------------------------------------

ACC_FIRST = date(2025, 12, 1)
ACC_DAYS = 14


@pytest.fixture(scope="module")
def realized(tmp_path_factory):
    """forecast_accuracy and drift_log rows for four series over 14 forecast run dates, computed by
    the platform's own realized-accuracy function from known forecasts and actuals and written
    through the Warehouse API; item 4 is fallback-covered, item 2 degrades and is flagged."""
    from mm_platform.steps.accuracy import realized_accuracy

    home = tmp_path_factory.mktemp("dash_realized")
    cfg = load_config(write_config(home, horizon=7))
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    rng = np.random.default_rng(11)
    days = pd.date_range(pd.Timestamp(ACC_FIRST) - pd.Timedelta(days=7), pd.Timestamp(ACC_FIRST) + pd.Timedelta(days=ACC_DAYS + 7))
    actual = pd.concat([pd.DataFrame({"series_id": _sid(1, i), "ds": days, "y": 10.0 * i + rng.poisson(3, len(days))})
                        for i in (1, 2, 3, 4)], ignore_index=True)
    forecasts = []
    for k in range(ACC_DAYS):
        run = pd.Timestamp(ACC_FIRST) + pd.Timedelta(days=k)
        for i in (1, 2, 3, 4):
            ds = pd.date_range(run + pd.Timedelta(days=1), periods=7)
            drift = 1 + (0.05 * k if i == 2 else 0.0)
            forecasts.append(pd.DataFrame({"run_date": run, "series_id": _sid(1, i), "ds": ds, "yhat": 10.0 * i * drift + 3,
                                           "yhat_lower": 10.0 * i, "yhat_upper": 10.0 * i + 6,
                                           "model_name": f"retail.store_1.item_{i}", "model_version": 1,
                                           "tier": "fallback" if i == 4 else "champion"}))
    forecasts = pd.concat(forecasts, ignore_index=True)
    # As of the last run date: later forecast dates have no actual yet.
    rows = realized_accuracy(forecasts, actual[actual["ds"] <= forecasts["run_date"].max()], 7, 1)
    rows["estimated_wape"] = [None if sid == _sid(1, 3) else 0.1 * int(sid[-1]) for sid in rows["series_id"]]
    run_dates = sorted(rows["run_date"].unique())
    wh.replace_run_dates("forecast_accuracy", rows, run_dates)
    last = run_dates[-1]
    flag = pd.DataFrame([{"run_date": last, "series_id": _sid(1, 2), "model_name": "retail.store_1.item_2", "model_version": 1,
                          "window_start": last, "pairs": 20, "realized_wape": 0.4, "estimated_wape": 0.2, "naive_wape": 0.15,
                          "factor": 1.5, "reasons": "realized wape 0.4000 > 1.5 x promotion-time wape 0.2000", "actions": "refit",
                          "decided_at": datetime(2026, 1, 1)}])
    wh.replace_run_dates("drift_log", flag, [last])
    wh.dispose()
    q = DashboardQueries(cfg)
    yield home, cfg, q, rows
    q.dispose()


def _pooled(rows: pd.DataFrame) -> dict:
    est = rows.dropna(subset=["estimated_wape"])
    return {"series": len(rows), "pairs": int(rows["pairs"].sum()), "wape": rows["abs_error"].sum() / rows["actual_sum"].sum(),
            "naive_wape": rows["naive_abs_error"].sum() / rows["actual_sum"].sum(),
            "estimated_wape": (est["estimated_wape"] * est["actual_sum"]).sum() / est["actual_sum"].sum(),
            "bias": rows["error_sum"].sum() / rows["actual_sum"].sum(),
            "interval_coverage": rows["inside"].sum() / rows["pairs"].sum(), "fallback_series": int((rows["tier"] == "fallback").sum())}


def test_accuracy_over_time_pools_in_sql(realized):
    _, _, q, rows = realized
    by_date = {str(d): g for d, g in rows.groupby("run_date")}
    for tier, search, sub in (("", "", rows), ("fallback", "", rows[rows["tier"] == "fallback"]),
                              ("", "item=2", rows[rows["series_id"] == _sid(1, 2)]), ("nonsense", "", rows)):
        got = q.accuracy_over_time(tier=tier if tier != "nonsense" else "", q=search)
        expected = {str(d): _pooled(g) for d, g in sub.groupby("run_date")}
        assert [r["run_date"] for r in got] == sorted(expected)  # oldest first
        for r in got:
            for k, v in expected[r["run_date"]].items():
                assert r[k] == pytest.approx(v), (tier, search, r["run_date"], k)
    assert len(by_date) == ACC_DAYS - 1  # the last run date has no actual after it yet
    assert [r["run_date"] for r in q.accuracy_over_time(limit=3)] == sorted(by_date)[-3:]
    # Item 2 degrades: its realized WAPE grows with the run date; the others stay near their level.
    item2 = [r["wape"] for r in q.accuracy_over_time(q="item=2")]
    assert item2[-1] > 3 * item2[0]
    flags = q.drift_flags()
    assert [(f["series_id"], f["actions"]) for f in flags] == [(_sid(1, 2), "refit")]
    assert q.drift_flags(q="item=1") == []


def test_accuracy_page_over_http(realized):
    from fastapi.testclient import TestClient

    from mm_platform.dashboard.app import create_app

    _, cfg, q, rows = realized
    with TestClient(create_app(cfg)) as client:
        page = client.get("/accuracy")
        assert page.status_code == 200
        html = page.text
        assert 'id="fig-accuracy"' in html and 'id="fig-coverage"' in html and 'class="active">Accuracy over time' in html
        run_dates = sorted({str(d) for d in rows["run_date"]})
        assert re.findall(r'data-run-date="([0-9-]+)"', html) == run_dates[::-1]  # newest first
        assert re.findall(r'<tr data-series="([^"]+)"', html) == [_sid(1, 2)]  # the drift flag
        newest = q.accuracy_over_time()[-1]
        assert re.search(r'id="kpi-realized">([0-9.]+)<', html).group(1) == f"{newest['wape']:.3f}"
        assert re.search(r'id="kpi-estimate">([0-9.]+)<', html).group(1) == f"{newest['estimated_wape']:.3f}"
        # The figure carries the pooled numbers: realized, estimate, naive.
        import json

        fig = json.loads(re.search(r'id="fig-accuracy-data">(.*?)</script>', html, re.S).group(1))
        assert [t["name"] for t in fig["data"]] == ["realized", "holdout estimate at promotion", "seasonal naive (realized)"]
        assert fig["data"][0]["x"] == run_dates and fig["data"][0]["y"] == pytest.approx([r["wape"] for r in q.accuracy_over_time()])
        fallback = client.get("/accuracy?tier=fallback").text
        assert 'option value="fallback" selected' in fallback and "fallback tier" in fallback
        api = client.get("/api/accuracy", params={"tier": "champion", "q": "item=1"}).json()
        assert api["tier"] == "champion" and len(api["run_dates"]) == len(run_dates) and api["drift"] == []
        assert api["run_dates"][0]["wape"] == pytest.approx(q.accuracy_over_time(tier="champion", q="item=1")[0]["wape"])


def test_cli_has_the_dashboard_command():
    from mm_platform.cli import build_parser

    args = build_parser().parse_args(["dashboard"])
    assert (args.host, args.port, args.config) == ("127.0.0.1", 8050, None)
    args = build_parser().parse_args(["dashboard", "--config", "x.yaml", "--port", "9001", "--host", "0.0.0.0"])
    assert (args.host, args.port, args.config) == ("0.0.0.0", 9001, "x.yaml")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dashboard", "--port", "70000"])


# -- matplotlib plots for the Dagster UI ------------------------------------------------------------


def test_png_plots_are_valid_and_embeddable(big):
    _, _, data = big
    report = data["report"]
    png = accuracy_histogram_png(report)
    assert png.startswith(PNG_MAGIC) and len(png) > 2000
    assert accuracy_histogram_png(report.iloc[:0]).startswith(PNG_MAGIC)  # no models: a message, not an error
    days = pd.date_range("2025-10-01", periods=90)
    history = pd.DataFrame({"series_id": np.repeat(["a", "b", "c"], 90), "ds": np.tile(days, 3), "y": np.arange(270) % 9})
    fut = pd.date_range("2025-12-30", periods=14)
    preds = pd.DataFrame({"series_id": np.repeat(["a", "b", "c"], 14), "ds": np.tile(fut, 3), "yhat": 4.0,
                          "yhat_lower": 2.0, "yhat_upper": 6.0})
    for png in (sample_forecasts_png(history, preds, n=4), sample_forecasts_png(history, preds, n=1),
                sample_forecasts_png(history.iloc[:0], preds), sample_forecasts_png(history, preds.iloc[:0])):
        assert png.startswith(PNG_MAGIC) and len(png) > 1000
    md = png_markdown(png, alt="sample forecasts")
    assert md.startswith("![sample forecasts](data:image/png;base64,") and md.endswith(")")
    assert base64.b64decode(md.split(",", 1)[1][:-1]) == png


# -- a real browser against a real pipeline run ----------------------------------------------------


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser_tools():
    """Skips the browser tests (before Spark starts) when the browser or its driver is missing."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install 'selenium>=4.20')")


@pytest.fixture(scope="module")
def served(browser_tools, small_dataset, spark):
    """The 20-series dataset run through the whole pipeline, and the dashboard serving it."""
    from mm_platform_tests.test_end_to_end import RUN_DATE, materialize_all

    home, path, cfg = small_dataset
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    done = wh.has_table("forecast_metrics") and len(wh.read("SELECT run_date FROM forecast_metrics WHERE run_date = :r", r=RUN_DATE))
    if not done:  # the end-to-end module may already have run the pipeline on this session's dataset
        assert materialize_all(cfg, path, spark).success
    expected = {
        "series": len(wh.read("SELECT series_id FROM v_series_accuracy")),
        "decisions": wh.read("SELECT action, COUNT(*) AS n FROM v_promotion_log GROUP BY action").set_index("action")["n"].to_dict(),
        "production": set(wh.read("SELECT DISTINCT series_id FROM v_latest_predictions")["series_id"]),
    }
    wh.dispose()
    base, proc, log = _dashboard(home, path)
    yield base, cfg, expected
    _stop(proc, log)


def _dashboard(home: Path, path: Path):
    port = _free_port()
    log = open(home / "dashboard.log", "w")  # closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "mm_platform.cli", "dashboard", "--config", str(path), "--port", str(port)],
        env={**os.environ, "MM_HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    _wait_healthy(base, proc, log, home)
    return base, proc, log


def _wait_healthy(base: str, proc, log, home: Path) -> None:
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            log.close()
            pytest.fail("the dashboard did not start:\n" + (home / "dashboard.log").read_text())
        time.sleep(0.3)


def _stop(proc, log) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser(served):
    yield from _chrome()


def _chrome():
    """A headless Chromium (selenium) for one module's browser tests."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="mm-dash-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000",
                f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, cond, timeout=20, what="condition"):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The explorer replaces its list in place, so an element can go stale between two polls.
    wait = WebDriverWait(driver, timeout, ignored_exceptions=[StaleElementReferenceException])
    return wait.until(lambda d: cond(d), message=f"timed out waiting for {what}")


PLOTS_JS = """
return Array.from(document.querySelectorAll('.js-plotly-plot')).map(function (gd) {
  var visible = (gd._fullData || []).filter(function (t) { return t.visible === true; });
  return {id: gd.id, traces: (gd.data || []).length,
          points: visible.map(function (t) { return (t.x || []).length; }),
          drawn: gd.querySelectorAll('.point, path.js-line, .bars path').length};
});"""


def _plots(driver) -> dict:
    return {p["id"]: p for p in driver.execute_script(PLOTS_JS)}


def _console_errors(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _screenshot(driver, name: str) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(1000, min(int(height), 4000)))
    time.sleep(0.3)  # Plotly relayouts on resize
    driver.save_screenshot(str(ARTIFACTS / f"dashboard_{name}.png"))
    driver.set_window_size(1400, 1000)


def test_browser_overview_draws_every_chart(browser, served):
    base, cfg, expected = served
    browser.get(base + "/")
    ids = ["fig-hist", "fig-naive", *[f"fig-key-{k}" for k in cfg.keys], "fig-runs"]
    _wait(browser, lambda d: set(ids) <= set(_plots(d)), what="the overview charts")
    plots = _plots(browser)
    for fid in ids:
        assert plots[fid]["traces"] >= 2 and max(plots[fid]["points"]) > 0, plots[fid]
        assert plots[fid]["drawn"] > 0, plots[fid]
    assert browser.find_element("id", "kpi-series").text == str(expected["series"])
    assert browser.find_element("id", "kpi-promoted").text == str(expected["decisions"].get("promoted", 0))
    # The histogram's buttons switch to MAPE in the browser (both metrics were aggregated on the server).
    browser.find_elements("css selector", "#fig-hist .updatemenu-button")[1].click()
    _wait(browser, lambda d: "MAPE" in d.execute_script("return document.getElementById('fig-hist').layout.title.text"),
          what="the MAPE histogram")
    assert max(_plots(browser)["fig-hist"]["points"]) > 0
    _screenshot(browser, "overview")
    assert _console_errors(browser) == []


def test_browser_series_search_and_chart(browser, served):
    from selenium.webdriver.common.by import By

    base, cfg, expected = served
    rows_js = "return Array.from(document.querySelectorAll('#series-table tbody tr[data-series]')).map(r => r.dataset.series)"
    browser.get(base + "/series")
    _wait(browser, lambda d: len(d.execute_script(rows_js)) == min(25, expected["series"]), what="the series list")
    box = browser.find_element(By.ID, "series-q")
    box.send_keys("item=3")
    _wait(browser, lambda d: (r := d.execute_script(rows_js)) and all(s.endswith(",item=3") for s in r), what="the search")
    found = browser.execute_script(rows_js)
    assert found == [f"store={s},item=3" for s in range(1, 5)]
    assert "q=item%3D3" in browser.current_url  # the search is kept in the address
    target = next(s for s in found if s in expected["production"])
    browser.find_element(By.CSS_SELECTOR, f'tr[data-series="{target}"] a.series-link').click()
    _wait(browser, lambda d: "fig-series" in _plots(d), what="the series chart")
    chart = _plots(browser)["fig-series"]
    actuals, upper, lower, forecast = chart["points"]
    assert actuals > 300 and upper == lower == forecast == cfg.horizon and chart["drawn"] > 0
    assert browser.find_element(By.CSS_SELECTOR, "#series-detail h2").text.startswith(target)
    assert "selected" in browser.find_element(By.CSS_SELECTOR, f'tr[data-series="{target}"]').get_attribute("class")
    wape_row = browser.find_element(By.CSS_SELECTOR, "#series-metrics tbody tr").text
    assert re.fullmatch(r"WAPE \d+\.\d{3} \d+\.\d{3}", wape_row), wape_row
    assert browser.find_element(By.ID, "series-q").get_attribute("value") == "item=3"
    _screenshot(browser, "series")
    assert _console_errors(browser) == []
    # Paging is server-side too: a page of 8, then the next page, fetched in place.
    browser.get(base + "/series?size=8")
    _wait(browser, lambda d: len(d.execute_script(rows_js)) == 8, what="a page of 8")
    first = browser.execute_script(rows_js)
    browser.find_element(By.CSS_SELECTOR, "#series-list a[rel=next]").click()
    _wait(browser, lambda d: "page 2 of" in d.find_element(By.CSS_SELECTOR, "#series-list .pager").text, what="page 2")
    second = browser.execute_script(rows_js)
    assert len(second) == 8 and not set(first) & set(second)
    assert _console_errors(browser) == []


def test_browser_promotion_log_filters(browser, served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    base, _, expected = served
    rows_js = ("return Array.from(document.querySelectorAll('#promotion-table tbody tr[data-action]'))"
               ".map(r => [r.dataset.action, r.dataset.series])")
    browser.get(base + "/promotions")
    total = sum(expected["decisions"].values())
    _wait(browser, lambda d: len(d.execute_script(rows_js)) == min(25, total), what="the promotion log")
    _wait(browser, lambda d: "fig-promotions" in _plots(d), what="the decisions chart")
    assert max(_plots(browser)["fig-promotions"]["points"]) > 0
    Select(browser.find_element(By.ID, "promo-action")).select_by_value("rejected")
    _wait(browser, lambda d: "action=rejected" in d.current_url, what="the action filter")
    rows = browser.execute_script(rows_js)
    assert len(rows) == min(25, expected["decisions"]["rejected"]) and {a for a, _ in rows} == {"rejected"}
    _screenshot(browser, "promotions")
    box = browser.find_element(By.ID, "promo-q")
    box.clear()
    box.send_keys("store=2\n")
    _wait(browser, lambda d: "q=store%3D2" in d.current_url, what="the series filter")
    rows = browser.execute_script(rows_js)
    assert rows and all(a == "rejected" and s.startswith("store=2,") for a, s in rows)
    assert _console_errors(browser) == []


def test_browser_accuracy_page_draws_and_filters(browser_tools, realized):
    """The accuracy-over-time page in a real Chromium, on the realized-accuracy warehouse (no Spark)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    home, _, q, rows = realized
    base, proc, log = _dashboard(home, home / "config.yaml")
    driver = _chrome()
    browser = next(driver)
    try:
        browser.get(base + "/accuracy")
        _wait(browser, lambda d: {"fig-accuracy", "fig-coverage"} <= set(_plots(d)), what="the accuracy charts")
        plots = _plots(browser)
        n = rows["run_date"].nunique()
        assert plots["fig-accuracy"]["traces"] == 3 and plots["fig-accuracy"]["points"] == [n, n, n]
        assert plots["fig-accuracy"]["drawn"] > 0 and plots["fig-coverage"]["points"][0] == n
        assert browser.find_element(By.ID, "kpi-drift").text == "1"
        _screenshot(browser, "accuracy")
        Select(browser.find_element(By.ID, "accuracy-tier")).select_by_value("fallback")
        _wait(browser, lambda d: "tier=fallback" in d.current_url, what="the tier filter")
        _wait(browser, lambda d: "fig-accuracy" in _plots(d), what="the filtered chart")
        wape = browser.execute_script("return document.getElementById('fig-accuracy').data[0].y")
        assert wape == pytest.approx([r["wape"] for r in q.accuracy_over_time(tier="fallback")])
        assert _console_errors(browser) == []
    finally:
        next(driver, None)
        _stop(proc, log)
