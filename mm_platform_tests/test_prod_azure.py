"""Azure: the lake on ``abfs://container/path`` through adlfs against Azurite (the Azure
Storage emulator, installed with npm into a cache folder and started on 127.0.0.1), with the
credentials only in the environment; and the optional Azure ML registry extra."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from mm_platform.config import load_config
from mm_platform.datagen import write_sales
from mm_platform.defs.dataset import Dataset
from mm_platform.steps.ingest import ingest
from mm_platform.steps.train import build_training_sets
from mm_platform.stores.lake import Lake, LakeCredentialsError, storage_options
from mm_platform.stores.registry import production_by_series, production_registry
from mm_platform.stores.training_sets import training_set_store
from mm_platform.stores.warehouse import Warehouse
from mm_platform_tests.conftest import write_config
from mm_platform_tests.test_executor_io import _no_data_rows_through_the_driver
from mm_platform_tests.test_prod_support import ROOT, free_port, server

RUN_DATE = date(2025, 12, 31)
# Azurite's documented development account (public, fixed): not a secret.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_VERSION = "3"


def _azurite_bin() -> Path:
    """azurite-blob from the npm cache folder (``$MM_AZURITE_DIR``, default
    ``~/.cache/mm_platform/azurite``), installed there on first use; skips if that fails."""
    folder = Path(os.environ.get("MM_AZURITE_DIR") or Path.home() / ".cache" / "mm_platform" / "azurite")
    binary = folder / "node_modules" / ".bin" / "azurite-blob"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("Azurite needs Node.js and npm, which are not installed")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", str(folder), f"azurite@{AZURITE_VERSION}"],
            capture_output=True, text=True, timeout=600,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("npm install azurite did not finish in 600 s")
    if out.returncode != 0 or not binary.exists():
        pytest.skip(f"npm install azurite failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return binary


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    """A running Azurite blob service on 127.0.0.1; yields its connection string."""
    binary = _azurite_bin()
    tmp = tmp_path_factory.mktemp("azurite")
    port = free_port()
    cmd = [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(tmp / "data"),
           "--silent", "--skipApiVersionCheck", "--loose", "--disableProductStyleUrl"]
    with server(cmd, tmp / "azurite.log", port=port, timeout=60):
        yield (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
        )


@pytest.fixture
def azure_env(azurite, monkeypatch, spark):
    """The credential in the driver's environment and, as ``spark.executorEnv.*`` puts it,
    in the executors' (``SparkContext.environment``: the variables every Python worker is
    started with; the session started before this test, so its conf cannot carry it)."""
    for k in list(os.environ):
        if k.startswith("AZURE_STORAGE_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    monkeypatch.setitem(spark.sparkContext.environment, "AZURE_STORAGE_CONNECTION_STRING", azurite)
    return azurite


def _blobs(connection_string: str, container: str) -> list[str]:
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(connection_string)
    try:
        return [b.name for b in client.get_container_client(container).list_blobs()]
    finally:
        client.close()


def test_lake_credentials_only_from_the_environment(monkeypatch):
    for k in list(os.environ):
        if k.startswith("AZURE_STORAGE_"):
            monkeypatch.delenv(k)
    assert storage_options("/some/folder") == {}
    assert storage_options("abfs://lake/retail") == {"anon": False}  # DefaultAzureCredential
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "k")
    assert storage_options("abfss://lake/retail") == {"account_name": "acct", "account_key": "k"}
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "DefaultEndpointsProtocol=https;AccountName=acct")
    assert storage_options("az://lake/retail") == {"connection_string": "DefaultEndpointsProtocol=https;AccountName=acct"}
    with pytest.raises(LakeCredentialsError):
        Lake("abfs://lake/retail?sig=abc")


@pytest.mark.slow
def test_ingestion_and_training_sets_on_azurite(tmp_path, azure_env, spark, monkeypatch):
    """raw_sales writes the lake in Azurite; training_sets reads it there and writes back
    there, and training reads it there, in Spark tasks only (no data row in the driver); the
    results equal the same steps on a local folder lake."""
    container = f"mm-{uuid.uuid4().hex[:12]}"
    local_cfg = load_config(write_config(tmp_path))
    write_sales(local_cfg.source.url, "sales", stores=2, items=3, days=200, seed=2)
    abfs_home = tmp_path / "abfs"
    abfs_home.mkdir()
    abfs_cfg = load_config(
        write_config(abfs_home, source={"url": local_cfg.source.url, "table": "sales"}, storage={"lake_url": f"abfs://{container}/retail"})
    )
    assert AZURITE_KEY not in yaml.safe_dump(abfs_cfg.model_dump())  # the config holds no credential
    local, remote = Lake(local_cfg.storage.lake_url), Lake(abfs_cfg.storage.lake_url)
    assert not remote.is_local() and remote.uri("raw") == f"abfs://{container}/retail/raw"

    for lake in (local, remote):
        first = ingest(local_cfg, lake, local_cfg.source.url, date(2025, 12, 1))
        again = ingest(local_cfg, lake, local_cfg.source.url, RUN_DATE)
        assert first["inserted"] > 0 and again["inserted"] == 6 * 30
    pd.testing.assert_frame_equal(remote.read_raw("sales"), local.read_raw("sales"))
    blobs = _blobs(azure_env, container)
    assert "retail/raw/sales/_manifest.json" in blobs and any(b.endswith(".parquet") for b in blobs)

    local_stats = build_training_sets(spark, local, local_cfg, RUN_DATE)
    with monkeypatch.context() as m:
        _no_data_rows_through_the_driver(m)
        remote_stats = build_training_sets(spark, remote, abfs_cfg, RUN_DATE)
        remote_models = training_set_store(remote, abfs_cfg).train(spark, RUN_DATE)
    local_models = training_set_store(local, local_cfg).train(spark, RUN_DATE)
    pd.testing.assert_frame_equal(remote_models.drop(columns="fit_seconds"), local_models.drop(columns="fit_seconds"))
    assert {k: remote_stats[k] for k in ("rows", "series")} == {k: local_stats[k] for k in ("rows", "series")}
    assert remote_stats["path"].startswith(f"abfs://{container}/")
    blobs = _blobs(azure_env, container)
    # a version folder named by a one-blob pointer (the commit point on an object store)
    run = f"retail/training_sets/retail/run_date={RUN_DATE}"
    assert f"{run}/_CURRENT" in blobs
    buckets = {b.split("/")[5] for b in blobs if b.startswith(f"{run}/v=") and not b.endswith("/_SUCCESS")}
    assert buckets and all(b.startswith("bucket=") for b in buckets)

    def frame(lake, cfg):
        df = training_set_store(lake, cfg).dataframe(spark, RUN_DATE).toPandas()
        return df.sort_values(["series_id", "ds"]).reset_index(drop=True)

    got, expected = frame(remote, abfs_cfg), frame(local, local_cfg)
    assert list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert got.groupby("series_id")["bucket"].nunique().max() == 1


@pytest.mark.slow
def test_whole_pipeline_with_the_lake_on_azurite(tmp_path, azure_env, spark):
    container = f"mm-{uuid.uuid4().hex[:12]}"
    path = write_config(tmp_path, storage={"lake_url": f"abfs://{container}/retail"}, horizon=7)
    cfg = load_config(path)
    write_sales(cfg.source.url, cfg.source.table, stores=2, items=4, days=400, seed=3)
    graph = Dataset.from_file(path).definitions()
    result = dg.materialize(list(graph.assets), partition_key=str(RUN_DATE), resources=graph.resources)
    assert result.success
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    try:
        preds = wh.read("SELECT * FROM predictions")
    finally:
        wh.dispose()
    prod = production_by_series(production_registry(cfg), cfg.name)
    assert prod and len(preds) == cfg.horizon * len(prod)
    blobs = _blobs(azure_env, container)
    assert any(b.startswith("retail/training_sets/") for b in blobs) and any(b.startswith("retail/raw/sales/") for b in blobs)


def test_azureml_extra_is_declared():
    """``pip install 'mm_platform[azureml]'`` brings azureml-mlflow, the MLflow plugin for
    ``azureml://`` tracking/registry URIs (see README "Deploying")."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.replace(" ", "").startswith("azureml-mlflow") for req in extras["azureml"])
