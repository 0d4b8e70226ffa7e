"""Shared fixtures: a real local Spark session, and a small generated dataset with its own
MM_HOME (real SQLite source and warehouse, real MLflow stores, real lake folder)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml

from mm_platform.config import StorageConfig

os.environ.setdefault("MM_SPARK_DRIVER_MEMORY", "1g")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # tests stay on loopback
logging.getLogger("cmdstanpy").setLevel(logging.WARNING)
logging.getLogger("py4j").setLevel(logging.WARNING)

SMALL = {"stores": 4, "items": 5, "days": 500}


def write_config(home: Path, **over) -> Path:
    cfg = {
        "name": "retail",
        "source": {"url": f"sqlite:///{home}/source.db", "table": "sales"},
        "columns": {"date": "date", "target": "units", "keys": ["store", "item"], "regressors": ["price", "promo", "holiday"]},
        "frequency": "daily",
        "horizon": 14,
        "holdout": 28,
        "min_history": 90,
        "promotion": {"max_wape": 0.6, "beats_seasonal_naive": True},
        "spark": {"master": "local[2]", "shuffle_partitions": 2},
        "storage": StorageConfig.embedded(home),
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    path = home / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def spark():
    from mm_platform.config import SparkConfig
    from mm_platform.spark.session import get_session

    session = get_session(SparkConfig(master="local[2]", shuffle_partitions=2))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A generated 20-series source database and a config pointing everything into one home."""
    from mm_platform.config import load_config
    from mm_platform.datagen import write_sales

    home = tmp_path_factory.mktemp("mm_home")
    path = write_config(home)
    cfg = load_config(path)
    write_sales(cfg.source.url, cfg.source.table, **SMALL, seed=7)
    return home, path, cfg
