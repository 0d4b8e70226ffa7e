"""The model cache: load on first request, bounded LRU, single-flight loads, hot replacement.

Everything that touches the cache's state runs on the event loop (one thread); registry
I/O, artifact reads and parsing run on a small thread pool. So:

* a warm request is a dict lookup plus numpy work, with no lock and no registry round trip;
* concurrent first requests for one series share one load (one task per series in
  ``_inflight``; later requests await it);
* the cache is bounded by model count *and* estimated bytes, evicting least recently used;
* a cached model whose version was last confirmed more than ``version_ttl`` seconds ago is
  still served, and its series is queued for a version check: a background task checks the
  queued series in batches (one registry query per batch) and loads a newly promoted
  version next to the old one, swapping it in when it is ready (stale-while-revalidate).
  The checker rests three times as long as each batch took, so it never takes more than a
  quarter of the process;
* a series that is not in production (404) or whose model fails to load (503, e.g. an
  artifact that fails its sha256 check) is remembered for ``version_ttl`` seconds, so
  repeated requests for it cost nothing and other series are unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mm_platform.core.vocabulary import series_id
from mm_platform.serving.metrics import ServingMetrics
from mm_platform.serving.model import PreparedModel, deep_sizeof
from mm_platform.serving.source import CHECK_BATCH, ProductionSource
from mm_platform.stores.artifacts import ArtifactIntegrityError
from mm_platform.stores.registry import RegisteredModel

log = logging.getLogger(__name__)

ENTRY_OVERHEAD = 1024  # the entry, its keys and bookkeeping, roughly


class SeriesNotFound(LookupError):
    """The series has no production model."""


class ModelUnavailable(RuntimeError):
    """The series' production model cannot be loaded right now (503)."""


class Overloaded(RuntimeError):
    """Too many model loads are waiting (503, retry)."""


@dataclass(eq=False)
class Entry:
    series_id: str
    keys: dict[str, str]
    model: RegisteredModel
    prepared: PreparedModel
    nbytes: int
    checked_at: float  # time.monotonic() of the last confirmation that this is the production version
    loaded_at: float  # time.time()


@dataclass(frozen=True)
class _Failure:
    until: float
    kind: type[Exception]  # SeriesNotFound or ModelUnavailable: a fresh one is raised each time
    message: str


class ModelCache:
    def __init__(
        self,
        source: ProductionSource,
        metrics: ServingMetrics,
        *,
        max_models: int,
        max_bytes: int,
        version_ttl: float,
        load_workers: int = 4,
        max_pending_loads: int = 1024,
        max_failures: int = 10_000,
    ):
        if max_models < 1 or max_bytes < 1:
            raise ValueError("the cache needs room for at least one model")
        self.source = source
        self.metrics = metrics
        self.max_models = max_models
        self.max_bytes = max_bytes
        self.version_ttl = version_ttl
        self.max_pending_loads = max_pending_loads
        self.max_failures = max_failures
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self._inflight: dict[str, asyncio.Task] = {}
        self._failures: OrderedDict[str, _Failure] = OrderedDict()
        self._due: dict[str, None] = {}  # series whose version check is due, oldest first
        self._wake: asyncio.Event | None = None
        self._checker: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=load_workers, thread_name_prefix="mm-serving-load")
        metrics.cache_max_models.set(max_models)
        metrics.cache_max_bytes.set(max_bytes)
        self._publish()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._checker = asyncio.create_task(self._check_loop(), name="mm-serving-version-checks")

    async def close(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            try:
                await self._checker
            except asyncio.CancelledError:
                pass
        for task in list(self._inflight.values()):
            task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run_blocking(self, fn, *args):
        """Run registry I/O on the cache's thread pool."""
        return asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- reading ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def peek(self, sid: str) -> Entry | None:
        return self._entries.get(sid)

    async def get(self, keys: dict[str, str]) -> tuple[Entry, str]:
        """The series' production model and how it was found: "hit", "miss" (this request
        loaded it) or "wait" (it joined a load already under way)."""
        sid = series_id(keys)
        entry = self._entries.get(sid)
        if entry is not None:
            self._entries.move_to_end(sid)
            self.metrics.cache_hits.inc()
            if time.monotonic() - entry.checked_at > self.version_ttl and sid not in self._due:
                self._due[sid] = None
                if self._wake is not None:
                    self._wake.set()
            return entry, "hit"
        self.metrics.cache_misses.inc()
        task = self._inflight.get(sid)
        if task is not None:
            self.metrics.load_waits.inc()
            return await asyncio.shield(task), "wait"
        failure = self._failures.get(sid)
        if failure is not None:
            if failure.until > time.monotonic():
                raise failure.kind(failure.message)
            del self._failures[sid]
        if len(self._inflight) >= self.max_pending_loads:
            raise Overloaded(f"{len(self._inflight)} model loads are already waiting; retry shortly")
        return await asyncio.shield(self._start_load(sid, keys)), "miss"

    # -- loading ---------------------------------------------------------------------------

    def _start_load(self, sid: str, keys: dict[str, str]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._load(sid, keys))
        self._inflight[sid] = task

        def done(t: asyncio.Task) -> None:
            if self._inflight.get(sid) is t:
                del self._inflight[sid]
            if not t.cancelled():
                t.exception()  # retrieved here: a replacement load may have no other awaiter

        task.add_done_callback(done)
        return task

    def _load_blocking(self, keys: dict[str, str]) -> tuple[RegisteredModel, PreparedModel, int]:
        model = self.source.lookup(keys)
        if model is None:
            raise SeriesNotFound(f"no production model for series {series_id(keys)}")
        prepared, _ = self.source.load(model)
        nbytes = deep_sizeof(prepared) + deep_sizeof(model) + ENTRY_OVERHEAD
        return model, prepared, nbytes

    async def _load(self, sid: str, keys: dict[str, str]) -> Entry:
        previous = self._entries.get(sid)
        started = time.perf_counter()
        try:
            model, prepared, nbytes = await self.run_blocking(self._load_blocking, keys)
        except SeriesNotFound as exc:
            if previous is not None and self._entries.get(sid) is previous:
                self._evict(sid, "unpromoted")
            self._remember_failure(sid, exc)
            raise
        except Exception as exc:
            reason = "integrity" if isinstance(exc, ArtifactIntegrityError) else "error"
            self.metrics.load_failures.labels(reason).inc()
            log.warning("model for series %s failed to load: %s: %s", sid, type(exc).__name__, exc)
            if previous is not None and self._entries.get(sid) is previous:
                # A new version that cannot be loaded does not take the series down: keep
                # answering with the version we have and try again after the TTL.
                previous.checked_at = time.monotonic()
                raise
            error = ModelUnavailable(f"the production model for series {sid} could not be loaded: {type(exc).__name__}")
            self._remember_failure(sid, error)
            raise error from exc
        self.metrics.loads.inc()
        self.metrics.load_seconds.observe(time.perf_counter() - started)
        entry = Entry(sid, dict(keys), model, prepared, nbytes, time.monotonic(), time.time())
        self._insert(entry)
        return entry

    def _remember_failure(self, sid: str, error: Exception) -> None:
        self._failures[sid] = _Failure(time.monotonic() + self.version_ttl, type(error), str(error))
        self._failures.move_to_end(sid)
        while len(self._failures) > self.max_failures:
            self._failures.popitem(last=False)

    def _insert(self, entry: Entry) -> None:
        old = self._entries.pop(entry.series_id, None)
        if old is not None:
            self._bytes -= old.nbytes
            if old.model.version != entry.model.version:
                self.metrics.replacements.inc()
                log.info("series %s: version %s replaces %s", entry.series_id, entry.model.version, old.model.version)
        self._entries[entry.series_id] = entry
        self._bytes += entry.nbytes
        while len(self._entries) > self.max_models:
            self._evict(next(iter(self._entries)), "count")
        while self._bytes > self.max_bytes and self._entries:
            # A model larger than the whole budget is evicted too (it still answers this request).
            self._evict(next(iter(self._entries)), "bytes")
        self._publish()

    def _evict(self, sid: str, reason: str) -> None:
        entry = self._entries.pop(sid, None)
        if entry is not None:
            self._bytes -= entry.nbytes
            self.metrics.evictions.labels(reason).inc()
            self._due.pop(sid, None)
            self._publish()

    def _publish(self) -> None:
        self.metrics.models_in_cache.set(len(self._entries))
        self.metrics.bytes_in_cache.set(self._bytes)

    # -- version checks --------------------------------------------------------------------

    async def _check_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._due:
                batch = []
                while self._due and len(batch) < CHECK_BATCH:
                    sid = next(iter(self._due))
                    del self._due[sid]
                    entry = self._entries.get(sid)
                    if entry is not None and sid not in self._inflight:
                        batch.append(entry)
                if not batch:
                    continue
                started = time.monotonic()
                try:
                    await self._check(batch)
                except Exception as exc:  # the registry is unreachable: keep serving, retry after the TTL
                    log.warning("version check of %d models failed: %s: %s", len(batch), type(exc).__name__, exc)
                    now = time.monotonic()
                    for entry in batch:
                        entry.checked_at = now
                # Bound the checker's share of the process (registry calls are CPU-heavy Python).
                await asyncio.sleep(3 * (time.monotonic() - started))

    async def _check(self, batch: list[Entry]) -> dict[str, int]:
        """Compare the entries' versions with the production alias; start loads of new versions."""
        versions = await self.run_blocking(self.source.production_versions, [e.model.name for e in batch])
        now = time.monotonic()
        outcome = {"checked": 0, "replaced": 0, "removed": 0}
        reloads = []
        for entry in batch:
            if self._entries.get(entry.series_id) is not entry:
                continue  # evicted or replaced meanwhile
            outcome["checked"] += 1
            self.metrics.version_checks.inc()
            version = versions.get(entry.model.name)
            if version == entry.model.version:
                entry.checked_at = now
            elif version is None:
                outcome["removed"] += 1
                self._evict(entry.series_id, "unpromoted")
            else:
                outcome["replaced"] += 1
                entry.checked_at = now  # until the new version is in, the old one answers
                if entry.series_id not in self._inflight:
                    reloads.append(self._start_load(entry.series_id, entry.keys))
        outcome["reloads"] = reloads
        return outcome

    async def refresh(self, series: list[str] | None = None) -> dict[str, int]:
        """Check now (all cached models, or the given series) and wait for new versions to load.
        Also forgets remembered 404s/503s so those series are looked up again."""
        if series is None:
            self._failures.clear()
            entries = list(self._entries.values())
        else:
            for sid in series:
                self._failures.pop(sid, None)
            entries = [self._entries[sid] for sid in series if sid in self._entries]
        total = {"checked": 0, "replaced": 0, "removed": 0, "failed": 0}
        reloads = []
        for i in range(0, len(entries), CHECK_BATCH):
            outcome = await self._check(entries[i : i + CHECK_BATCH])
            reloads += outcome.pop("reloads")
            for k, v in outcome.items():
                total[k] += v
        for result in await asyncio.gather(*reloads, return_exceptions=True):
            if isinstance(result, BaseException):
                total["failed"] += 1
        return total
