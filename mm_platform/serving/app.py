"""The FastAPI application: routes, auth, errors and request metrics.

The hot route, ``POST /v1/forecast``, is served by the app's edge (``ScoringApp.__call__``)
directly: the body is validated by the same pydantic model FastAPI documents, in one
``model_validate_json`` call, without FastAPI's per-request dependency machinery. Every
other route goes through FastAPI as usual. The edge also checks the bearer token and
records the request latency histogram for every route.
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers' annotations, and the
# request model is built per dataset at runtime.
import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from mm_platform.config import DatasetConfig
from mm_platform.core.vocabulary import TAG_TIER, TAG_TIER_REASON, TIER_CHAMPION, series_id
from mm_platform.serving.cache import Entry, ModelCache, ModelUnavailable, Overloaded, SeriesNotFound
from mm_platform.serving.metrics import ServingMetrics
from mm_platform.serving.model import ForecastInputError
from mm_platform.serving.schemas import (
    BatchResponse,
    ErrorResponse,
    ForecastResponse,
    KeyType,
    ModelInfo,
    RefreshRequest,
    RefreshResponse,
    Schemas,
)
from mm_platform.serving.source import ProductionSource

log = logging.getLogger(__name__)

TOKEN_ENV = "MM_API_TOKEN"
MAX_START_OFFSET = 3660  # periods between a model's last date and a requested start
MAX_BODY_BYTES = 1 << 20  # a single forecast request (the batch route has FastAPI's limits)

Handled = tuple[int, dict, dict[str, str] | None]  # status, JSON payload, extra headers


@dataclass
class ServingSettings:
    cache_models: int = 2000
    cache_mb: float = 256.0
    version_ttl: float = 5.0  # seconds a cached model's version is trusted before it is re-checked
    max_horizon: int | None = None  # default: 4 x the dataset's horizon
    max_batch: int = 1000
    load_workers: int = 4
    max_pending_loads: int = 1024
    key_types: dict[str, KeyType] = field(default_factory=dict)
    token: str | None = None  # default: $MM_API_TOKEN

    def resolved_max_horizon(self, cfg: DatasetConfig) -> int:
        return self.max_horizon or cfg.horizon * 4


def _dumps(payload) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def _json(payload, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(payload), status_code=status, media_type="application/json", headers=headers)


def _floats(a: np.ndarray) -> list:
    if np.isfinite(a).all():
        return a.tolist()
    return [v if np.isfinite(v) else None for v in a.tolist()]


def _tier(tags: dict[str, str]) -> dict:
    """The production model's coverage tier (champion / fallback) and why it was chosen
    (models promoted before tiers existed are champions)."""
    return {"tier": tags.get(TAG_TIER) or TIER_CHAMPION, "tier_reason": tags.get(TAG_TIER_REASON) or None}


def _errors(exc: ValidationError | RequestValidationError, prefix: list) -> list[dict]:
    """Validation errors as JSON-safe dicts (no echo of the input) with ``loc`` under ``prefix``."""
    errors = exc.errors(include_url=False) if isinstance(exc, ValidationError) else exc.errors()
    return [{"type": e["type"], "loc": [*prefix, *e["loc"]], "msg": e["msg"]} for e in errors]


def _unprocessable(loc: list, message: str) -> dict:
    # The shape of FastAPI's own 422 bodies.
    return {"detail": [{"type": "value_error", "loc": loc, "msg": message}]}


def _log_warm_up_failure(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("registry warm-up failed (requests will retry): %s", future.exception())


async def _send(send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if headers:
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class ScoringApp(FastAPI):
    """FastAPI with an edge in front: bearer-token check (all routes but /healthz), the
    request latency histogram, and ``POST /v1/forecast`` served directly."""

    edge_token: bytes | None = None
    edge_metrics: ServingMetrics | None = None
    edge_forecast: Callable[[bytes], Awaitable[Handled]] | None = None
    _latency: dict  # (route, method, status) -> histogram child

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._latency = {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.edge_metrics is None:
            return await super().__call__(scope, receive, send)
        started = time.perf_counter()
        method, path = scope["method"], scope["path"]
        if self.edge_token is not None and path != "/healthz":
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, self.edge_token):
                await _send(send, 401, b'{"detail":"missing or invalid bearer token"}', {"www-authenticate": "Bearer"})
                self._observe("-", method, 401, started)
                return
        if path == "/v1/forecast" and method == "POST" and self.edge_forecast is not None:
            self._observe(path, method, await self._forecast(receive, send), started)
            return
        status = 500

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await super().__call__(scope, receive, send_and_note)
        finally:
            self._observe(getattr(scope.get("route"), "path", "-"), method, status, started)

    def _observe(self, route: str, method: str, status: int, started: float) -> None:
        key = (route, method, status)
        child = self._latency.get(key)
        if child is None:
            child = self._latency[key] = self.edge_metrics.request_seconds.labels(route, method, str(status))
        child.observe(time.perf_counter() - started)

    async def _forecast(self, receive, send) -> int:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return 499
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await _send(send, 413, b'{"detail":"request body too large"}')
                return 413
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        try:
            status, payload, headers = await self.edge_forecast(b"".join(chunks))
            body = _dumps(payload)
        except Exception:  # never leave a request without an answer
            log.exception("forecast failed")
            status, body, headers = 500, b'{"detail":"internal error"}', None
        await _send(send, status, body, headers)
        return status


def create_app(cfg: DatasetConfig, settings: ServingSettings | None = None, source: ProductionSource | None = None) -> ScoringApp:
    """The service for ``cfg``'s dataset, reading its production registry (read-only)."""
    from mm_platform.stores.registry import production_registry

    settings = settings or ServingSettings()
    unknown = set(settings.key_types) - set(cfg.keys)
    if unknown:
        raise ValueError(f"key types given for keys not in the config: {sorted(unknown)} (keys: {cfg.keys})")
    token = settings.token if settings.token is not None else (os.environ.get(TOKEN_ENV) or None)
    max_horizon = settings.resolved_max_horizon(cfg)
    schemas = Schemas(cfg.keys, cfg.columns.regressors, min(cfg.horizon, max_horizon), max_horizon, settings.max_batch, settings.key_types)
    ForecastRequest = schemas.ForecastRequest
    metrics = ServingMetrics()
    source = source or ProductionSource(production_registry(cfg), cfg.name, cfg.keys)
    cache = ModelCache(
        source,
        metrics,
        max_models=settings.cache_models,
        max_bytes=int(settings.cache_mb * 1024 * 1024),
        version_ttl=settings.version_ttl,
        load_workers=settings.load_workers,
        max_pending_loads=settings.max_pending_loads,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await cache.start()
        # Open the registry connection and import the model code in the background, so the
        # first request does not pay for it. No model is loaded.
        cache.run_blocking(source.warm_up).add_done_callback(_log_warm_up_failure)
        yield
        await cache.close()

    app = ScoringApp(
        title=f"mm_platform real-time scoring ({cfg.name})",
        version="1",
        description=(
            f"Forecasts for the `{cfg.name}` dataset's series (keys: {', '.join(cfg.keys)}) from the production "
            "registry's `production` models. "
            + ("Every route but /healthz needs `Authorization: Bearer <token>`." if token else "")
        ),
        lifespan=lifespan,
    )
    app.edge_token = f"Bearer {token}".encode() if token else None
    app.edge_metrics = metrics
    app.state.cache = cache
    app.state.metrics = metrics
    app.state.schemas = schemas

    @app.exception_handler(RequestValidationError)
    async def unprocessable(request: Request, exc: RequestValidationError):
        return _json({"detail": _errors(exc, [])}, 422)

    errors = {
        404: {"model": ErrorResponse, "description": "the series has no production model"},
        503: {"model": ErrorResponse, "description": "the series' model cannot be loaded right now"},
    }

    # -- core ------------------------------------------------------------------------------

    async def resolve(keys: dict[str, str]) -> tuple[Entry | None, str, tuple[int, dict] | None]:
        """(entry, cache outcome, None) or (None, "", (status, error body))."""
        sid = series_id(keys)
        try:
            entry, how = await cache.get(keys)
            return entry, how, None
        except SeriesNotFound as exc:
            return None, "", (404, {"detail": str(exc), "series_id": sid})
        except (ModelUnavailable, Overloaded) as exc:
            return None, "", (503, {"detail": str(exc), "series_id": sid})
        except Exception as exc:  # e.g. the registry is unreachable: this series only
            log.warning("series %s: %s: %s", sid, type(exc).__name__, exc)
            return None, "", (503, {"detail": f"the production model for series {sid} could not be loaded", "series_id": sid})

    def forecast_payload(entry: Entry, req) -> dict:
        prepared = entry.prepared
        start = np.datetime64(req.start, "D") if req.start is not None else None
        offset = prepared.start_offset(start, MAX_START_OFFSET)
        regs = None
        if req.regressors is not None:
            regs = {k: v for k, v in req.regressors if v is not None}
        ds, yhat, lower, upper = prepared.forecast(req.horizon, regs, offset)
        dates = np.datetime_as_string(ds, unit="D").tolist()
        return {
            "series_id": entry.series_id,
            "keys": entry.keys,
            "model": {"name": entry.model.name, "version": entry.model.version,
                      "algorithm": entry.model.tags.get("algorithm", prepared.family)},
            **_tier(entry.model.tags),
            "freq": prepared.freq,
            "horizon": req.horizon,
            "start": dates[0],
            "interval_coverage": prepared.coverage,
            "dates": dates,
            "yhat": _floats(yhat),
            "lower": _floats(lower),
            "upper": _floats(upper),
        }

    async def forecast_validated(req) -> Handled:
        entry, how, error = await resolve(schemas.series_keys(req))
        if error is not None:
            return error[0], error[1], None
        try:
            return 200, forecast_payload(entry, req), {"x-model-cache": how}
        except ForecastInputError as exc:
            return 422, _unprocessable(["body", exc.field], str(exc)), None

    async def forecast_raw(body: bytes) -> Handled:
        try:
            req = ForecastRequest.model_validate_json(body)
        except ValidationError as exc:
            return 422, {"detail": _errors(exc, ["body"])}, None
        return await forecast_validated(req)

    app.edge_forecast = forecast_raw

    # -- routes ----------------------------------------------------------------------------

    @app.post("/v1/forecast", response_model=ForecastResponse, responses=errors, tags=["forecast"])
    async def forecast(req: ForecastRequest):  # type: ignore[valid-type]
        """Forecast one series with its production model.

        The response's ``x-model-cache`` header says whether the model was cached (``hit``),
        loaded for this request (``miss``) or being loaded already (``wait``)."""
        # Requests are answered by ScoringApp's edge (forecast_raw); this declares the route
        # for the OpenAPI spec and answers the same way if the app is mounted without it.
        status, payload, headers = await forecast_validated(req)
        return _json(payload, status, headers)

    batch_body = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["items"],
                "additionalProperties": False,
                "properties": {"items": {"type": "array", "minItems": 1, "maxItems": settings.max_batch,
                                         "items": {"$ref": "#/components/schemas/ForecastRequest"}}},
            }}},
        }
    }

    @app.post("/v1/forecast/batch", response_model=BatchResponse, tags=["forecast"], openapi_extra=batch_body)
    async def forecast_batch(request: Request):
        """Forecast many series; each item succeeds or fails on its own (``status`` per item)."""
        try:
            body = schemas.BatchRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            return _json({"detail": _errors(exc, ["body"])}, 422)
        parsed: list = []
        for i, item in enumerate(body.items):
            try:
                parsed.append(ForecastRequest.model_validate(item))
            except ValidationError as exc:
                parsed.append(_errors(exc, ["items", i]))
        distinct = {}
        for req in parsed:
            if not isinstance(req, list):
                keys = schemas.series_keys(req)
                distinct.setdefault(series_id(keys), keys)
        resolved = dict(zip(distinct, await asyncio.gather(*(resolve(k) for k in distinct.values())), strict=True))
        results = []
        for i, req in enumerate(parsed):
            if isinstance(req, list):
                results.append({"index": i, "status": 422, "detail": req})
                continue
            entry, _, error = resolved[series_id(schemas.series_keys(req))]
            if error is not None:
                results.append({"index": i, "status": error[0], "detail": error[1]["detail"]})
                continue
            try:
                results.append({"index": i, "status": 200, "forecast": forecast_payload(entry, req)})
            except ForecastInputError as exc:
                results.append({"index": i, "status": 422, "detail": _unprocessable(["items", i, exc.field], str(exc))["detail"]})
        return _json({"results": results})

    @app.get("/v1/models/{series}", response_model=ModelInfo, responses=errors, tags=["models"])
    async def model_info(series: str):
        """The series' production model (``series`` like ``store=3,item=17``, URL-encoded)."""
        try:
            keys = schemas.parse_series_id(series)
        except ValueError as exc:
            return _json(_unprocessable(["path", "series"], str(exc)), 422)
        sid = series_id(keys)
        entry = cache.peek(sid)
        if entry is not None:
            model = entry.model
        else:
            try:
                model = await cache.run_blocking(source.lookup, keys)
            except Exception as exc:
                log.warning("lookup of %s failed: %s: %s", sid, type(exc).__name__, exc)
                return _json({"detail": "the production registry could not be reached", "series_id": sid}, 503)
            if model is None:
                return _json({"detail": f"no production model for series {sid}", "series_id": sid}, 404)
        metric_values = {}
        for k, v in model.tags.items():
            if k.startswith("metric."):
                try:
                    value = float(v)
                except ValueError:
                    value = float("nan")
                metric_values[k.removeprefix("metric.")] = value if np.isfinite(value) else None
        return _json({
            "series_id": sid, "keys": keys, "name": model.name, "version": model.version,
            "algorithm": model.tags.get("algorithm"), **_tier(model.tags), "metrics": metric_values, "tags": model.tags,
            "cached": entry is not None,
        })

    @app.post("/v1/refresh", response_model=RefreshResponse, tags=["models"])
    async def refresh(body: RefreshRequest | None = None):
        """Re-check the production version of cached models now (all, or ``series``), load new
        versions before answering, and forget remembered 404s/503s."""
        series = None
        if body is not None and body.series is not None:
            try:
                series = [series_id(schemas.parse_series_id(s)) for s in body.series]
            except ValueError as exc:
                return _json(_unprocessable(["body", "series"], str(exc)), 422)
        try:
            return _json(await cache.refresh(series))
        except Exception as exc:
            log.warning("refresh failed: %s: %s", type(exc).__name__, exc)
            return _json({"detail": "the production registry could not be reached"}, 503)

    @app.get("/healthz", tags=["ops"])
    async def healthz():
        """Liveness: the process answers (no registry call, no token needed)."""
        return _json({"status": "ok", "models_in_cache": cache.size})

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus_metrics():
        """Prometheus metrics (text exposition format)."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
