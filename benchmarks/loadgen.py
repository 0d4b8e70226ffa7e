"""The benchmark's load generator, run as its own process: bounded-concurrency async HTTP
requests (httpx) to a 127.0.0.1 service, recording each request's latency, status and the
service's ``x-model-cache`` header (hit / miss / wait).

``python -m benchmarks.loadgen SPEC.json`` prints one JSON object: per-phase
latency arrays summarised, status counts, wall time and this process's CPU time.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from urllib.parse import urlparse

import httpx
import numpy as np


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def percentiles(values: list[float] | np.ndarray, qs=(50, 95, 99)) -> dict[str, float | None]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {f"p{q}": None for q in qs}
    return {f"p{q}": round(float(np.percentile(a, q)) * 1000, 3) for q in qs}


async def run_phase(clients: list[httpx.AsyncClient], bodies: list[bytes], order: np.ndarray, concurrency: int) -> dict:
    n = len(order)
    latency = np.zeros(n)
    status = np.zeros(n, dtype=np.int32)
    cache = [""] * n
    next_i = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_i
        while next_i < n:
            i = next_i
            next_i += 1
            body = bodies[order[i]]
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/forecast", content=body)
                await r.aread()
                status[i] = r.status_code
                cache[i] = r.headers.get("x-model-cache", "")
            except httpx.HTTPError:
                status[i] = 0  # connection-level failure
            latency[i] = time.perf_counter() - t0

    started = time.perf_counter()
    await asyncio.gather(*(worker(clients[w]) for w in range(min(concurrency, n, len(clients)))))
    wall = time.perf_counter() - started
    return {"latency": latency, "status": status, "cache": np.asarray(cache), "wall": wall}


def summarise(result: dict) -> dict:
    lat, status, cache = result["latency"], result["status"], result["cache"]
    ok = status == 200
    codes, counts = np.unique(status, return_counts=True)
    return {
        "requests": int(len(lat)),
        "wall_s": round(result["wall"], 3),
        "requests_per_s": round(len(lat) / result["wall"], 1) if result["wall"] > 0 else None,
        "status": {str(int(c)) if c else "connection_error": int(k) for c, k in zip(codes, counts, strict=True)},
        "all": percentiles(lat),
        "hit": {**percentiles(lat[ok & (cache == "hit")]), "n": int((ok & (cache == "hit")).sum())},
        "miss": {**percentiles(lat[ok & (cache == "miss")]), "n": int((ok & (cache == "miss")).sum())},
        "wait": {"n": int((ok & (cache == "wait")).sum())},
    }


async def main_async(spec: dict) -> dict:
    url = spec["url"]
    if urlparse(url).hostname != "127.0.0.1":
        raise SystemExit("the load generator only talks to 127.0.0.1")
    bodies = [b.encode() for b in spec["bodies"]]
    headers = {"content-type": "application/json"}
    if spec.get("token"):
        headers["authorization"] = f"Bearer {spec['token']}"
    concurrency = int(spec["concurrency"])
    # One keep-alive connection per worker, each its own client: httpx's pool scans all of
    # its connections on every request, which costs more than the request with dozens.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120.0) for _ in range(concurrency)]
    out = {"phases": {}}
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    try:
        for phase in spec["phases"]:
            order = np.asarray(phase["order"], dtype=np.int64)
            result = await run_phase(clients, bodies, order, int(phase.get("concurrency", concurrency)))
            out["phases"][phase["name"]] = summarise(result)
    finally:
        for client in clients:
            await client.aclose()
    out["cpu_s"] = round(_cpu_seconds() - cpu0, 3)
    out["wall_s"] = round(time.perf_counter() - wall0, 3)
    return out


def main(argv: list[str]) -> int:
    with open(argv[0]) as f:
        spec = json.load(f)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    result = runner(main_async(spec))
    result["pid"] = os.getpid()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
