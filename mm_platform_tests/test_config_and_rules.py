import numpy as np
import pytest

from mm_platform.config import ConfigError, PromotionRules, load_config, parse_config
from mm_platform.forecasting.metrics import mape, rmse, wape
from mm_platform.steps.rules import evaluate


def base(**over):
    d = {"name": "retail", "source": {"url": "sqlite:///x.db", "table": "sales"}}
    d.update(over)
    return d


def test_packaged_config_loads_and_expands_mm_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_HOME", str(tmp_path))
    cfg = load_config()
    assert cfg.keys == ["store", "item"]
    assert cfg.storage.lake_url == f"{tmp_path}/lake"
    assert cfg.source.url == f"sqlite:///{tmp_path}/source.db"
    assert cfg.storage.training_registry_uri != cfg.storage.production_registry_uri


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"horizon": 0}, "horizon"),
        ({"frequency": "hourly"}, "frequency"),
        ({"columns": {"keys": []}}, "columns.keys"),
        ({"columns": {"keys": ["store; DROP TABLE x"]}}, "not a valid identifier"),
        ({"algorithm": {"name": "xgboost"}}, "algorithm.name"),
        ({"promotion": {"max_wape": -1}}, "promotion.max_wape"),
        ({"holdout": 100, "min_history": 50}, "min_history"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_config_names_the_field(over, field):
    with pytest.raises(ConfigError, match="invalid config") as err:
        parse_config(base(**over))
    assert field in str(err.value)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_metrics():
    a = np.array([10.0, 0.0, 5.0, np.nan])
    f = np.array([8.0, 1.0, 5.0, 3.0])
    assert wape(a, f) == pytest.approx(3 / 15)
    assert mape(a, f) == pytest.approx(0.1)  # zero actuals are left out
    assert rmse(a, f) == pytest.approx(np.sqrt(5 / 3))
    assert np.isnan(wape([0, 0], [1, 1]))


def test_promotion_rules():
    rules = PromotionRules(max_wape=0.3, beats_seasonal_naive=True, not_worse_than_production=True)
    assert evaluate({"wape": 0.2, "naive_wape": 0.25}, rules).promote
    d = evaluate({"wape": 0.35, "naive_wape": 0.25}, rules)
    assert not d.promote and len(d.reasons) == 2
    assert not evaluate({"wape": 0.2, "naive_wape": 0.25}, rules, {"wape": 0.1}).promote
    assert not evaluate({"wape": float("nan"), "naive_wape": 0.25}, rules).promote  # no evidence, no promotion
