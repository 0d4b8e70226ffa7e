"""Spark's Python workers fork from mm_platform's preloading daemon (spark.python.daemon.module),
and the session settings that go with it."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from mm_platform.config import SparkConfig
from mm_platform.spark.daemon import PRELOAD
from mm_platform.spark.session import spark_conf


def _worker_and_daemon(batches):
    """In a Spark Python worker: its parent's command line and whether the parent (the daemon)
    has scipy's L-BFGS-B extension mapped, i.e. imported scipy.optimize before forking."""
    import os

    ppid = os.getppid()
    with open(f"/proc/{ppid}/cmdline", "rb") as f:
        cmdline = f.read().replace(b"\0", b" ").decode()
    with open(f"/proc/{ppid}/maps") as f:
        lbfgsb = any("_lbfgsb" in line for line in f)
    import gc
    import sys

    import pyspark

    zip_importers = ",".join(k for k, v in sys.path_importer_cache.items() if type(v).__name__ == "zipimporter")
    for _ in batches:
        yield pd.DataFrame({"daemon": [cmdline], "lbfgsb_in_daemon": [lbfgsb], "frozen": [gc.get_freeze_count()],
                            "pyspark_file": [pyspark.__file__], "zip_importers": [zip_importers]})


def test_workers_fork_from_a_daemon_that_imported_the_forecasting_stack(spark):
    rows = spark.range(0, 2, 1, 2).mapInPandas(
        _worker_and_daemon, "daemon string, lbfgsb_in_daemon boolean, frozen long, pyspark_file string, zip_importers string").collect()
    assert rows
    for row in rows:
        assert "mm_platform.spark.daemon" in row.daemon
        assert row.lbfgsb_in_daemon, "the daemon did not import scipy.optimize before forking its workers"
        # The preloaded objects were frozen out of the collector's reach before forking.
        assert row.frozen > 50_000, row.frozen
        # pyspark came from its installed package (compiled .pyc), not from the pyspark.zip
        # Spark puts first on the workers' PYTHONPATH.
        assert ".zip" not in row.pyspark_file, row.pyspark_file
        # ... and no importer of its zips or jars stays cached (each worker's first task would re-read it).
        assert os.sep + os.path.join("pyspark", "") not in row.zip_importers, row.zip_importers


def test_preload_imports_every_module_and_prints_nothing_on_stdout():
    # The daemon's stdout carries its port number to the JVM: one stray byte breaks the session.
    # Prophet comes without matplotlib and plotly (its plotting helpers), which stay importable.
    code = (
        "from mm_platform.spark.daemon import preload; import sys; failed = preload(); "
        "sys.stderr.write(repr((failed, 'matplotlib' in sys.modules, 'plotly' in sys.modules))); "
        "import prophet.plot; assert prophet.plot.MonthLocator().__class__.__module__ == 'matplotlib.dates'; "
        "fig = prophet.plot.plt.figure(); assert type(fig).__name__ == 'Figure'; "
        "assert prophet.plot.go.Scatter.__module__.startswith('plotly')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr.endswith("([], False, False)"), done.stderr[-500:]
    assert "prophet" in PRELOAD and {"mm_platform.spark.train", "mm_platform.spark.score", "mm_platform.stores.training_sets"} <= set(PRELOAD)


def test_preloading_and_the_c1_jvm_are_settings():
    local = spark_conf(SparkConfig(master="local[2]"))
    assert local["spark.python.daemon.module"] == "mm_platform.spark.daemon"
    assert "-XX:TieredStopAtLevel=1" in local["spark.driver.extraJavaOptions"]
    off = spark_conf(SparkConfig(master="local[2]", preload_worker_modules=False))
    assert "spark.python.daemon.module" not in off
    assert "spark.executor.extraJavaOptions" not in local  # local mode has no executor JVM
    # On a cluster the driver's JVM and the executors' only schedule and pass Arrow batches too.
    cluster = spark_conf(SparkConfig(master="spark://host:7077"))
    assert "-XX:TieredStopAtLevel=1" in cluster["spark.driver.extraJavaOptions"]
    assert "-XX:TieredStopAtLevel=1" in cluster["spark.executor.extraJavaOptions"]
    # A configured value wins.
    own = spark_conf(SparkConfig(master="local[2]", conf={"spark.driver.extraJavaOptions": "-Xss4m"}))
    assert own["spark.driver.extraJavaOptions"] == "-Xss4m"


def test_prophet_plots_still_work_after_the_preload():
    # The preload imports Prophet without matplotlib and plotly; its plots must still work in a task.
    code = """
from mm_platform.spark.daemon import preload
assert preload() == []
import logging; logging.getLogger("cmdstanpy").disabled = True
import matplotlib; matplotlib.use("Agg")
import pandas as pd
import pytest
from prophet import Prophet
from prophet.plot import plot_forecast_component_plotly
history = pd.DataFrame({"ds": pd.date_range("2024-01-01", periods=60), "y": [float(i % 7) for i in range(60)]})
m = Prophet(uncertainty_samples=0).fit(history)
fc = m.predict(m.make_future_dataframe(periods=7))
assert type(m.plot(fc)).__name__ == "Figure"
assert type(m.plot_components(fc)).__name__ == "Figure"
assert type(plot_forecast_component_plotly(m, fc, "trend")).__name__ == "Figure"
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_local_session_maps_the_jvm_class_archive(spark):
    from mm_platform.spark import jvm_archive

    archive = jvm_archive.existing_archive()
    if archive is None:
        pytest.skip("no JVM class archive: `make install` (mm-platform jvm-archive) makes it")
    jvm = spark.sparkContext._jvm
    pid = jvm.java.lang.ProcessHandle.current().pid()
    with open(f"/proc/{pid}/maps") as f:
        assert any(str(archive) in line for line in f), f"the session's JVM did not map {archive}"


def test_the_archive_option_follows_the_setting_and_the_file(tmp_path, monkeypatch):
    from mm_platform.spark import jvm_archive

    monkeypatch.setenv("MM_JVM_ARCHIVE_DIR", str(tmp_path))
    path = jvm_archive.archive_path()
    assert path.parent == tmp_path and path.name.startswith("spark-")
    assert "SharedArchiveFile" not in spark_conf(SparkConfig(master="local[2]"))["spark.driver.extraJavaOptions"]
    path.write_bytes(b"x")
    assert f"-XX:SharedArchiveFile={path}" in spark_conf(SparkConfig(master="local[2]"))["spark.driver.extraJavaOptions"]
    off = spark_conf(SparkConfig(master="local[2]", jvm_class_archive=False))
    assert "SharedArchiveFile" not in off["spark.driver.extraJavaOptions"]
    # a cluster's driver JVM is started here, from the same jars: it maps the archive too, and
    # the executors are given its path (a host without the file ignores it)
    cluster = spark_conf(SparkConfig(master="spark://h:7077"))
    assert f"-XX:SharedArchiveFile={path}" in cluster["spark.driver.extraJavaOptions"]
    assert f"-XX:SharedArchiveFile={path}" in cluster["spark.executor.extraJavaOptions"]
    off = spark_conf(SparkConfig(master="spark://h:7077", jvm_class_archive=False))
    assert "SharedArchiveFile" not in off["spark.executor.extraJavaOptions"]


def test_a_failed_recording_leaves_no_archive(tmp_path, monkeypatch):
    # A java that cannot start Spark: the recording fails, and nothing is put in place (a
    # truncated archive would crash every JVM that maps it).
    from mm_platform.spark import jvm_archive

    fake = tmp_path / "jdk" / "bin"
    fake.mkdir(parents=True)
    (fake / "java").write_text("#!/bin/sh\nexit 1\n")
    (fake / "java").chmod(0o755)
    (tmp_path / "jdk" / "release").write_text('JAVA_VERSION="21.0.1"\n')  # so the Java lookup takes it
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    monkeypatch.setenv("MM_JVM_ARCHIVE_DIR", str(tmp_path / "cache"))
    path = jvm_archive.archive_path()
    with pytest.raises(RuntimeError, match="recording the JVM class archive failed"):
        jvm_archive.build(timeout=120)
    assert not path.exists()
    assert not any((tmp_path / "cache").iterdir())


def test_the_archive_key_follows_the_jars_path_and_mtime(tmp_path, monkeypatch):
    # The JVM ignores an archive recorded with jars at another path or with other mtimes
    # (another checkout's .venv), so such jars must get their own archive.
    from mm_platform.spark import jvm_archive

    monkeypatch.setenv("MM_JVM_ARCHIVE_DIR", str(tmp_path / "cache"))
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "spark-core.jar").write_bytes(b"jar bytes")
    os.utime(tmp_path / "b" / "spark-core.jar", ns=(1_000_000_000, 1_000_000_000))
    os.utime(tmp_path / "a" / "spark-core.jar", ns=(1_000_000_000, 1_000_000_000))
    monkeypatch.setattr(jvm_archive, "_spark_jars", lambda: tmp_path / "a")
    first = jvm_archive.archive_path()
    assert jvm_archive.archive_path() == first
    monkeypatch.setattr(jvm_archive, "_spark_jars", lambda: tmp_path / "b")
    assert jvm_archive.archive_path() != first
    monkeypatch.setattr(jvm_archive, "_spark_jars", lambda: tmp_path / "a")
    os.utime(tmp_path / "a" / "spark-core.jar", ns=(2_000_000_000, 2_000_000_000))
    assert jvm_archive.archive_path() != first


def test_only_the_installed_pyspark_s_own_archives_leave_sys_path(monkeypatch, tmp_path):
    import zipimport

    import pyspark

    from mm_platform.spark.daemon import drop_installed_pyspark_archives

    root = os.path.dirname(pyspark.__file__)
    lib = os.path.join(root, "python", "lib")
    jar = next(os.path.join(root, "jars", f) for f in os.listdir(os.path.join(root, "jars")) if f.startswith("spark-core"))
    own = [os.path.join(lib, "pyspark.zip"), *[os.path.join(lib, f) for f in os.listdir(lib) if f.startswith("py4j-")], jar]
    # A Spark distribution's zip (SPARK_HOME/python/lib) may differ from the installed package: it stays.
    other = str(tmp_path / "spark-3.5" / "python" / "lib" / "pyspark.zip")
    monkeypatch.setattr(sys, "path", [*own, other, *sys.path])
    cache = {**sys.path_importer_cache, jar: zipimport.zipimporter(jar), jar + os.sep + "org": None, other: None}
    monkeypatch.setattr(sys, "path_importer_cache", cache)
    assert sorted(drop_installed_pyspark_archives()) == sorted(own)
    assert other in sys.path and not set(own) & set(sys.path)
    # Their cached importers went too (invalidate_caches would re-read each zip's directory).
    assert other in sys.path_importer_cache
    assert not [k for k in sys.path_importer_cache if k.startswith(lib) or k.startswith(jar)]
