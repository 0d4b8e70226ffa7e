"""The issue #18 benchmark commands run end to end on a tiny input (their numbers are not
asserted: benchmarks print numbers, tests do not time anything)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _bench(args: list[str], timeout: float = 1800) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks", *args, "--json"], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cluster_benchmark_starts_its_cluster_and_measures_the_executors(tmp_path):
    report = _bench(["cluster", "--rows", "4000", "--days", "400", "--start-cluster", "--lake", "local",
                     "--home", str(tmp_path / "bench")])
    assert report["workers_measured"] == 2 and report["master"].startswith("spark://127.0.0.1:")
    (size,) = report["sizes"]
    assert size["series"] == 10
    for side in ("local", "cluster_1_core", "cluster_2_cores"):
        assert size[side]["train"]["trained"] == 10 and size[side]["score"]["series"] == 10
        assert size[side]["train"]["driver_peak_rss_mb"] > 0
    # on the cluster the executors' CPU is counted (they are not in the driver's process tree)
    assert size["cluster_2_cores"]["train"]["executors_cpu_s"] > 0
    assert size["local"]["train"]["executors_cpu_s"] is None
    assert size["train_speedup_2_over_1_worker"] > 0 and size["score_core_s_cluster_over_local"] > 0


def test_cluster_benchmark_repeats_each_side_with_fresh_stores(tmp_path):
    report = _bench(["cluster", "--rows", "2000", "--days", "400", "--start-cluster", "--lake", "local",
                     "--sides", "cluster_1_core,cluster_2_cores", "--repeat", "2", "--home", str(tmp_path / "bench")])
    (size,) = report["sizes"]
    assert len(size["rounds"]) == 2
    for rnd in size["rounds"]:  # each round trained every series: its registry started empty
        assert rnd["train_speedup_2_over_1_worker"] > 0 and rnd["cluster_2_cores_train_wall_s"] > 0
        assert rnd["cluster_1_core_trained"] == rnd["cluster_2_cores_trained"] == 5
    walls = [rnd["train_speedup_2_over_1_worker"] for rnd in size["rounds"]]
    assert size["train_speedup_2_over_1_worker_median"] == sum(walls) / 2
    assert size["cluster_1_core"]["train"]["trained"] == 5


def test_driver_rss_benchmark_runs_the_whole_pipeline_at_each_size(tmp_path):
    report = _bench(["driver-rss", "--series", "4", "--days", "150,300", "--lake", "local", "--home", str(tmp_path / "rss")])
    assert [(r["lake"], r["days"]) for r in report["runs"]] == [("local", 150), ("local", 300)]
    for r in report["runs"]:
        assert r["series"] == 4 and r["models_registered"] == 4 and r["prediction_rows"] > 0
        assert r["driver_peak_rss_mb"] > 100 and r["jvm_peak_rss_mb"] > 100
    assert "local_driver_growth_pct" in report
