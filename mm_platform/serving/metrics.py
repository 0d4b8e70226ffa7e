"""The service's Prometheus metrics, in their own registry (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_seconds = Histogram(
            "mm_serving_request_seconds", "HTTP request latency", ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.cache_hits = Counter("mm_serving_cache_hits_total", "requests answered by a cached model", registry=r)
        self.cache_misses = Counter(
            "mm_serving_cache_misses_total", "requests whose model was not cached (each starts or joins a load)", registry=r
        )
        self.load_waits = Counter(
            "mm_serving_cache_load_waits_total", "cache misses that joined a load already in progress", registry=r
        )
        self.loads = Counter("mm_serving_model_loads_total", "models loaded from the production registry", registry=r)
        self.load_failures = Counter(
            "mm_serving_model_load_failures_total", "model loads that failed, by reason", ["reason"], registry=r
        )
        self.load_seconds = Histogram(
            "mm_serving_model_load_seconds", "registry lookup + artifact read, verification and parse",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.evictions = Counter(
            "mm_serving_cache_evictions_total", "models dropped from the cache, by reason", ["reason"], registry=r
        )
        self.replacements = Counter(
            "mm_serving_model_replacements_total", "cached models replaced by a newly promoted version", registry=r
        )
        self.version_checks = Counter(
            "mm_serving_version_checks_total", "cached models whose production version was re-checked", registry=r
        )
        self.models_in_cache = Gauge("mm_serving_models_in_cache", "models in the cache", registry=r)
        self.bytes_in_cache = Gauge("mm_serving_cache_bytes", "estimated bytes held by cached models", registry=r)
        self.cache_max_models = Gauge("mm_serving_cache_max_models", "cache capacity (models)", registry=r)
        self.cache_max_bytes = Gauge("mm_serving_cache_max_bytes", "cache capacity (bytes)", registry=r)
