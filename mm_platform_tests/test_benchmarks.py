"""The benchmark commands (``python -m benchmarks``, outside the installed package) run end to end on a tiny input (its numbers are not asserted:
benchmarks print numbers, tests do not time anything)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.train_score import process_kind

ROOT = Path(__file__).resolve().parents[1]


def test_spark_launcher_scripts_count_as_the_jvm_and_python_processes_as_workers():
    assert process_kind("java", ["java", "-cp", "x", "org.apache.spark.deploy.SparkSubmit"]) == "jvm"
    assert process_kind("bash", ["bash", "/v/lib/python3.11/site-packages/pyspark/bin/spark-class", "org.apache"]) == "jvm"
    assert process_kind("bash", ["/usr/bin/env", "bash", "/v/pyspark/./bin/spark-submit", "--conf"]) == "jvm"
    assert process_kind("python", ["/v/bin/python", "-m", "mm_platform.spark.daemon", "pyspark.worker"]) == "workers"
    # what the workers start (the baseline's cmdstan fits) counts as the workers'
    assert process_kind("prophet_model.bin", ["prophet_model.bin", "random", "seed=1"]) == "workers"
    assert process_kind("bash", ["bash", "-c", "echo"]) == "workers"


@pytest.mark.slow
@pytest.mark.parametrize("plain", [False, True])
def test_bench_train_reports_both_sides_with_cpu_by_process(tmp_path, plain):
    cmd = [sys.executable, "-m", "benchmarks", "train", "--series", "3", "--days", "200",
           "--baseline-series", "2", "--home", str(tmp_path / "bench"), "--json", *(["--plain-session"] if plain else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["spark_session"].startswith("plain" if plain else "tuned")
    assert report["ours"]["trained"] == 3 and report["ours"]["registered"] == 3
    assert report["baseline"]["series"] == 2
    for side in ("ours", "baseline"):
        by = report[side]["cpu_s_by_process"]
        assert by["worker_processes"] >= 1
        # The split covers the whole measured CPU (sampling may differ by a little).
        assert sum(v for k, v in by.items() if k != "worker_processes") == pytest.approx(report[side]["cpu_s"], abs=0.5)


@pytest.mark.slow
def test_bench_score_in_a_warm_session_scores_the_timed_series(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks", "score", "--series", "3", "--days", "200",
           "--baseline-series", "2", "--warm-session", "--home", str(tmp_path / "bench"), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["session"].startswith("warm")
    # The timed part scored the bench's own series, not (only) the warm-up dataset's.
    assert report["ours"]["series"] == 3 and report["ours"]["rows"] == 3 * report["horizon"]
    assert report["baseline"]["series"] == 2


def test_benchmarks_live_outside_the_installed_package():
    import mm_platform

    package = Path(mm_platform.__file__).parent
    offenders = [str(p.relative_to(package)) for p in package.rglob("*.py")
                 if any(word in p.read_text() for word in ("import psutil", "import httpx", "benchmarks."))]
    assert offenders == []
    from mm_platform.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert not {"bench", "bench-serve"} & set(commands)


@pytest.mark.parametrize("task", ["train", "score", "serve"])
def test_every_benchmark_has_its_command(task):
    done = subprocess.run([sys.executable, "-m", "benchmarks", task, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"usage: python -m benchmarks {task}" in done.stdout
