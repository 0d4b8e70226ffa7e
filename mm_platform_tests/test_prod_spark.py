"""Spark beyond local mode, selected only by ``spark.master``: a standalone cluster (master +
two workers on 127.0.0.1, started with pyspark's ``bin/spark-class``) and a Spark Connect
server (pyspark's ``sbin/start-connect-server.sh``). The whole pipeline runs through
``mm-platform run`` (the Dagster assets, PySparkResource) and must give what local mode gives.

Issue #18: the cluster also runs with the lake on Azurite (``abfs://``), and the cluster and
Connect runs go through ``mm_platform_tests.driver_guard``, which fails the run if any stage
sends or collects target rows through the driver or reads the raw table's history there.
Chosen over comparing the driver's RSS between two data sizes in a test: it names the stage
that broke the rule and does not depend on allocator noise on a shared machine; the RSS
comparison itself is ``python -m benchmarks driver-rss`` (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pandas as pd
import pytest

from mm_platform.config import load_config
from mm_platform.datagen import write_sales
from mm_platform.stores.registry import production_by_series, production_registry
from mm_platform.stores.warehouse import Warehouse
from mm_platform_tests.conftest import write_config
from mm_platform_tests.test_prod_azure import _blobs, azurite  # noqa: F401 - the Azurite fixture
from mm_platform_tests.test_prod_support import (
    ROOT,
    VENV_BIN,
    free_port,
    pyspark_home,
    run_cli,
    server,
    subprocess_env,
    tail,
)

pytestmark = pytest.mark.slow

RUN_DATE = "2025-12-31"
RUN_TIMEOUT = 1200  # seconds for one whole pipeline run on a busy 2-core machine
METRICS = ["n_obs", "mape", "wape", "rmse", "naive_mape", "naive_wape", "naive_rmse"]


def _spark_env(tmp: Path) -> dict[str, str]:
    return subprocess_env(
        SPARK_HOME=str(pyspark_home()),
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_LOG_DIR=str(tmp / "logs"),
        SPARK_PID_DIR=str(tmp),
        SPARK_IDENT_STRING=f"mm-test-{tmp.name}",
        PYSPARK_PYTHON=str(VENV_BIN / "python"),
        SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false",
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    home = tmp_path_factory.mktemp("spark_source")
    url = f"sqlite:///{home}/source.db"
    write_sales(url, "sales", stores=2, items=4, days=400, seed=3)
    return url


def _run(home: Path, source_url: str, spark: dict, env: dict[str, str], storage: dict | None = None,
         guarded: bool = False) -> tuple[dict, pd.DataFrame, pd.DataFrame, dict]:
    """``mm-platform run`` (under the driver guard when ``guarded``); its summary, training
    report, predictions and production models (series -> registered name and version)."""
    home.mkdir(parents=True, exist_ok=True)
    path = write_config(home, source={"url": source_url, "table": "sales"}, spark=spark, horizon=7, storage=storage or {})
    cli = [VENV_BIN / "python", "-m", "mm_platform_tests.driver_guard"] if guarded else [VENV_BIN / "mm-platform"]
    if guarded:
        env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))}
    out = run_cli([*cli, "run", "--config", path, "--run-date", RUN_DATE, "--ephemeral"], env, RUN_TIMEOUT, cwd=home)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    cfg = load_config(path)
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    try:
        report = wh.read("SELECT * FROM training_report").sort_values("series_id").reset_index(drop=True)
        preds = wh.read("SELECT * FROM predictions").sort_values(["series_id", "ds"]).reset_index(drop=True)
    finally:
        wh.dispose()
    production = {sid: (m.name, m.version) for sid, m in production_by_series(production_registry(cfg), cfg.name).items()}
    return summary, report, preds, production


def _assert_same_results(got, expected) -> None:
    summary, report, preds, production = got
    e_summary, e_report, e_preds, e_production = expected
    assert production == e_production and e_production  # the same models registered and promoted
    for k in ("series", "models_registered", "models_failed", "models_promoted", "prediction_rows"):
        assert summary[k] == e_summary[k], k
    assert e_summary["prediction_rows"] > 0
    assert report["series_id"].tolist() == e_report["series_id"].tolist()
    assert report["status"].tolist() == e_report["status"].tolist()
    pd.testing.assert_frame_equal(report[METRICS], e_report[METRICS], check_dtype=False, rtol=1e-6)
    cols = ["series_id", "ds", "yhat", "yhat_lower", "yhat_upper", "model_version"]
    pd.testing.assert_frame_equal(preds[cols], e_preds[cols], check_dtype=False, rtol=1e-6)


@pytest.fixture(scope="module")
def local_results(tmp_path_factory, source):
    tmp = tmp_path_factory.mktemp("spark_local")
    return _run(tmp / "home", source, {"master": "local[2]", "shuffle_partitions": 2}, _spark_env(tmp))


def test_standalone_cluster_gives_local_results(tmp_path, source, local_results):
    env = _spark_env(tmp_path)
    spark_class = str(pyspark_home() / "bin" / "spark-class")
    port, ui = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    master_cmd = [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)]
    with server(master_cmd, tmp_path / "master.log", port=port, timeout=180, env=env, cwd=tmp_path):
        workers = []
        for i in (1, 2):
            wport = free_port()
            cmd = [spark_class, "org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1", "--port", str(wport),
                   "--webui-port", str(free_port()), "--cores", "1", "--memory", "1g", "--work-dir", str(tmp_path / f"work{i}")]
            workers.append(server(cmd, tmp_path / f"worker{i}.log", port=wport, timeout=180, env=env, cwd=tmp_path))
        with workers[0], workers[1]:
            _wait_for_log(tmp_path / "master.log", "Registering worker", 2)
            spark = {
                "master": master_url,
                "shuffle_partitions": 2,
                "conf": {
                    "spark.driver.host": "127.0.0.1",
                    "spark.driver.bindAddress": "127.0.0.1",
                    "spark.executor.memory": "512m",
                    "spark.executor.cores": "1",
                    "spark.cores.max": "2",
                },
            }
            got = _run(tmp_path / "home", source, spark, env)
    _assert_same_results(got, local_results)
    # The work ran in executors on both workers, not in the driver.
    for i in (1, 2):
        apps = list((tmp_path / f"work{i}").glob("app-*/*/stderr"))
        assert apps, f"worker {i} ran no executor:\n{tail(tmp_path / f'worker{i}.log')}"
        # The session's executor JVM options reached the executors (their command is the first line).
        for a in apps:
            assert "-XX:TieredStopAtLevel=1" in a.read_text(errors="replace").split("\n", 1)[0], a


def test_standalone_cluster_with_the_lake_on_azurite_gives_local_results(tmp_path, source, local_results, azurite):  # noqa: F811
    """Issue #18: two single-core workers, the lake on Azurite (``abfs://``), the credential
    only in the executors' environment (``spark.executorEnv``) and the driver's; the whole
    pipeline under the driver guard; the same models and predictions as local mode."""
    from benchmarks.cluster import cluster_conf, standalone_cluster

    env = {**_spark_env(tmp_path), "AZURE_STORAGE_CONNECTION_STRING": azurite}
    container = f"mm-{uuid.uuid4().hex[:12]}"
    with standalone_cluster(tmp_path, workers=2, cores=1, memory="1g", env=env) as (master_url, _):
        spark = cluster_conf(master_url, 2, azurite)
        spark["shuffle_partitions"] = 2
        spark["conf"]["spark.executor.memory"] = "512m"
        got = _run(tmp_path / "home", source, spark, env, storage={"lake_url": f"abfs://{container}/retail"}, guarded=True)
    _assert_same_results(got, local_results)
    blobs = _blobs(azurite, container)
    run = f"retail/training_sets/retail/run_date={RUN_DATE}"
    assert f"{run}/_CURRENT" in blobs and any(b.startswith(f"{run}/v=") and "/bucket=" in b for b in blobs)
    assert "retail/raw/sales/_manifest.json" in blobs
    for i in (1, 2):  # both workers ran executors
        assert list((tmp_path / f"work{i}").glob("app-*/*/stderr")), f"worker {i} ran no executor"


def test_spark_connect_gives_local_results(tmp_path, source, local_results, azurite):  # noqa: F811
    """Spark Connect with the lake on Azurite: the training-set build and the training run in
    the server's tasks through fsspec (``mapInPandas``), under the driver guard. The server's
    local-mode Python workers inherit its environment, which carries the credential."""
    env = {**_spark_env(tmp_path), "AZURE_STORAGE_CONNECTION_STRING": azurite}
    container = f"mm-{uuid.uuid4().hex[:12]}"
    port = free_port()
    cmd = [
        str(pyspark_home() / "sbin" / "start-connect-server.sh"), "--wait",  # foreground: stopped with its process group
        "--master", "local[2]",
        "--driver-memory", "1g",
        "--conf", f"spark.connect.grpc.binding.port={port}",
        "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
        "--conf", "spark.driver.host=127.0.0.1",
        "--conf", "spark.ui.enabled=false",
        "--conf", f"spark.pyspark.python={VENV_BIN / 'python'}",
        "--conf", "spark.sql.session.timeZone=UTC",
    ]
    log = tmp_path / "connect.log"
    with server(cmd, log, port=port, timeout=240, env=env, cwd=tmp_path):
        got = _run(tmp_path / "home", source, {"master": f"sc://127.0.0.1:{port}", "shuffle_partitions": 2}, env,
                   storage={"lake_url": f"abfs://{container}/retail"}, guarded=True)
    _assert_same_results(got, local_results)
    run = f"retail/training_sets/retail/run_date={RUN_DATE}"
    assert f"{run}/_CURRENT" in _blobs(azurite, container)
    text = log.read_text(errors="replace")
    # The queries (training and scoring mapInPandas jobs among them) executed inside the Connect server.
    assert "SparkConnectExecutionManager" in text


def _wait_for_log(log: Path, needle: str, count: int, timeout: float = 120) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and log.read_text(errors="replace").count(needle) >= count:
            return
        time.sleep(1)
    raise TimeoutError(f"{needle!r} x{count} not in {log} after {timeout}s:\n{tail(log)}")
