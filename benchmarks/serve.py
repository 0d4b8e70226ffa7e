"""``python -m benchmarks serve``: the real-time service under load, on 127.0.0.1 only.

1. Builds N production models (once; reused from ``--workdir``): a few series generated
   with ``datagen`` and trained in-process with ``train_series``, their artifacts copied to
   N series keys, registered into a production registry with promotion's tags and the
   ``production`` alias.
2. Starts ``mm-platform serve`` in its own process (uvicorn, one worker).
3. Runs the load generator in another process (async httpx, bounded concurrency):
   default mode: every model requested once (cold loads), then ``--requests`` requests with
   Zipf-distributed series popularity (warm); ``--cycle``: requests cycle through all
   models with a cache far smaller than the model count, so every request loads a model
   and evicts another, to show the service's memory stays bounded.
4. Samples the service's RSS and CPU while it runs and prints one result.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import yaml

from mm_platform.config import StorageConfig

BUILD_FORMAT = 1
REPO_ROOT = str(Path(__file__).resolve().parents[1])
DATASET = "bench"
TARGETS = {"warm_p99_ms": 15.0, "cold_p99_ms": 100.0, "requests_per_s": 1000.0, "cycle_peak_rss_mb": 1024.0}


def _log(msg: str) -> None:
    print(f"[bench-serve] {msg}", file=sys.stderr, flush=True)


def series_keys(i: int) -> dict[str, int]:
    return {"store": i // 100 + 1, "item": i % 100 + 1}


def bench_config(home: Path) -> dict:
    return {
        "name": DATASET,
        "source": {"url": f"sqlite:///{home}/source.db", "table": "sales"},
        "columns": {"date": "date", "target": "units", "keys": ["store", "item"], "regressors": ["price", "promo", "holiday"]},
        "frequency": "daily",
        "horizon": 28,
        "holdout": 28,
        "min_history": 90,
        "storage": StorageConfig.embedded(home),
    }


def train_base_artifacts(family: str, count: int = 20, seed: int = 42) -> list[tuple[bytes, str, dict]]:
    """A few really trained models (compact JSON, algorithm, metrics) to copy across series."""
    from mm_platform.datagen import generate_sales
    from mm_platform.forecasting.series import TRAINED, TrainSpec, train_series

    items = max(1, count // 2)
    df = generate_sales(2, items, 730, seed=seed).rename(columns={"date": "ds", "units": "y"})
    spec = TrainSpec(family, "D", 7, 28, 90, ("price", "promo", "holiday"))
    out = []
    for _, g in df.groupby(["store", "item"]):
        r = train_series(g, spec)
        if r.status == TRAINED:
            out.append((r.model_json().encode(), family, r.metrics))
    if not out:
        raise RuntimeError("no base model could be trained")
    return out


def build_registry(workdir: Path, models: int, family: str, fresh: bool) -> tuple[Path, float]:
    """A production registry with ``models`` models (reused when already built)."""
    from benchmarks.seeding import fast_sqlite_writes, production_tags, register_production
    from mm_platform.config import load_config
    from mm_platform.stores.registry import production_registry

    home = workdir / f"{family}-{models}-v{BUILD_FORMAT}"
    ready = home / "READY"
    config_path = home / "config.yaml"
    if ready.exists() and not fresh:
        _log(f"reusing the registry in {home}")
        return config_path, 0.0
    started = time.perf_counter()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    config_path.write_text(yaml.safe_dump(bench_config(home)))
    cfg = load_config(config_path)
    _log(f"training base {family} models")
    base = train_base_artifacts(family)
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        _log(f"registered {done[0]}/{models} production models")

    def entries():
        for i in range(models):
            data, algorithm, metrics = base[i % len(base)]
            keys = series_keys(i)
            yield keys, data, production_tags(DATASET, keys, algorithm, metrics)

    with fast_sqlite_writes():
        register_production(production_registry(cfg, writable=True), DATASET, entries(), chunk=1000, progress=progress)
    ready.write_text(json.dumps({"models": models, "family": family}))
    return config_path, time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessSampler(threading.Thread):
    """Samples a process's RSS every ``interval`` seconds (peak and a timeline)."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.timeline: list[tuple[float, int]] = []
        self._halt = threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        last_mark = -1.0
        while not self._halt.is_set():
            try:
                rss = self.proc.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            now = time.perf_counter() - self.t0
            if now - last_mark >= 1.0:
                self.timeline.append((round(now, 1), rss))
                last_mark = now
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def cpu_seconds(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system


def scrape(url: str, token: str) -> dict[str, float]:
    """The service's /metrics as {name: value summed over labels}."""
    text = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {token}"}, timeout=30).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        labels = name_labels[len(name):]
        key = name + ('{reason="' + labels.split('reason="', 1)[1].split('"', 1)[0] + '"}' if 'reason="' in labels else "")
        out[key] = out.get(key, 0.0) + float(value)
    return out


def start_server(config_path: Path, port: int, token: str, args, cache_models: int, cache_mb: float) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "mm_platform.cli", "serve", "--config", str(config_path), "--host", "127.0.0.1",
        "--port", str(port), "--cache-models", str(cache_models), "--cache-mb", str(cache_mb),
        "--version-ttl", str(args.version_ttl), "--load-workers", str(args.load_workers),
    ]
    env = {**os.environ, "MM_API_TOKEN": token}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the service did not start within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def request_bodies(models: int, horizon: int, seed: int = 7) -> list[str]:
    """One request per series; every fourth also sends future prices."""
    rng = np.random.default_rng(seed)
    bodies = []
    for i in range(models):
        body: dict = {"keys": series_keys(i), "horizon": horizon}
        if i % 4 == 0:
            body["regressors"] = {"price": np.round(rng.uniform(1, 20, horizon), 2).tolist()}
        bodies.append(json.dumps(body, separators=(",", ":")))
    return bodies


def zipf_order(models: int, requests: int, s: float, seed: int = 11) -> np.ndarray:
    """Requests' series: popularity rank r has probability ~ r^-s; ranks are shuffled over series."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, models + 1) ** s
    p /= p.sum()
    series_of_rank = rng.permutation(models)
    return series_of_rank[rng.choice(models, size=requests, p=p)]


def run_loadgen(spec: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
        path = f.name
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))}
        out = subprocess.run([sys.executable, "-m", "benchmarks.loadgen", path], capture_output=True, text=True, check=False, env=env)
    finally:
        os.unlink(path)
    if out.returncode != 0:
        raise RuntimeError(f"the load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


WRK_SCRIPT = """
local bodies = {%(bodies)s}
local order = {%(order)s}
local token = "%(token)s"
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  pos = id * 7919
  seen = 0
  statuses = {}
  not_hit = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. token
end

function request()
  pos = pos + 1
  return wrk.format(nil, "/v1/forecast", nil, bodies[order[(pos %% #order) + 1]])
end

function response(status, headers, body)
  seen = seen + 1
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if headers["x-model-cache"] ~= "hit" then not_hit = not_hit + 1 end
end

function done(summary, latency, requests)
  local parts = {}
  local total = {}
  local misses = 0
  for _, t in ipairs(threads) do
    local st = t:get("statuses")
    for k, v in pairs(st) do total[k] = (total[k] or 0) + v end
    misses = misses + t:get("not_hit")
  end
  for k, v in pairs(total) do table.insert(parts, string.format('"%%s":%%d', k, v)) end
  io.write(string.format('WRK_JSON {"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p95_us":%%d,"p99_us":%%d,' ..
    '"errors":{"connect":%%d,"read":%%d,"write":%%d,"timeout":%%d},"not_hit":%%d,"status":{%%s}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout, misses,
    table.concat(parts, ",")))
end
"""


def run_wrk(url: str, token: str, bodies: list[str], order: np.ndarray, concurrency: int, duration: float) -> dict:
    """The warm phase with wrk (C, one thread) for ``duration`` seconds, cycling through
    ``order``: far less client CPU per request than httpx, so a 2-core machine measures the
    service rather than the client."""
    script = WRK_SCRIPT % {
        "bodies": ",".join(f"[==[{b}]==]" for b in bodies),
        "order": ",".join(str(int(i) + 1) for i in order),
        "token": token,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        cmd = ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{duration:g}s", "--timeout", "30s", "-s", path, url]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child reaped meanwhile
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        stdout, stderr = proc.stdout, proc.stderr
    finally:
        os.unlink(path)
    line = next((ln for ln in stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stderr[-2000:]} {stdout[-2000:]}")
    w = json.loads(line.removeprefix("WRK_JSON "))
    wall = w["duration_us"] / 1e6
    status = dict(w["status"])
    failures = sum(w["errors"].values())
    if failures:
        status["connection_error"] = failures
    return {
        "requests": w["requests"],
        "wall_s": round(wall, 3),
        "requests_per_s": round(w["requests"] / wall, 1),
        "status": status,
        "hit": {"p50": w["p50_us"] / 1000, "p95": w["p95_us"] / 1000, "p99": w["p99_us"] / 1000, "n": w["requests"] - w["not_hit"]},
        "not_hit": w["not_hit"],
        "loadgen_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "loadgen_wall_s": wall,
    }


# wrk is a Debian/Ubuntu package; `make bench-tools` installs it (as root) or prints this.
WRK_INSTALL = "make bench-tools, or: sudo apt-get install -y wrk"
NO_WRK = (f"wrk is not on PATH ({WRK_INSTALL}): the warm phase falls back to the Python load generator, "
          "which is itself the bottleneck; requests_per_s and the warm latencies understate the service")


def run_bench(args) -> dict:
    from mm_platform.config import mm_home

    cycle = bool(args.cycle)
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "httpx"
        if loadgen == "httpx" and not cycle:
            # The Python client saturates a core well below the service's rate: its numbers are a floor.
            print(f"WARNING: {NO_WRK}", file=sys.stderr)
    elif loadgen == "wrk" and not shutil.which("wrk"):
        raise SystemExit(f"benchmarks serve: --loadgen wrk needs wrk on PATH ({WRK_INSTALL})")
    models = args.models or (10000 if cycle else 1000)
    cache_models = args.cache_models or (1000 if cycle else 2000)
    cache_mb = args.cache_mb or (8.0 if cycle else 256.0)
    workdir = Path(args.workdir) if args.workdir else mm_home() / "bench-serve"
    cpus = os.cpu_count() or 1
    config_path, build_s = build_registry(workdir, models, args.family, args.fresh)

    token = secrets.token_hex(16)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    server = start_server(config_path, port, token, args, cache_models, cache_mb)
    start_s = time.perf_counter() - t0
    sampler = ProcessSampler(server.pid)
    sampler.start()
    load_before = os.getloadavg()
    try:
        before = scrape(url, token)
        wall0 = time.perf_counter()
        rng = np.random.default_rng(3)
        base = {"url": url, "token": token, "concurrency": args.concurrency, "bodies": request_bodies(models, args.horizon)}
        if cycle:
            total = args.requests or models
            order = np.concatenate([rng.permutation(models) for _ in range(-(-total // models))])[:total]
            phases = [{"name": "cycle", "order": order.tolist()}]
        else:
            phases = [
                {"name": "cold", "order": rng.permutation(models).tolist(), "concurrency": args.cold_concurrency},
                {"name": "warm", "order": zipf_order(models, args.requests or 20000, args.zipf).tolist()},
            ]
        gen = {}
        for phase in phases:
            use_wrk = phase["name"] == "warm" and loadgen == "wrk"
            what = f"{args.duration:g} s with wrk" if use_wrk else f"{len(phase['order'])} requests with httpx"
            _log(f"{phase['name']} phase over {models} models: {what}")
            cpu0 = sampler.cpu_seconds()
            if use_wrk:
                ph = run_wrk(url, token, base["bodies"], np.asarray(phase["order"]), args.concurrency, args.duration)
            else:
                out = run_loadgen({**base, "phases": [phase]})
                ph = out["phases"][phase["name"]]
                ph["loadgen_cpu_s"], ph["loadgen_wall_s"] = out["cpu_s"], out["wall_s"]
            ph["server_cpu_s"] = sampler.cpu_seconds() - cpu0
            gen[phase["name"]] = ph
        wall = time.perf_counter() - wall0
        after = scrape(url, token)
    finally:
        try:
            sampler.stop()
        finally:
            stop_server(server)
    load_after = os.getloadavg()

    def delta(name: str) -> int:
        return int(after.get(name, 0) - before.get(name, 0))

    status: dict[str, int] = {}
    for ph in gen.values():
        for code, n in ph["status"].items():
            status[code] = status.get(code, 0) + n
    errors_5xx = sum(n for code, n in status.items() if code.startswith("5") or code == "connection_error")
    main = gen["cycle" if cycle else "warm"]  # the phase whose throughput and CPU shares are reported
    result = {
        "mode": "cycle" if cycle else "zipf",
        "models": models,
        "family": args.family,
        "concurrency": args.concurrency,
        "cache_models": cache_models,
        "cache_mb": cache_mb,
        "version_ttl_s": args.version_ttl,
        "cpus": cpus,
        "warm_loadgen": None if cycle else loadgen,
    }
    if not cycle and loadgen == "httpx" and args.loadgen == "auto":
        result["warning"] = NO_WRK
    if cycle:
        ph = gen["cycle"]
        rss_mb = [(t, round(r / 2**20, 1)) for t, r in sampler.timeline]
        result.update({
            "requests": ph["requests"],
            "requests_per_s": ph["requests_per_s"],
            "load_p50_ms": ph["miss"]["p50"],
            "load_p99_ms": ph["miss"]["p99"],
        })
    else:
        cold, warm = gen["cold"], gen["warm"]
        result.update({
            "requests": warm["requests"],
            "zipf_s": args.zipf,
            "warm_p50_ms": warm["hit"]["p50"],
            "warm_p95_ms": warm["hit"]["p95"],
            "warm_p99_ms": warm["hit"]["p99"],
            "warm_hits": warm["hit"]["n"],
            "requests_per_s": warm["requests_per_s"],
            "cold_p50_ms": cold["miss"]["p50"],
            "cold_p99_ms": cold["miss"]["p99"],
            "cold_loads": cold["miss"]["n"],
            "cold_concurrency": args.cold_concurrency,
        })
    result.update({
        "status_counts": status,
        "errors_5xx": errors_5xx,
        "server_peak_rss_mb": round(sampler.peak / 2**20, 1),
        "server_cpu_share": round(main["server_cpu_s"] / main["wall_s"] / cpus, 3),
        "server_cpu_ms_per_request": round(main["server_cpu_s"] / main["requests"] * 1000, 3),
        "loadgen_cpu_share": round(main["loadgen_cpu_s"] / main["loadgen_wall_s"] / cpus, 3),
        "loadgen_cpu_ms_per_request": round(main["loadgen_cpu_s"] / main["requests"] * 1000, 3),
        "machine_loadavg_1m": [round(load_before[0], 2), round(load_after[0], 2)],
        "models_loaded": delta("mm_serving_model_loads_total"),
        "evictions": {k.split('"')[1]: int(v - before.get(k, 0)) for k, v in after.items() if k.startswith("mm_serving_cache_evictions_total{")},
        "version_checks": delta("mm_serving_version_checks_total"),
        "models_in_cache": int(after.get("mm_serving_models_in_cache", 0)),
        "cache_mb_used": round(after.get("mm_serving_cache_bytes", 0) / 2**20, 2),
        "registry_build_s": round(build_s, 1),
        "server_start_s": round(start_s, 2),
        "run_s": round(wall, 1),
    })
    if cycle:
        result["rss_mb_timeline"] = rss_mb[:: max(1, len(rss_mb) // 20)]
        met = {"peak_rss_le_1gb": result["server_peak_rss_mb"] <= TARGETS["cycle_peak_rss_mb"], "zero_5xx": errors_5xx == 0}
    else:
        met = {
            "warm_p99_le_15ms": result["warm_p99_ms"] is not None and result["warm_p99_ms"] <= TARGETS["warm_p99_ms"],
            "cold_p99_le_100ms": result["cold_p99_ms"] is not None and result["cold_p99_ms"] <= TARGETS["cold_p99_ms"],
            "ge_1000_req_per_s": (result["requests_per_s"] or 0) >= TARGETS["requests_per_s"],
            "zero_5xx": errors_5xx == 0,
        }
    result["targets_met"] = met
    result["ok"] = all(met.values())
    return result


def cmd_bench_serve(args) -> int:
    result = run_bench(args)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    if "warning" in result:  # again after the numbers, where it is read
        print(f"WARNING: {result['warning']}", file=sys.stderr)
    return 0 if result.get("ok", True) else 1


def add_arguments(b) -> None:
    """The options of ``python -m benchmarks serve``."""
    from mm_platform.cli import _positive
    from mm_platform.serving.cli import _positive_float, add_cache_options

    b.add_argument("--models", type=_positive, help="production models to build (default 1000; 10000 with --cycle)")
    b.add_argument("--requests", type=_positive,
                   help="warm requests, Zipf-distributed over the models (default 20000; with wrk, the Zipf sequence it cycles through); "
                        "with --cycle: requests cycling over the models (default: one pass)")
    b.add_argument("--concurrency", type=_positive, default=32, help="requests in flight (default 32)")
    b.add_argument("--cold-concurrency", type=_positive, default=4, help="requests in flight while measuring cold loads (default 4)")
    b.add_argument("--zipf", type=_positive_float, default=1.1, help="Zipf exponent of the series popularity (default 1.1)")
    b.add_argument("--horizon", type=_positive, default=28)
    b.add_argument("--loadgen", choices=["auto", "wrk", "httpx"], default="auto",
                   help="client for the warm phase: wrk if installed (auto), else the async httpx load generator")
    b.add_argument("--duration", type=_positive_float, default=20.0,
                   help="seconds of warm load when wrk drives it (wrk runs for a time, not a request count; default 20)")
    b.add_argument("--family", choices=["prophet", "seasonal_naive"], default="prophet", help="model family (default prophet)")
    b.add_argument("--cycle", action="store_true",
                   help="instead: cycle through all models with a small cache to show memory stays bounded")
    add_cache_options(b, bench=True)
    b.add_argument("--workdir", help="where the generated registry is built and reused (default $MM_HOME/bench-serve)")
    b.add_argument("--fresh", action="store_true", help="rebuild the generated registry even if one exists")
    b.add_argument("--json", action="store_true", help="print one JSON line")
