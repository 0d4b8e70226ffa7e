"""A session's executors warm while the driver works, and a stage's tasks fill whole waves
(issue #18: what two workers could not halve)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid

import pandas as pd
import pytest

from mm_platform.spark.session import (
    _warm_task_fn,
    await_executors,
    expected_executors,
    warm_executors,
    whole_waves,
)
from mm_platform_tests.test_prod_azure import azurite  # noqa: F401 - the Azurite fixture
from mm_platform_tests.test_prod_support import ROOT


def test_whole_waves_give_every_core_as_many_tasks():
    assert whole_waves(5, 2, 8) == 6  # not 3 tasks on one core and 2 on the other
    assert whole_waves(4, 3, 4) == 3  # 6 would pass the cap (shuffle partitions, items): fewer, larger tasks
    assert whole_waves(7, 4, 100) == 8
    assert whole_waves(2, 2, 8) == 2 and whole_waves(1, 4, 8) == 1 and whole_waves(6, 2, 6) == 6


def test_task_count_fills_whole_waves(spark):
    from mm_platform.spark.session import task_count

    # local[2], 2 shuffle partitions (the fixture): 3 files' worth of rows still run as 2 tasks
    assert task_count(spark, 3, 6_000_000) == 2
    with_partitions = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "8")
    try:
        assert task_count(spark, 32, 9_000_000) == 6  # 5 by rows, rounded up to whole waves of 2
        assert task_count(spark, 5, 9_000_000) == 4  # only 5 items: rounded down
        assert task_count(spark, 32, 1_000) == 2
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", with_partitions)


def test_expected_executors_from_the_sessions_settings():
    assert expected_executors({"spark.cores.max": "4", "spark.executor.cores": "2"}) == 2
    assert expected_executors({"spark.executor.instances": "12"}) == 12
    assert expected_executors({}) is None


def test_no_warm_up_in_local_mode(spark):
    # local mode: the workers share the driver's cores, and the driver's work is on them
    assert warm_executors(spark, "/tmp/lake") is None
    assert await_executors(spark, timeout=60) == 0  # nothing to wait for: returns at once


def test_the_warm_up_task_opens_the_lake_and_never_fails(tmp_path):
    out = list(_warm_task_fn(str(tmp_path))(iter([pd.DataFrame({"id": [0]})])))
    assert [df["ok"].tolist() for df in out] == [[1]]
    # a lake the executor cannot open: the step's own first task reports it, as one line
    out = list(_warm_task_fn("nosuchscheme://bucket/lake")(iter([pd.DataFrame({"id": [0]})])))
    assert [df["ok"].tolist() for df in out] == [[1]]


def test_the_pipeline_session_resource_carries_the_setting(tmp_path):
    from mm_platform.config import load_config
    from mm_platform.defs.resources import SparkResource, build_resources
    from mm_platform_tests.conftest import write_config

    for warm in (True, False):
        home = tmp_path / str(warm)
        home.mkdir()
        cfg = load_config(write_config(home, spark={"warm_executors": warm}))
        res = build_resources(cfg)["pyspark"]
        assert isinstance(res, SparkResource) and res.warm_executors is warm and res.lake_url == cfg.storage.lake_url


PROBE = textwrap.dedent("""
    import json, sys
    from mm_platform.config import SparkConfig
    from mm_platform.spark.session import get_session, warm_executors

    spark_cfg, lake_url = json.loads(sys.argv[1]), sys.argv[2]
    spark = get_session(SparkConfig(**spark_cfg))
    thread = warm_executors(spark, lake_url)
    assert warm_executors(spark, lake_url) is thread  # once per application
    thread.join(timeout=300)
    jobs = [spark.sparkContext.statusTracker().getJobInfo(j) for j in spark.sparkContext.statusTracker().getJobIdsForGroup()]

    def probe(batches):
        import os, sys
        import pandas as pd
        for _ in batches:
            pass
        # adlfs is not in the preloading daemon: only the warm-up imported it in this worker
        yield pd.DataFrame({"executor": [str(os.getppid())],  # the executor's worker daemon
                            "adlfs": ["adlfs" in sys.modules]})

    rows = spark.range(0, 2, 1, 2).mapInPandas(probe, "executor string, adlfs boolean").collect()
    print(json.dumps({"jobs": [j.status for j in jobs if j], "rows": [r.asDict() for r in rows]}))
    spark.stop()
""")


@pytest.mark.slow
def test_a_cluster_sessions_executors_open_the_lake_before_the_first_step_task(tmp_path, azurite):  # noqa: F811
    from benchmarks.cluster import cluster_conf, spark_env, standalone_cluster

    env = {**spark_env(tmp_path), "AZURE_STORAGE_CONNECTION_STRING": azurite}
    lake = f"abfs://mm-{uuid.uuid4().hex[:12]}/lake"
    with standalone_cluster(tmp_path, workers=2, cores=1, memory="1g", env=env) as (master_url, _):
        spark = cluster_conf(master_url, 2, azurite)
        spark["conf"]["spark.executor.memory"] = "512m"
        done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(spark), lake], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["jobs"] and all(s == "SUCCEEDED" for s in report["jobs"])
    rows = report["rows"]
    # one probe task on each single-core executor, and both had been warmed with the lake's package
    assert len({r["executor"] for r in rows}) == 2, rows
    assert all(r["adlfs"] for r in rows), rows
