"""Benchmarks (commands that print numbers; never timed tests).

``python -m benchmarks train|score --series N --days D [--baseline-series M] [--json]`` generates
data into a fresh lake (untimed), then runs, each in its own process tree, mm_platform's real
code path and the standard approach of the Databricks fine-grained demand forecasting
accelerator (plain ``groupBy().applyInPandas()`` with a default Prophet per series), on the
same data and machine. CPU is user+system time of every process in the tree (driver, JVM,
Python workers), sampled with psutil between two markers the worker prints, so Spark start-up
and data generation are outside the timed part.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import psutil
import yaml

from mm_platform.config import StorageConfig

RUN_DATE = date(2025, 12, 31)
ITEMS_PER_STORE = 100
MARK = "@@mark "
REPO_ROOT = str(Path(__file__).resolve().parents[1])  # the worker runs as `python -m benchmarks.train_score`


# -- configuration and data ---------------------------------------------------------------------


WARM_UP = "warm-up"  # folder of the warm-up dataset (--warm-session): as many other series as the timed run


# --plain-session: Spark's own session defaults instead of mm_platform's session tuning
# (the preloading Python daemon, the JVM class archive, the C1-only local JVM).
PLAIN_SESSION = {"preload_worker_modules": False, "jvm_class_archive": False,
                 "conf": {"spark.driver.extraJavaOptions": "-Dlog4j2.level=ERROR"}}


def bench_config(home: Path, horizon: int, algorithm: str = "prophet", shuffle_partitions: int = 8,
                 plain_session: bool = False, candidates: list[str] | None = None,
                 pooled_sample: int | None = None) -> Path:
    auto = {**({"candidates": candidates} if candidates else {}),
            **({"pooled_sample": pooled_sample} if pooled_sample is not None else {})}
    cfg = {
        "name": "bench",
        "source": {"url": f"sqlite:///{home}/source.db", "table": "sales"},
        "columns": {"date": "date", "target": "units", "keys": ["store", "item"], "regressors": ["price", "promo", "holiday"]},
        "frequency": "daily",
        "horizon": horizon,
        "holdout": 28,
        "min_history": 90,
        "algorithm": {"name": algorithm, **({"auto": auto} if auto else {})},
        # Benchmarks promote everything that trained: scoring measures scoring, not the rules.
        "promotion": {"max_wape": None, "beats_seasonal_naive": False, "not_worse_than_production": False},
        "spark": {"master": "local[*]", "shuffle_partitions": shuffle_partitions, **(PLAIN_SESSION if plain_session else {})},
        "storage": StorageConfig.embedded(home),
    }
    path = home / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def generate_into_lake(home: Path, series: int, days: int, seed: int = 42) -> int:
    """Generated sales written straight into the lake's raw table (the ingestion step is not benchmarked)."""
    from mm_platform.config import load_config
    from mm_platform.datagen import iter_sales_chunks
    from mm_platform.stores.lake import Lake

    cfg = load_config(home / "bench.yaml")
    lake = Lake(cfg.storage.lake_url)
    items = min(series, ITEMS_PER_STORE)
    stores = -(-series // items)
    rows, kept, frames = 0, 0, []
    for chunk in iter_sales_chunks(stores, items, days, seed=seed, end_date=RUN_DATE, stores_per_chunk=5):
        # Exactly `series` series: the last store may be partial.
        chunk = chunk[(chunk["store"] - 1) * items + chunk["item"] <= series]
        frames.append(chunk.astype({"promo": "float64", "holiday": "float64"}))
        kept += len(chunk)
        if kept > 5_000_000:
            import pandas as pd

            rows += lake.upsert_raw("sales", pd.concat(frames, ignore_index=True), ["store", "item"], "date")["inserted"]
            frames, kept = [], 0
    if frames:
        import pandas as pd

        rows += lake.upsert_raw("sales", pd.concat(frames, ignore_index=True), ["store", "item"], "date")["inserted"]
    return rows


def create_stores(home: Path) -> None:
    """The training registry's tables, created before anything is timed: a deployment creates
    them once, on its first run, not on every run (≈ 0.6 core-s of MLflow migrations on SQLite)."""
    from mm_platform.config import load_config
    from mm_platform.stores.registry import training_registry

    cfg = load_config(home / "bench.yaml")
    training_registry(cfg).latest_by_series(cfg.name)


# -- measuring a process tree ---------------------------------------------------------------------


def process_kind(name: str, cmdline: list[str]) -> str:
    """``jvm`` for Spark's JVM and the shell scripts that launch it (spark-submit, spark-class),
    else ``workers``: Spark's Python daemon and workers, and what they start (such as the
    baseline's cmdstan processes)."""
    if name == "java" or any(a.endswith(("/spark-submit", "/spark-class")) for a in cmdline):
        return "jvm"
    return "workers"


class TreeMeter:
    """Samples CPU time and RSS of a process and all its descendants."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.root = psutil.Process(pid)
        self.interval = interval
        self.cpu: dict[tuple[int, float], float] = {}  # (pid, create_time) -> last seen user+system
        # (pid, create_time) -> driver | jvm | workers (Spark's Python daemon and workers, and
        # what they start, such as the baseline's cmdstan processes)
        self.kind: dict[tuple[int, float], str] = {}
        self.peak_rss = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = 0
        with self._lock:
            for p in procs:
                try:
                    t = p.cpu_times()
                    key = (p.pid, p.create_time())
                    self.cpu[key] = t.user + t.system
                    # (named on every sample: the JVM's launcher script execs java in the same process)
                    self.kind[key] = "driver" if p.pid == self.root.pid else process_kind(p.name(), p.cmdline())
                    rss += p.memory_info().rss
                except psutil.Error:
                    continue
            self.peak_rss = max(self.peak_rss, rss)

    def total_cpu(self) -> float:
        self.sample()
        with self._lock:
            return sum(self.cpu.values())

    def cpu_by_kind(self) -> dict[str, float]:
        """CPU so far per kind of process: the driver (Python), the JVM, the workers."""
        self.sample()
        out: dict[str, float] = {}
        with self._lock:
            for key, cpu in self.cpu.items():
                out[self.kind.get(key, "other")] = out.get(self.kind.get(key, "other"), 0.0) + cpu
        return out

    def processes(self, kind: str) -> int:
        with self._lock:
            return sum(1 for k in self.kind.values() if k == kind)

    def reset_peak(self) -> None:
        with self._lock:
            self.peak_rss = 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()


def run_measured(args: list[str], env: dict, also: list[int] = (), service: list[int] = (), prefix: list[str] = ()) -> dict:
    """Run a bench worker; measure wall and tree CPU between its start and end markers.
    ``also``: pids of other process trees whose CPU counts too (a standalone cluster's workers
    on this host, under which the executors run), reported apart as ``also_cpu_s``. The
    driver's peak RSS (``driver_peak_rss_mb``) is the worker process's own high-water mark
    over its whole life (``VmHWM``), not the tree's. ``service``: pids of services on this host
    that stand in for a cloud service (Azurite for the lake): their CPU is reported apart as
    ``service_cpu_s`` and counts in nothing else. ``prefix``: a command that execs the worker
    (a CPU cap, ``benchmarks.cluster.CpuCaps``)."""
    from benchmarks.cluster import vm_hwm

    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "benchmarks.train_score", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**env, "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))}
    )
    meter = TreeMeter(proc.pid)
    others = [TreeMeter(pid) for pid in also]
    services = [TreeMeter(pid) for pid in service]
    driver_hwm = 0
    marks: dict[str, tuple[float, float]] = {}
    stages: dict[str, float] = {}  # core-s between the previous marker and each "stage <name>" marker
    result: dict = {}
    stderr_tail: list[str] = []
    kinds_at_start: dict[str, float] = {}
    by_kind: dict[str, float] = {}

    def drain():
        for line in proc.stderr:
            stderr_tail.append(line)
            del stderr_tail[:-40]

    threading.Thread(target=drain, daemon=True).start()
    for line in proc.stdout:
        driver_hwm = max(driver_hwm, vm_hwm(proc.pid))
        if line.startswith(MARK):
            name = line[len(MARK) :].strip()
            if name == "start":
                meter.reset_peak()
                kinds_at_start = meter.cpu_by_kind()
            if name == "end":
                kinds = meter.cpu_by_kind()
                by_kind = {k: round(v - kinds_at_start.get(k, 0.0), 2) for k, v in sorted(kinds.items())}
                by_kind["worker_processes"] = meter.processes("workers")
            now = (time.perf_counter(), meter.total_cpu() + sum(o.total_cpu() for o in others),
                   sum(o.total_cpu() for o in others), sum(o.total_cpu() for o in services))
            if name.startswith("stage ") and marks:
                stages[name.removeprefix("stage ")] = round(now[1] - max(marks.values())[1], 2)
            marks[name] = now
        elif line.startswith("{"):
            result = json.loads(line)
    driver_hwm = max(driver_hwm, vm_hwm(proc.pid))
    proc.wait()
    meter.stop()
    for o in (*others, *services):
        o.stop()
    if proc.returncode != 0 or "start" not in marks or "end" not in marks:
        raise RuntimeError(f"bench worker {' '.join(args[:3])} failed (exit {proc.returncode}):\n{''.join(stderr_tail)}")
    wall = marks["end"][0] - marks["start"][0]
    cpu = marks["end"][1] - marks["start"][1]
    also_cpu = {"also_cpu_s": round(marks["end"][2] - marks["start"][2], 2)} if others else {}
    if services:
        also_cpu["service_cpu_s"] = round(marks["end"][3] - marks["start"][3], 2)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(meter.peak_rss / 2**20, 1),
            "driver_peak_rss_mb": round(driver_hwm / 2**20, 1), **also_cpu,
            **({"stages_cpu_s": stages} if stages else {}), "cpu_s_by_process": by_kind, **result}


# -- workers (run in their own process) ------------------------------------------------------------


def _mark(name: str) -> None:
    print(f"{MARK}{name}", flush=True)


def _quiet():
    for name in ("cmdstanpy", "py4j", "prophet", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore")


def worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("role")
    p.add_argument("--home", required=True)
    p.add_argument("--series", type=int, default=0)  # baseline subset size (0 = all)
    p.add_argument("--changed-fraction", type=float, default=0.05)
    p.add_argument("--warm", action="store_true", help="run the same path once on the warm-up dataset first")
    p.add_argument("--await-warm-up", action="store_true", help="start the timed part once the session's executor "
                   "warm-up is done (mm-platform run: the session starts before ingestion)")
    a = p.parse_args(argv)
    _quiet()
    from mm_platform.config import load_config
    from mm_platform.spark.session import get_session, warm_executors
    from mm_platform.stores.lake import Lake

    home = Path(a.home)
    cfg = load_config(home / "bench.yaml")
    lake = Lake(cfg.storage.lake_url)
    spark = get_session(cfg.spark)
    # As the pipeline's Spark resource does when it starts a session (defs/resources.py).
    warm_up = warm_executors(spark, cfg.storage.lake_url) if cfg.spark.warm_executors else None
    spark.range(4).count()  # the JVM up before the timed part (Python's daemon and workers start inside it)
    _await_executors(spark)
    if a.await_warm_up and warm_up is not None:
        warm_up.join()
    out: dict = {}
    if a.role in ("ours-train", "ours-retrain"):
        import mm_platform.steps.train as train_step
        from mm_platform.steps.train import build_training_sets, train_and_register
        from mm_platform.stores.registry import training_registry
        from mm_platform.stores.warehouse import Warehouse

        if a.role == "ours-retrain":
            _change_series(lake, cfg, a.changed_fraction)  # untimed: the day's new data
        if a.warm:
            # A session that has already run the pipeline once (a long-running cluster that ran
            # yesterday's job): the same code path on as many other series, with their own lake,
            # registry and warehouse.
            wcfg = load_config(home / WARM_UP / "bench.yaml")
            wlake = Lake(wcfg.storage.lake_url)
            build_training_sets(spark, wlake, wcfg, RUN_DATE)
            train_and_register(spark, wlake, wcfg, RUN_DATE, training_registry(wcfg),
                               Warehouse(wcfg.storage.warehouse_url, wcfg.name, wcfg.keys), "warm-up")
        import mm_platform.stores.training_sets as ts

        phases = _timed_phases(train_step, ("train_with_shared", "register_model_set", "_write_report"))
        _timed_phases(ts, ("_raw_schema", "_run_tasks"), phases, prefix="build.")
        _timed_phases(ts.FsspecTrainingSets, ("_commit", "_remove_leftovers", "_manifest_files", "_bucket_files", "train"),
                      phases, prefix="store.")
        import mm_platform.spark.train as spark_train
        from mm_platform.stores.registry import ModelRegistry

        _timed_phases(spark_train, ("train_buckets",), phases, prefix="spark.")
        _timed_phases(ModelRegistry, ("latest_by_series", "register_many"), phases, prefix="registry.")
        _mark("start")
        t0 = time.perf_counter()
        build_training_sets(spark, lake, cfg, RUN_DATE)
        phases["build_training_sets"] = round(time.perf_counter() - t0, 2)
        _mark("stage training_sets")
        outcome = train_and_register(spark, lake, cfg, RUN_DATE, training_registry(cfg),
                                     Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys), "bench")
        _mark("stage model_set")
        _mark("end")
        rep = outcome.report
        out = {"series": len(rep), "trained": int((rep["status"] == "trained").sum()),
               "registered": outcome.registered, "unchanged": outcome.unchanged, "failed": outcome.failed,
               "phases_wall_s": phases}
    elif a.role == "promote-all":
        from mm_platform.steps.promote import promote
        from mm_platform.stores.registry import production_registry, training_registry
        from mm_platform.stores.training_sets import training_set_store
        from mm_platform.stores.warehouse import Warehouse

        _mark("start")
        o = promote(cfg, RUN_DATE, training_registry(cfg), production_registry(cfg, writable=True),
                    Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys), training_set_store(lake, cfg))
        _mark("end")
        out = {"promoted": o.promoted}
    elif a.role == "ours-score":
        from mm_platform.steps.score import score_and_write
        from mm_platform.stores.registry import production_registry
        from mm_platform.stores.warehouse import Warehouse

        if a.warm:
            # A session that has already scored once (a long-running cluster that ran
            # yesterday's job): the same code path on the warm-up dataset's other series.
            wcfg = load_config(home / WARM_UP / "bench.yaml")
            score_and_write(spark, Lake(wcfg.storage.lake_url), wcfg, RUN_DATE, production_registry(wcfg),
                            Warehouse(wcfg.storage.warehouse_url, wcfg.name, wcfg.keys), "warm-up")
        _mark("start")
        o = score_and_write(spark, lake, cfg, RUN_DATE, production_registry(cfg),
                            Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys), "bench")
        _mark("end")
        out = {"series": o.scored, "rows": o.rows_written, "failed": o.failed}
    elif a.role in ("baseline-train", "baseline-fit-models", "baseline-score"):
        out = _baseline(spark, lake, cfg, a.role, a.series, home, warm_home=home / WARM_UP if a.warm else None)
    else:
        raise SystemExit(f"unknown bench role {a.role}")
    print(json.dumps(out), flush=True)
    spark.stop()


def _await_executors(spark) -> None:
    """On a cluster: every executor the session asked for registered before the timed part, as
    the JVM is (a first stage started with one of two executors would run its tasks on it alone)."""
    from mm_platform.spark.session import await_executors, expected_executors

    if expected_executors(spark.sparkContext.getConf()):
        await_executors(spark)


def _timed_phases(module, names: tuple[str, ...], phases: dict | None = None, prefix: str = "") -> dict[str, float]:
    """Wrap ``module``'s (or a class's) functions ``names`` so their wall seconds add up in
    ``phases`` (returned): the driver's phases of a step, to see which part of its wall time
    is serial. ``MM_BENCH_PROFILE=<name>`` also writes a cProfile of that function's calls
    to ``MM_BENCH_PROFILE_OUT`` (default /tmp/mm-bench.prof)."""
    phases = {} if phases is None else phases

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            prof = None
            if os.environ.get("MM_BENCH_PROFILE") == name:
                import cProfile
                prof = cProfile.Profile()
                prof.enable()
            try:
                return fn(*args, **kwargs)
            finally:
                if prof is not None:
                    prof.disable()
                    prof.dump_stats(os.environ.get("MM_BENCH_PROFILE_OUT", "/tmp/mm-bench.prof"))
                phases[prefix + name] = round(phases.get(prefix + name, 0.0) + time.perf_counter() - t0, 2)
        return wrapper

    for name in names:
        setattr(module, name, timed(name, getattr(module, name)))
    return phases


def _change_series(lake, cfg, fraction: float) -> int:
    """Correct the last day's value of a fraction of the series in the lake (as a late
    correction from the source would), so their fingerprints change."""
    import pandas as pd
    import pyarrow.parquet as pq

    manifest = lake.read_manifest("sales")
    last_month = max(manifest["files"])
    rows = pq.read_table(lake.path("raw", "sales", manifest["files"][last_month]), filesystem=lake.fs, partitioning=None).to_pandas()
    last = rows[rows["date"] == rows["date"].max()]
    series = last[["store", "item"]].drop_duplicates()
    changed = series.sample(frac=fraction, random_state=0)
    upd = last.merge(changed, on=["store", "item"])
    upd = upd.assign(units=upd["units"] + 1)
    lake.upsert_raw("sales", pd.DataFrame(upd), ["store", "item"], "date")
    return len(changed)


def _subset(spark, lake, cfg, n: int):
    from pyspark.sql import functions as F

    files = [lake.uri("raw", "sales", rel) for rel in sorted(lake.read_manifest("sales")["files"].values())]
    df = spark.read.parquet(*files)
    if n:
        df = df.where((F.col("store") - 1) * min(n, ITEMS_PER_STORE) + F.col("item") <= n)
    return df.select("store", "item", F.col("date").alias("ds"), F.col("units").alias("y"))


def _baseline(spark, lake, cfg, role: str, n: int, home: Path, warm_home: Path | None = None) -> dict:
    """The Databricks accelerator's approach: a default Prophet per series, fitted and
    predicted with its default uncertainty intervals, no registry, no metrics.
    ``warm_home``: first run the same job untimed on as many series of that bench home's data
    (a warm session)."""
    from pyspark.sql import types as T

    horizon = cfg.horizon
    forecast_schema = T.StructType([
        T.StructField("store", T.LongType()), T.StructField("item", T.LongType()),
        T.StructField("ds", T.TimestampNTZType()), T.StructField("yhat", T.DoubleType()),
        T.StructField("yhat_lower", T.DoubleType()), T.StructField("yhat_upper", T.DoubleType()),
    ])

    def forecast_store_item(history):
        import logging

        logging.getLogger("cmdstanpy").setLevel(logging.ERROR)
        from prophet import Prophet

        model = Prophet()
        model.fit(history[["ds", "y"]])
        future = model.make_future_dataframe(periods=horizon, freq="D", include_history=True)
        fc = model.predict(future)[["ds", "yhat", "yhat_lower", "yhat_upper"]].tail(horizon)
        fc["store"] = history["store"].iloc[0]
        fc["item"] = history["item"].iloc[0]
        return fc[["store", "item", "ds", "yhat", "yhat_lower", "yhat_upper"]]

    def fit_to_json(history):
        import logging

        logging.getLogger("cmdstanpy").setLevel(logging.ERROR)
        import pandas as pd
        from prophet import Prophet
        from prophet.serialize import model_to_json

        model = Prophet().fit(history[["ds", "y"]])
        return pd.DataFrame({"store": [history["store"].iloc[0]], "item": [history["item"].iloc[0]], "model": [model_to_json(model)]})

    def predict_from_json(models):
        import pandas as pd
        from prophet.serialize import model_from_json

        out = []
        for row in models.itertuples(index=False):
            model = model_from_json(row.model)
            future = model.make_future_dataframe(periods=horizon, freq="D", include_history=False)
            fc = model.predict(future)[["ds", "yhat", "yhat_lower", "yhat_upper"]]
            fc["store"], fc["item"] = row.store, row.item
            out.append(fc)
        return pd.concat(out)[["store", "item", "ds", "yhat", "yhat_lower", "yhat_upper"]]

    data = _subset(spark, lake, cfg, n)
    models_path = str(home / "baseline_models")
    if role == "baseline-train":
        if warm_home is not None:
            from mm_platform.config import load_config
            from mm_platform.stores.lake import Lake

            warm_lake = Lake(load_config(warm_home / "bench.yaml").storage.lake_url)
            _subset(spark, warm_lake, cfg, n).groupBy("store", "item").applyInPandas(
                forecast_store_item, forecast_schema).write.format("noop").mode("overwrite").save()
        _mark("start")
        data.groupBy("store", "item").applyInPandas(forecast_store_item, forecast_schema).write.format("noop").mode("overwrite").save()
        _mark("end")
        return {"series": data.select("store", "item").distinct().count()}
    if role == "baseline-fit-models":
        schema = T.StructType([T.StructField("store", T.LongType()), T.StructField("item", T.LongType()), T.StructField("model", T.StringType())])
        _mark("start")
        data.groupBy("store", "item").applyInPandas(fit_to_json, schema).write.mode("overwrite").parquet(models_path)
        _mark("end")
        return {}
    def score(path: str) -> None:
        spark.read.parquet(path).repartition(max(2, os.cpu_count() or 2)).groupBy("store", "item").applyInPandas(
            predict_from_json, forecast_schema).write.format("noop").mode("overwrite").save()

    models = spark.read.parquet(models_path)
    if warm_home is not None:
        score(str(warm_home / "baseline_models"))
    _mark("start")
    score(models_path)
    _mark("end")
    return {"series": models.count()}


# -- the command ----------------------------------------------------------------------------------------


def _side(measure: dict, series: int) -> dict:
    per = measure["cpu_s"] / series if series else float("nan")
    return {**measure, "series_measured": series, "core_s_per_series": round(per, 5)}


def cmd_bench(args) -> int:
    from tqdm import tqdm

    home = Path(args.home or tempfile.mkdtemp(prefix="mm-bench-")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MM_HOME": str(home)}
    bench_config(home, args.horizon, args.algorithm, plain_session=args.plain_session, candidates=_candidates(args),
                 pooled_sample=args.pooled_sample)
    baseline_n = args.baseline_series or args.series
    steps = ["generate", "ours", "baseline"] + (["daily"] if args.changed_fraction else []) if args.task == "train" else ["generate", "setup", "ours", "baseline-setup", "baseline"]
    bar = tqdm(total=len(steps), disable=args.json or not sys.stderr.isatty(), desc=f"bench {args.task}")

    def step(name):
        bar.set_postfix_str(name)

    step("generate")
    t0 = time.perf_counter()
    rows = generate_into_lake(home, args.series, args.days, args.seed)
    gen_s = time.perf_counter() - t0
    bar.update()
    report: dict = {"task": args.task, "series": args.series, "days": args.days, "rows": rows, "horizon": args.horizon,
                    "cores": os.cpu_count(), "generate_s": round(gen_s, 1), "home": str(home)}
    if args.plain_session:
        report["spark_session"] = "plain: Spark's defaults"
    else:
        from mm_platform.spark.jvm_archive import existing_archive

        archive = existing_archive()
        report["spark_session"] = "tuned: preloading Python daemon, C1 JVM, " + (
            f"class archive {archive}" if archive else "no class archive (run mm-platform jvm-archive)")
    worker_args = ["--home", str(home)]
    create_stores(home)
    if args.warm_session:
        (home / WARM_UP).mkdir(exist_ok=True)
        bench_config(home / WARM_UP, args.horizon, args.algorithm, plain_session=args.plain_session,
                     candidates=_candidates(args),
                 pooled_sample=args.pooled_sample)
        generate_into_lake(home / WARM_UP, args.series, args.days, args.seed + 1)
        create_stores(home / WARM_UP)
        worker_args.append("--warm")
        report["session"] = f"warm: the same path ran once, untimed, on {args.series} other series first"
    else:
        report["session"] = "cold: a new Spark session per side (only the JVM started before timing)"
    if args.task == "train":
        step("ours")
        ours = _side(run_measured(["worker", "ours-train", *worker_args], env), args.series)
        bar.update()
        if args.changed_fraction:
            # The daily case: the same model set retrained after a fraction of series changed.
            report["daily_retrain"] = _side(
                run_measured(["worker", "ours-retrain", *worker_args, "--changed-fraction", str(args.changed_fraction)], env),
                args.series,
            ) | {"changed_fraction": args.changed_fraction}
        step("baseline")
        base = _side(run_measured(["worker", "baseline-train", *worker_args, "--series", str(baseline_n)], env), baseline_n)
        bar.update()
    else:
        step("setup")
        # Set-up (untimed): train and promote every series, and the warm-up dataset's too.
        setup_homes = [home] + ([home / WARM_UP] if args.warm_session else [])
        for h in setup_homes:
            trained = run_measured(["worker", "ours-train", "--home", str(h)], env)
            promoted = run_measured(["worker", "promote-all", "--home", str(h)], env)
            if h == home:
                report["setup_train"], report["setup_promote"] = trained, promoted
        bar.update()
        step("ours")
        ours = _side(run_measured(["worker", "ours-score", *worker_args], env), args.series)
        bar.update()
        step("baseline-setup")
        for h in setup_homes:
            run_measured(["worker", "baseline-fit-models", "--home", str(h), "--series", str(baseline_n)], env)
        bar.update()
        step("baseline")
        base = _side(run_measured(["worker", "baseline-score", *worker_args, "--series", str(baseline_n)], env), baseline_n)
        bar.update()
    bar.close()
    report["ours"] = ours
    report["baseline"] = base
    report["ratio_baseline_over_ours"] = round(base["core_s_per_series"] / ours["core_s_per_series"], 2) if ours["core_s_per_series"] else None
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=2))
    return 0


def _candidates(args) -> list[str] | None:
    c = getattr(args, "candidates", None)
    return [f.strip() for f in c.split(",") if f.strip()] if c else None


def add_arguments(b) -> None:
    """The options of ``python -m benchmarks train|score``."""
    b.add_argument("--series", type=int, default=1000)
    b.add_argument("--days", type=int, default=1000)
    b.add_argument("--baseline-series", type=int, default=0, help="run the baseline on this many of the series")
    b.add_argument("--horizon", type=int, default=28)
    b.add_argument("--algorithm", default="prophet",
                   help="ours: prophet (in-process fit), prophet_library, global_lgbm, auto, or any family")
    b.add_argument("--candidates", help="with --algorithm auto: comma-separated candidate families "
                   "(e.g. add global_lgbm to the default ones; default: the config's)")
    b.add_argument("--pooled-sample", type=int, help="with --algorithm auto: algorithm.auto.pooled_sample "
                   "(0: each series chooses alone; default: the config's)")
    b.add_argument("--seed", type=int, default=42)
    b.add_argument("--changed-fraction", type=float, default=0.0,
                   help="train: also time a daily retrain after this share of series changed (e.g. 0.05)")
    b.add_argument("--warm-session", action="store_true",
                   help="time a second run in a warm Spark session (as on a long-running cluster): "
                        "each side first runs the same job once, untimed, on as many other series")
    b.add_argument("--plain-session", action="store_true",
                   help="both sides on Spark's own session defaults: no preloading Python daemon, no JVM class "
                        "archive, C2 JIT (what mm_platform's session tuning buys)")
    b.add_argument("--home", help="working folder (default: a new temp folder)")
    b.add_argument("--json", action="store_true", help="one JSON line, no progress bar")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2:])
