"""Fast unit tests of the steps' logic with in-memory stores (mm_platform_tests/fakes.py);
the same steps run against real MLflow stores and databases in test_stages, test_end_to_end
and test_reliability."""

from __future__ import annotations

import json
from datetime import date

import pandas as pd
import pytest

from mm_platform.config import parse_config
from mm_platform.core.errors import UserError
from mm_platform.core.vocabulary import FAILED, METRICS, TRAINED, UNCHANGED
from mm_platform.steps.operations import failed_series, rollback
from mm_platform.steps.promote import promote
from mm_platform.steps.thresholds import threshold_exceeded
from mm_platform.steps.train import register_model_set
from mm_platform.stores.registry import production_by_series
from mm_platform_tests.fakes import FakeRegistry, FakeWarehouse

RUN = date(2025, 12, 31)


def cfg(**over):
    return parse_config({"name": "retail", "source": {"url": "sqlite:///unused.db"}, "columns": {"keys": ["store", "item"]},
                         "promotion": {"max_wape": 0.5, "beats_seasonal_naive": True}, **over})


def results(*rows):
    """Training results as the Spark backends return them: (item, status, wape, naive_wape, fingerprint)."""
    out = []
    for item, status, wape, naive, fp in rows:
        out.append({"store": 1, "item": item, "series_id": f"store=1,item={item}", "status": status, "reason": "",
                    "n_obs": 100, "last_date": "2025-12-31", "fingerprint": fp,
                    **{m: None for m in METRICS}, "wape": wape, "naive_wape": naive, "fit_seconds": 0.1,
                    "model_json": json.dumps({"family": "seasonal_naive", "item": item}) if status == TRAINED else ""})
    return pd.DataFrame(out)


def test_register_model_set_registers_trained_series_once_per_fingerprint():
    c, reg = cfg(), FakeRegistry()
    first = register_model_set(results((1, TRAINED, 0.2, 0.4, "a"), (2, FAILED, None, None, "b")), c, reg, RUN, "r1")
    assert (first.registered, first.failed) == (1, 1)
    model = reg.latest_by_series("retail")["store=1,item=1"]
    assert model.name == "retail.store_1.item_1" and model.tags["key.item"] == "1" and model.metric("wape") == 0.2
    # the same data again: nothing new; a series the backend skipped as unchanged keeps its model and metrics
    again = register_model_set(results((1, TRAINED, 0.2, 0.4, "a")), c, reg, RUN, "r2")
    assert again.registered == 0 and again.unchanged == 1
    kept = register_model_set(results((1, UNCHANGED, None, None, "a")), c, reg, RUN, "r3")
    assert kept.report.loc[0, "status"] == TRAINED and kept.report.loc[0, "wape"] == 0.2
    assert len(reg.versions["retail.store_1.item_1"]) == 1


def test_promote_applies_the_rules_copies_winners_and_decides_each_version_once():
    c, training, production, wh = cfg(), FakeRegistry("sqlite:///t.db"), FakeRegistry(), FakeWarehouse()
    register_model_set(results((1, TRAINED, 0.2, 0.4, "a"), (2, TRAINED, 0.45, 0.3, "b")), c, training, RUN, "r")
    out = promote(c, RUN, training, production, wh, None, decided_by="test")
    assert (out.promoted, out.rejected) == (1, 1)
    prod = production_by_series(production, "retail")
    assert set(prod) == {"store=1,item=1"} and prod["store=1,item=1"].tags["training_version"] == "1"
    rejected = out.decisions.set_index("series_id").loc["store=1,item=2", "reasons"]
    assert "does not beat seasonal naive" in rejected
    assert promote(c, RUN, training, production, wh, None).already == 2
    # a worse new version of a promoted series is kept out by not_worse_than_production
    register_model_set(results((1, TRAINED, 0.3, 0.4, "a2")), c, training, RUN, "r2")
    worse = promote(c, RUN, training, production, wh, None)
    assert worse.rejected == 1 and "worse than production" in worse.decisions.loc[0, "reasons"]
    assert production_by_series(production, "retail")["store=1,item=1"].version == 1


def test_rollback_moves_the_alias_back_and_logs_it():
    c, training, production, wh = cfg(promotion={"max_wape": None, "not_worse_than_production": False}), \
        FakeRegistry(), FakeRegistry(), FakeWarehouse()
    for fp in ("a", "b"):
        register_model_set(results((1, TRAINED, 0.2, 0.4, fp)), c, training, RUN, fp)
        promote(c, RUN, training, production, wh, None)
    assert production_by_series(production, "retail")["store=1,item=1"].version == 2
    log = rollback(c, production, wh, ["store=1,item=1"], decided_by="test")
    assert production_by_series(production, "retail")["store=1,item=1"].version == 1
    assert log.loc[0, "action"] == "rollback" and wh.tables["promotion_log"]["action"].tolist()[-1] == "rollback"
    with pytest.raises(UserError, match="no production version 7"):
        rollback(c, production, wh, ["store=1,item=1"], to_version=7)
    with pytest.raises(UserError, match="has no production model"):
        rollback(c, production, wh, ["store=9,item=9"])


def test_failed_series_reads_the_newest_training_report():
    wh = FakeWarehouse()
    assert failed_series(wh) == (None, [])
    wh.replace_run("training_report", date(2025, 12, 30), pd.DataFrame({"series_id": ["a"], "status": [FAILED]}))
    wh.replace_run("training_report", RUN, pd.DataFrame({"series_id": ["a", "b", "c"], "status": [TRAINED, FAILED, FAILED]}))
    assert failed_series(wh) == (RUN, ["b", "c"])
    assert failed_series(wh, date(2025, 12, 30)) == (date(2025, 12, 30), ["a"])


@pytest.mark.parametrize(("failed", "total", "over"), [(1, 4, False), (3, 4, True), (2, 10, False), (3, 10, True), (200, 10_000, False)])
def test_the_error_threshold_needs_a_minimum_count_before_the_share_applies(failed, total, over):
    limits = cfg().scoring  # max_failed_fraction 0.2 from min_failed_count 3 failures on
    rows = pd.DataFrame({"reason": ["bad model"] * failed})
    assert (threshold_exceeded(rows, total, limits, "scoring", "score", "x") is not None) is over
