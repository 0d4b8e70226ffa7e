"""Cluster benchmarks (issue #18): commands that print numbers, never timed tests.

``python -m benchmarks driver-rss --series 400 --days 400,4000 --lake local|azurite|URL``
    The driver's peak RSS over whole ``mm-platform run``s (ingest → training sets → training
    → promotion → scoring → accuracy) at each data size. What is counted: the peak RSS of the
    Python process running ``mm-platform run`` (``VmHWM`` from ``/proc/<pid>/status``: the
    kernel's own high-water mark of that one process, not a sample). The driver JVM it starts
    (a child: in local mode also the executor) is reported beside it, not in it.

``python -m benchmarks cluster --rows 100000,1000000 --start-cluster --lake azurite``
    The training and scoring benchmarks (``benchmarks.train_score``'s workers) against a Spark
    master and a lake: per size, local mode, then the cluster with one single-core executor
    (``spark.cores.max=1``), then two. Reported per side: wall time, core-s per series (the
    driver's process tree plus, when the workers run on this host, every process under the
    workers: executor JVMs and their Python workers), the driver's peak RSS. ``--master
    spark://…`` uses a running cluster instead (its workers must have one core each for the
    1-vs-2 comparison); ``--lake abfs://…`` a running store (credentials in the environment).
    Per size it also reports each step's core-s per series on the cluster over local mode's
    (``*_core_s_cluster_over_local``: two workers; ``*_core_s_1_worker_over_local``) and two
    workers' speed-up over one; ``--sides local,cluster_2_cores`` runs only those sides.
    ``--core-share 0.5`` caps the driver, Azurite and each worker at half a core (a core per
    role, emulated: see ``CpuCaps``); ``--warm-session`` times training in an application
    whose executors already ran the same path once (a long-running cluster). ``--executors``
    cold|warming|warmed: the session's executor warm-up (``spark.warm_executors``) off; on, as a
    step's own session has it (the default); or done before the timed part, as in ``mm-platform
    run``, whose session starts before ingestion. ``--model-artifacts tasks`` lets the training
    tasks write the models (``storage.model_artifacts``; this host's executors share its folders). ``--repeat N``
    measures every side N times in turn, each round with fresh stores, and reports each
    round's ratios and their median (a shared host's noise moves a single ratio by ±0.1).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import yaml

RUN_DATE = "2025-12-31"
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's documented development account key (public, fixed): not a secret.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="



# -- CPU caps: a host with a core per role, emulated ---------------------------------------------
#
# Two single-core workers against one only measure scale-out when the driver and the lake
# service have cores of their own, as on a cluster (the driver is its own node, the lake a
# cloud service). On a 2-core host they share the workers' cores. ``--core-share F`` caps the
# driver's process tree, Azurite, and each worker's tree (its executors and their Python
# workers) at F of a core each with a CFS quota, so that with F = 0.5 the four roles fit two
# cores: a four-core host at half speed, each role on its own core.


class CpuCaps:
    """One cgroup (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``) per role, each capped at
    ``share`` of a core; ``prefix(role)`` is a command prefix that runs a command in it."""

    PERIOD_US = 100_000

    def __init__(self, share: float, name: str):
        self.share, self.name, self.groups = share, name, {}
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        self.root = Path("/sys/fs/cgroup") if v2.exists() else Path("/sys/fs/cgroup/cpu")
        self.v2 = v2.exists()
        if not (self.root / "cgroup.procs").exists() or not os.access(self.root, os.W_OK):
            raise SystemExit(f"--core-share needs a writable cgroup cpu controller at {self.root} (run as root)")

    def group(self, role: str) -> Path:
        if role not in self.groups:
            g = self.root / f"{self.name}-{role}"
            g.mkdir(exist_ok=True)
            quota = int(self.share * self.PERIOD_US)
            if self.v2:
                (g / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
            else:
                (g / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
                (g / "cpu.cfs_quota_us").write_text(str(quota))
            self.groups[role] = g
        return self.groups[role]

    def prefix(self, role: str) -> list[str]:
        procs = self.group(role) / "cgroup.procs"
        return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh"]

    def close(self) -> None:
        for g in self.groups.values():
            for _ in range(50):  # its processes may still be exiting
                try:
                    g.rmdir()
                    break
                except OSError:
                    time.sleep(0.2)


CAPS: CpuCaps | None = None  # set by ``--core-share`` for the services and workers started here


def capped(role: str, cmd: list) -> list:
    return [*CAPS.prefix(role), *map(str, cmd)] if CAPS else list(cmd)


# -- services --------------------------------------------------------------------------------------


def azurite_binary() -> Path | None:
    folder = Path(os.environ.get("MM_AZURITE_DIR") or Path.home() / ".cache" / "mm_platform" / "azurite")
    binary = folder / "node_modules" / ".bin" / "azurite-blob"
    return binary if binary.exists() else None


AZURITE_PIDS: list[int] = []  # the running Azurite's pid (its CPU is the lake service's)


@contextlib.contextmanager
def azurite(tmp: Path) -> Iterator[str]:
    """Azurite's blob service on 127.0.0.1; yields its connection string (its pid is in
    ``AZURITE_PIDS`` while it runs)."""
    from mm_platform_tests.test_prod_support import free_port, server

    binary = azurite_binary()
    if binary is None:
        raise SystemExit("Azurite is not installed: npm install --prefix ~/.cache/mm_platform/azurite azurite@3 "
                         "(or set MM_AZURITE_DIR)")
    port = free_port()
    cmd = [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(tmp / "azurite-data"),
           "--silent", "--skipApiVersionCheck", "--loose", "--disableProductStyleUrl"]
    with server(capped("azurite", cmd), tmp / "azurite.log", port=port, timeout=60) as proc:
        AZURITE_PIDS.append(proc.pid)
        try:
            yield (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                   f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")
        finally:
            AZURITE_PIDS.remove(proc.pid)


def spark_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of Spark's launch scripts (master, workers, ``mm-platform run``)."""
    from mm_platform_tests.test_prod_support import VENV_BIN, pyspark_home, subprocess_env

    return subprocess_env(
        SPARK_HOME=str(pyspark_home()), SPARK_LOCAL_IP="127.0.0.1", SPARK_LOG_DIR=str(tmp / "logs"),
        SPARK_PID_DIR=str(tmp), SPARK_IDENT_STRING=f"mm-{tmp.name}", PYSPARK_PYTHON=str(VENV_BIN / "python"),
        SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false", **extra,
    )


@contextlib.contextmanager
def standalone_cluster(tmp: Path, workers: int = 2, cores: int = 1, memory: str = "2g",
                       env: dict | None = None) -> Iterator[tuple[str, list[int]]]:
    """A standalone master and ``workers`` workers of ``cores`` cores on 127.0.0.1 (pyspark's
    ``bin/spark-class``); yields the master URL and the workers' pids. Always stopped."""
    from mm_platform_tests.test_prod_support import free_port, pyspark_home, server, tail

    env = env or spark_env(tmp)
    spark_class = str(pyspark_home() / "bin" / "spark-class")
    port = free_port()
    master_url = f"spark://127.0.0.1:{port}"
    cmd = [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
           "--webui-port", str(free_port())]
    log = tmp / "master.log"
    with server(cmd, log, port=port, timeout=180, env=env, cwd=tmp), contextlib.ExitStack() as stack:
        pids = []
        for i in range(1, workers + 1):
            wport = free_port()
            cmd = [spark_class, "org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1",
                   "--port", str(wport), "--webui-port", str(free_port()), "--cores", str(cores), "--memory", memory,
                   "--work-dir", str(tmp / f"work{i}")]
            pids.append(stack.enter_context(server(capped(f"worker{i}", cmd), tmp / f"worker{i}.log", port=wport, timeout=180,
                                                   env=env, cwd=tmp)).pid)
        deadline = time.time() + 120
        while log.read_text(errors="replace").count("Registering worker") < workers:
            if time.time() > deadline:
                raise TimeoutError(f"{workers} workers did not register with {master_url}:\n{tail(log)}")
            time.sleep(1)
        yield master_url, pids


def cluster_conf(master_url: str, cores_max: int, connection_string: str | None = None) -> dict:
    """The ``spark`` section of a dataset config for a standalone cluster on 127.0.0.1."""
    conf = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1", "spark.executor.memory": "1g",
            "spark.executor.cores": "1", "spark.cores.max": str(cores_max)}
    if connection_string:  # the executors open the lake from their own environment
        conf["spark.executorEnv.AZURE_STORAGE_CONNECTION_STRING"] = connection_string
    return {"master": master_url, "shuffle_partitions": 2 * max(cores_max, 2), "conf": conf}


# -- measuring ---------------------------------------------------------------------------------------


def vm_hwm(pid: int) -> int:
    """The kernel's peak RSS of one process (bytes), 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_with_peaks(cmd: list[str], env: dict, cwd: Path, timeout: float) -> dict:
    """Run ``cmd`` (its own process group); its peak RSS and its Java children's, in MB."""
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    root = psutil.Process(proc.pid)
    driver, jvm = 0, 0
    started = time.perf_counter()
    out: list[str] = []
    err: list[str] = []
    import threading

    threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True).start()
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    while proc.poll() is None:
        driver = max(driver, vm_hwm(proc.pid))
        with contextlib.suppress(psutil.Error):
            for child in root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.name() == "java":
                        jvm = max(jvm, vm_hwm(child.pid))
        if time.perf_counter() - started > timeout:
            os.killpg(proc.pid, 9)
            raise RuntimeError(f"{' '.join(map(str, cmd))} timed out after {timeout}s")
        time.sleep(0.2)
    wall = time.perf_counter() - started
    time.sleep(0.3)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{''.join(err)[-4000:]}")
    summary = json.loads("".join(out).strip().splitlines()[-1])
    return {"driver_peak_rss_mb": round(driver / 2**20, 1), "jvm_peak_rss_mb": round(jvm / 2**20, 1),
            "wall_s": round(wall, 1), "summary": summary}


# -- driver-rss -----------------------------------------------------------------------------------------


def _pipeline_config(home: Path, source_url: str, lake_url: str, spark: dict) -> Path:
    from mm_platform.config import StorageConfig

    cfg = {
        "name": "retail",
        "source": {"url": source_url, "table": "sales"},
        "columns": {"date": "date", "target": "units", "keys": ["store", "item"], "regressors": ["price", "promo", "holiday"]},
        "frequency": "daily", "horizon": 14, "holdout": 28, "min_history": 90,
        "spark": spark,
        "storage": {**StorageConfig.embedded(home), "lake_url": lake_url},
    }
    path = home / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cmd_driver_rss(args) -> int:
    from mm_platform.datagen import write_sales
    from mm_platform_tests.test_prod_support import VENV_BIN

    work = Path(args.home or tempfile.mkdtemp(prefix="mm-rss-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    days_list = [int(d) for d in args.days.split(",")]
    side = int(round(args.series ** 0.5))
    stores, items = side, -(-args.series // side)
    lakes = args.lake.split(",")
    report: dict = {"series": stores * items, "days": days_list, "master": args.master, "cores": os.cpu_count(),
                    "load_average_at_start": os.getloadavg(), "runs": []}
    with contextlib.ExitStack() as stack:
        conn = None
        if "azurite" in lakes:
            conn = stack.enter_context(azurite(work))
        env = spark_env(work, MM_HOME=str(work))
        if conn:
            env["AZURE_STORAGE_CONNECTION_STRING"] = conn
        for days in days_list:
            source = f"sqlite:///{work}/source-{days}.db"
            if not (work / f"source-{days}.db").exists():
                rows = write_sales(source, "sales", stores, items, days, seed=args.seed)
            else:
                rows = None
            for lake in lakes:
                home = work / f"{lake.split(':')[0]}-{days}-{uuid.uuid4().hex[:6]}"
                home.mkdir()
                if lake == "local":
                    lake_url = str(home / "lake")
                elif lake == "azurite":
                    lake_url = f"abfs://mm-{uuid.uuid4().hex[:10]}/retail"
                else:
                    lake_url = f"{lake.rstrip('/')}/rss-{uuid.uuid4().hex[:10]}"
                spark = {"master": args.master, "shuffle_partitions": 2}
                if conn and not args.master.startswith("local"):
                    spark["conf"] = {"spark.executorEnv.AZURE_STORAGE_CONNECTION_STRING": conn}
                path = _pipeline_config(home, source, lake_url, spark)
                cmd = [VENV_BIN / "mm-platform", "run", "--config", path, "--run-date", RUN_DATE, "--ephemeral"]
                r = run_with_peaks(cmd, {**env, "MM_HOME": str(home)}, home, args.timeout)
                s = r.pop("summary")
                run = {"lake": lake, "days": days, "source_rows": rows, **r,
                       **{k: s.get(k) for k in ("series", "models_registered", "models_promoted", "prediction_rows", "seconds")}}
                report["runs"].append(run)
                print(json.dumps(run), file=sys.stderr, flush=True)
                if not args.keep:
                    shutil.rmtree(home, ignore_errors=True)
    for lake in lakes:
        runs = [r for r in report["runs"] if r["lake"] == lake]
        if len(runs) >= 2:
            report[f"{lake}_driver_growth_pct"] = round(100 * (runs[-1]["driver_peak_rss_mb"] / runs[0]["driver_peak_rss_mb"] - 1), 1)
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


def add_driver_rss_arguments(p) -> None:
    p.add_argument("--series", type=int, default=400)
    p.add_argument("--days", default="400,4000", help="comma-separated days per series, one run each")
    p.add_argument("--lake", default="local,azurite", help="comma-separated: local, azurite (started here) or a lake URL")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--home", help="working folder (default: a new temp folder); sources are reused from it")
    p.add_argument("--keep", action="store_true", help="keep each run's home")
    p.add_argument("--json", action="store_true")


# -- cluster --------------------------------------------------------------------------------------------


def _variant_home(base: Path, name: str, lake_url: str, spark: dict, horizon: int, model_artifacts: str = "auto") -> Path:
    from benchmarks.train_score import bench_config, create_stores

    home = base / name
    home.mkdir(parents=True, exist_ok=True)
    path = bench_config(home, horizon)
    cfg = yaml.safe_load(path.read_text())
    cfg["storage"]["lake_url"] = lake_url
    cfg["storage"]["model_artifacts"] = model_artifacts
    cfg["spark"] = {**cfg["spark"], **spark}
    path.write_text(yaml.safe_dump(cfg))
    create_stores(home)
    return home


def _warm_up_home(home: Path, lake_url: str, horizon: int, series: int, days: int, seed: int) -> None:
    """``--warm-session``: a small other dataset (its own lake, registry and warehouse) that
    the training worker runs once, untimed, in the same Spark application before the timed
    run, so every executor has started its Python daemon and workers, as on a long-running
    cluster (a Spark Connect server, a Databricks all-purpose cluster)."""
    from benchmarks.train_score import WARM_UP, bench_config, create_stores, generate_into_lake

    warm = home / WARM_UP
    warm.mkdir(exist_ok=True)
    path = bench_config(warm, horizon)
    cfg = yaml.safe_load(path.read_text())
    cfg["storage"]["lake_url"] = f"{lake_url.rstrip('/')}-{home.name}-{WARM_UP}"
    path.write_text(yaml.safe_dump(cfg))
    create_stores(warm)
    generate_into_lake(warm, series, days, seed + 1)


def _measure_variant(home: Path, env: dict, workers: list[int], series: int, warm: bool = False,
                     await_warm_up: bool = False) -> dict:
    from benchmarks.train_score import run_measured

    out = {}
    for role in ("ours-train", "promote-all", "ours-score"):
        extra = ["--warm"] if warm and role == "ours-train" else []  # scoring stays cold
        extra += ["--await-warm-up"] if await_warm_up and role != "promote-all" else []
        m = run_measured(["worker", role, "--home", str(home), *extra], env, also=workers, service=AZURITE_PIDS,
                         prefix=CAPS.prefix("driver") if CAPS else ())
        if role == "promote-all":
            continue
        out[role.removeprefix("ours-")] = {
            "wall_s": m["wall_s"], "cpu_s": m["cpu_s"], "core_s_per_series": round(m["cpu_s"] / series, 5),
            "executors_cpu_s": m.get("also_cpu_s"), "driver_peak_rss_mb": m["driver_peak_rss_mb"],
            # Azurite (the lake service, not the platform's): reported apart, in no core-s above
            **({"lake_service_cpu_s": m["service_cpu_s"]} if "service_cpu_s" in m else {}),
            # the serial part: the driver's Python process and its JVM (in local mode the JVM is
            # also the executor, and Spark's Python workers count under "workers")
            "driver_cpu_s": {k: m["cpu_s_by_process"].get(k) for k in ("driver", "jvm", "workers")},
            **{k: m[k] for k in ("series", "trained", "registered", "failed", "rows", "phases_wall_s", "stages_cpu_s") if k in m},
        }
    return out


def cmd_cluster(args) -> int:
    from benchmarks.train_score import generate_into_lake

    work = Path(args.home or tempfile.mkdtemp(prefix="mm-cluster-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(r) for r in args.rows.split(",")]
    report: dict = {"days": args.days, "cores": os.cpu_count(), "load_average_at_start": os.getloadavg(), "sizes": []}
    global CAPS
    with contextlib.ExitStack() as stack:
        if args.core_share:
            if "local" in args.sides.split(",") or not args.start_cluster:
                raise SystemExit("--core-share caps the roles this command starts: use it with --start-cluster and "
                                 "--sides cluster_1_core,cluster_2_cores")
            CAPS = CpuCaps(args.core_share, f"mm-bench-{os.getpid()}")
            stack.callback(CAPS.close)
            report["core_share"] = args.core_share
        env = spark_env(work, MM_HOME=str(work))
        conn = None
        if args.lake == "azurite":
            conn = stack.enter_context(azurite(work))
            env["AZURE_STORAGE_CONNECTION_STRING"] = conn
        elif args.lake.split("://", 1)[0] in ("abfs", "abfss", "az"):
            conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        os.environ.update({k: v for k, v in env.items() if k.startswith("AZURE_STORAGE_")})  # generate_into_lake
        if args.start_cluster:
            master, workers = stack.enter_context(standalone_cluster(work, workers=2, cores=1, env=env))
        elif args.master:
            master, workers = args.master, _local_workers(args.master)
        else:
            raise SystemExit("give --master spark://host:port or --start-cluster")
        report |= {"master": master, "lake": args.lake, "workers_measured": len(workers), "executors": args.executors,
                   "model_artifacts": args.model_artifacts}
        if args.warm_session:
            report["session"] = (f"training warm: the same path ran once, untimed, on {WARM_UP_SERIES} other series in the "
                                 "same application first; scoring cold")
        sides = args.sides.split(",")
        if unknown := set(sides) - set(SIDES):
            raise SystemExit(f"--sides: unknown {sorted(unknown)}; choose from {', '.join(SIDES)}")
        for rows in sizes:
            series = max(1, rows // args.days)
            base = work / f"rows-{rows}"
            if args.lake == "local":
                lake_url = str(base / "lake")
            elif args.lake == "azurite":
                lake_url = f"abfs://mm-{uuid.uuid4().hex[:10]}/bench"
            else:
                lake_url = f"{args.lake.rstrip('/')}/bench-{rows}-{uuid.uuid4().hex[:8]}"
            warm = {"warm_executors": args.executors != "cold"}
            variants = {"local": {"master": "local[2]", "shuffle_partitions": 8},
                        "cluster_1_core": cluster_conf(master, 1, conn) | warm,
                        "cluster_2_cores": cluster_conf(master, 2, conn) | warm}
            variants = {name: spark for name, spark in variants.items() if name in sides}
            homes = {name: _variant_home(base, name, lake_url, spark, args.horizon, args.model_artifacts)
                     for name, spark in variants.items()}
            t0 = time.perf_counter()
            written = generate_into_lake(next(iter(homes.values())), series, args.days, args.seed)
            entry: dict = {"rows": written, "series": series, "lake_url": lake_url,
                           "generate_s": round(time.perf_counter() - t0, 1)}
            rounds = []
            for r in range(args.repeat):
                # Each round measures every side again, with stores of its own (a registry that
                # already holds the models would make the next run retrain nothing).
                if r:
                    homes = {name: _variant_home(base, f"{name}-{r + 1}", lake_url, spark, args.horizon, args.model_artifacts)
                             for name, spark in variants.items()}
                measured = {}
                for name, home in homes.items():
                    if args.warm_session:
                        _warm_up_home(home, lake_url, args.horizon, WARM_UP_SERIES, args.days, args.seed)
                    measured[name] = _measure_variant(home, {**env, "MM_HOME": str(home)},
                                                      [] if name == "local" else workers, series, warm=args.warm_session,
                                                      await_warm_up=args.executors == "warmed")
                    print(json.dumps({"rows": written, "round": r + 1, name: measured[name]}), file=sys.stderr, flush=True)
                rounds.append(measured | _ratios(measured))
            entry |= rounds[0]
            if args.repeat > 1:
                # Sides run one after the other on a shared host: a ratio is only as good as the
                # machine was steady between its two runs. Each round's ratios, and their median.
                keys = [k for k in rounds[0] if k.startswith(("train_", "score_"))]
                entry["rounds"] = [{k: rnd[k] for k in keys}
                                   | {f"{name}_train_wall_s": rnd[name]["train"]["wall_s"] for name in variants}
                                   | {f"{name}_trained": rnd[name]["train"].get("trained") for name in variants}
                                   for rnd in rounds]
                entry |= {f"{k}_median": statistics.median(rnd[k] for rnd in rounds) for k in keys}
            print(json.dumps({"rows": written, **{k: v for k, v in entry.items() if k.startswith(("train_", "score_"))}}),
                  file=sys.stderr, flush=True)
            report["sizes"].append(entry)
            if not args.keep:
                shutil.rmtree(base, ignore_errors=True)
    rss = [(e["rows"], e["cluster_2_cores"]["train"]["driver_peak_rss_mb"]) for e in report["sizes"] if "cluster_2_cores" in e]
    if len(rss) >= 2:
        report["driver_rss_growth_pct_smallest_to_largest"] = round(100 * (rss[-1][1] / rss[0][1] - 1), 1)
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


SIDES = ("local", "cluster_1_core", "cluster_2_cores")
EXECUTORS = ("cold", "warming", "warmed")
WARM_UP_SERIES = 20  # --warm-session: enough for a task on every executor


def _ratios(entry: dict) -> dict:
    """Per step: core-s per series on the cluster over local mode's, with two workers (the
    issue's goal: ≤ 1.3) and with one, and two workers' speed-up over one (goal: ≥ 1.8), for
    the sides that ran."""
    out = {}
    for step in ("train", "score"):
        local = entry.get("local", {}).get(step)
        one, two = entry.get("cluster_1_core", {}).get(step), entry.get("cluster_2_cores", {}).get(step)
        if local:
            # (the two-worker ratio keeps the key it had before the one-worker ratio was added)
            for key, side in ((f"{step}_core_s_cluster_over_local", two), (f"{step}_core_s_1_worker_over_local", one)):
                if side:
                    out[key] = round(side["core_s_per_series"] / local["core_s_per_series"], 2)
        if one and two:
            out[f"{step}_speedup_2_over_1_worker"] = round(one["wall_s"] / two["wall_s"], 2)
    return out


def _local_workers(master: str) -> list[int]:
    """The pids of this host's standalone workers registered with ``master`` (their processes'
    CPU is the executors'); none for a remote cluster, whose executors are then not measured."""
    pids = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = p.info.get("cmdline") or []
        if "org.apache.spark.deploy.worker.Worker" in cmd and master in cmd:
            pids.append(p.pid)
    return pids


def add_cluster_arguments(p) -> None:
    p.add_argument("--rows", default="100000,1000000", help="comma-separated row counts (series = rows / days)")
    p.add_argument("--days", type=int, default=1000)
    p.add_argument("--master", help="spark://host:port of a running standalone cluster")
    p.add_argument("--start-cluster", action="store_true", help="start a master and two single-core workers on 127.0.0.1")
    p.add_argument("--lake", default="azurite", help="azurite (started here), local, or a lake URL (abfs://…)")
    p.add_argument("--sides", default=",".join(SIDES), help="comma-separated, in this order: " + ", ".join(SIDES))
    p.add_argument("--horizon", type=int, default=28)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--home", help="working folder (default: a new temp folder)")
    p.add_argument("--warm-session", action="store_true", help="time training in a Spark application that has run the "
                   "same path once on a small other dataset (executors warm, as on a long-running cluster)")
    p.add_argument("--executors", choices=EXECUTORS, default="warming", help="cold: no warm-up (spark.warm_executors: "
                   "false); warming: the product's default, the timed part starts once the executors register, their "
                   "warm-up running; warmed: it starts once the warm-up is done, as in mm-platform run, whose session "
                   "starts before ingestion")
    p.add_argument("--model-artifacts", choices=("auto", "tasks", "driver"), default="auto",
                   help="storage.model_artifacts of every side (tasks: this host's executors share the driver's folders)")
    p.add_argument("--core-share", type=float, help="cap the driver, Azurite and each worker at this share of a core "
                   "(cgroups; 0.5 on a 2-core host: a core per role at half speed)")
    p.add_argument("--repeat", type=int, default=1, help="measure every side this many times in turn (1, 2, 1, 2…), "
                   "each round with fresh stores; reports each round's ratios and their median")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", action="store_true")
