"""The dashboard's FastAPI application: four server-rendered pages (overview, series
explorer, promotion log, accuracy over time), an HTML fragment for the explorer's live search, small JSON
endpoints, and plotly.js served from the installed plotly package."""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import plotly
from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from mm_platform.config import DatasetConfig
from mm_platform.dashboard import figures
from mm_platform.dashboard.queries import SERIES_SORTS, TIERS, DashboardQueries
from mm_platform.stores.sql import redact

HERE = Path(__file__).parent
TOKEN_ENV = "MM_API_TOKEN"  # the scoring service's bearer token option (mm_platform.serving.app)
COOKIE = "mm_dashboard_session"
# No inline scripts, nothing from elsewhere; plotly.js writes inline styles. The API docs page
# loads Swagger UI from its CDN with an inline script, so it gets its own policy.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'")
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
            "frame-ancestors 'none'")
SECURITY_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}
PUBLIC_PATHS = ("/login", "/healthz", "/static/")  # the login page and what it needs


def session_value(token: str) -> str:
    """The cookie's value: derived from the token, so a leaked cookie is not the scoring
    service's bearer token."""
    return hmac.new(token.encode(), b"mm_platform dashboard session", hashlib.sha256).hexdigest()


def _safe_next(value: str) -> str:
    # Only a path on this site (no //host or scheme): the login form is no open redirect.
    return value if value.startswith("/") and not value.startswith("//") and "\\" not in value else "/"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _num(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "—"
    if math.isinf(f):
        return "∞"
    return f"{f:.{digits}f}"


def _pct(v) -> str:
    return "—" if v is None else f"{float(v):.0%}"


def _int(v) -> str:
    return "—" if v is None else f"{int(v):,}"


def _day(v) -> str:
    return "—" if v is None else str(v)[:10]


def _when(v) -> str:
    return "—" if v is None else str(v)[:19].replace("T", " ")


def create_app(cfg: DatasetConfig, token: str | None = None) -> FastAPI:
    """The dashboard for the dataset described by ``cfg`` (reads its warehouse and lake).
    ``token`` (default ``$MM_API_TOKEN``): every page and API route but /login, /healthz and
    the static files needs ``Authorization: Bearer <token>`` or the session cookie the login
    page sets; none means open (the CLI allows that only on loopback)."""
    q = DashboardQueries(cfg)
    token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
    bearer = f"Bearer {token}".encode() if token else None
    session = session_value(token).encode() if token else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        figures.warm_up()  # plotly's first figure is slow to build; pay that before the first page
        yield
        q.dispose()

    app = FastAPI(title=f"mm_platform dashboard · {cfg.name}", docs_url="/api/docs", redoc_url=None, lifespan=lifespan)
    app.state.queries = q
    app.state.auth = bool(token)
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    def authorized(request: Request) -> bool:
        given = request.headers.get("authorization", "").encode()
        cookie = request.cookies.get(COOKIE, "").encode()
        return hmac.compare_digest(given, bearer) or hmac.compare_digest(cookie, session)

    @app.middleware("http")
    async def guard(request: Request, call_next) -> Response:
        path = request.url.path
        base = request.scope.get("root_path", "")
        if bearer is not None and not path.startswith(PUBLIC_PATHS) and not authorized(request):
            if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                target = path + (f"?{request.url.query}" if request.url.query else "")
                response: Response = RedirectResponse(f"{base}/login?{urlencode({'next': target})}", status_code=303)
            else:
                response = JSONResponse({"detail": "missing or invalid bearer token"}, status_code=401,
                                        headers={"WWW-Authenticate": "Bearer"})
        else:
            response = await call_next(request)
        response.headers["Content-Security-Policy"] = DOCS_CSP if path == "/api/docs" else CSP
        response.headers.update(SECURITY_HEADERS)
        return response
    templates.env.filters.update(num=_num, pct=_pct, int=_int, day=_day, when=_when)

    def render(request: Request, name: str, status_code: int = 200, **ctx) -> HTMLResponse:
        base = request.scope.get("root_path", "")

        def link(path: str, **params) -> str:
            clean = {k: v for k, v in params.items() if v not in (None, "")}
            return f"{base}{path}" + (f"?{urlencode(clean)}" if clean else "")

        ctx = {"dataset": cfg.name, "keys": q.keys, "warehouse": redact(cfg.storage.warehouse_url), "base": base,
               "link": link, **ctx}
        return templates.TemplateResponse(request, name, ctx, status_code=status_code)

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_js() -> FileResponse:
        return FileResponse(PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})

    # Mounted after the plotly.js route so that route wins for its path.
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: str = "/"):
        return templates.TemplateResponse(request, "login.html", {"base": request.scope.get("root_path", ""),
                                                                   "next": _safe_next(next), "error": None, "auth": bool(token)})

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        # The form is parsed here (urlencoded, one field): no multipart dependency for one token.
        form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=4)
        given, target = (form.get("token") or [""])[0], _safe_next((form.get("next") or ["/"])[0])
        base = request.scope.get("root_path", "")
        if token is None or not hmac.compare_digest(given.encode(), token.encode()):
            return templates.TemplateResponse(
                request, "login.html", {"base": base, "next": target, "auth": bool(token),
                                        "error": "That token is not valid." if token else "This dashboard has no token set."},
                status_code=401 if token else 400,
            )
        response = RedirectResponse(f"{base}{target}", status_code=303)
        response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict", path=base or "/",
                            secure=request.url.scheme == "https")
        return response

    @app.get("/logout", include_in_schema=False)
    def logout(request: Request):
        base = request.scope.get("root_path", "")
        response = RedirectResponse(f"{base}/login", status_code=303)
        response.delete_cookie(COOKIE, path=base or "/")
        return response

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "dataset": cfg.name, "views": sorted(q.available())}

    # -- overview --------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request):
        ov = q.overview()
        figs = {}
        if "v_series_accuracy" in ov["views"]:
            figs["hist"] = figures.to_json(figures.accuracy_histogram([q.accuracy_distribution("wape"), q.accuracy_distribution("mape")]))
            figs["naive"] = figures.to_json(figures.naive_comparison(q.naive_comparison("wape")))
            for k in q.keys:
                figs[f"key-{k}"] = figures.to_json(figures.accuracy_by_key(q.accuracy_by_key(k)))
        runs = q.runs(limit=90)
        if runs:
            figs["runs"] = figures.to_json(figures.run_trend(runs))
        return render(request, "overview.html", active="overview", title="Overview", ov=ov, figs=figs,
                      recent_runs=runs[::-1][:10])

    @app.get("/api/overview")
    def api_overview():
        return JSONResponse(jsonable_encoder(q.overview()))

    # -- series explorer -----------------------------------------------------------------------

    def _series_page(qtext: str, page: int, size: int, sort: str):
        return q.search_series(qtext, page=page, size=size, sort=sort if sort in SERIES_SORTS else "keys")

    @app.get("/series", response_class=HTMLResponse)
    def series(request: Request, q_: str = Query("", alias="q"), page: int = 1, size: int = 25, sort: str = "keys",
               sid: str = ""):
        listing = _series_page(q_, page, size, sort)
        detail = fig = None
        status = 200
        if sid:
            detail = q.series_detail(sid)
            if detail is None:
                status = 404
            else:
                acc = detail["accuracy"] or {}
                until = acc.get("last_date") or detail["scoring_run_date"]
                history = q.series_history(detail["keys"], until=until)
                detail["history_points"] = len(history)
                detail["history_span"] = (
                    (history["ds"].min().date(), history["ds"].max().date()) if len(history) else None
                )
                fig = figures.to_json(figures.series_forecast(
                    history, detail["forecast"], coverage=cfg.algorithm.interval_coverage,
                    run_date=detail["scoring_run_date"] or acc.get("run_date"),
                ))
        return render(request, "series.html", status_code=status, active="series", title="Series explorer",
                      listing=listing, q=q_, sort=sort, size=listing.size, sid=sid, detail=detail, fig=fig,
                      sorts=SERIES_SORTS, horizon=cfg.horizon)

    @app.get("/series/list", response_class=HTMLResponse)
    def series_list(request: Request, q_: str = Query("", alias="q"), page: int = 1, size: int = 25,
                    sort: str = "keys", sid: str = ""):
        listing = _series_page(q_, page, size, sort)
        return render(request, "_series_list.html", listing=listing, q=q_, sort=sort, size=listing.size, sid=sid)

    @app.get("/api/series")
    def api_series(q_: str = Query("", alias="q"), page: int = 1, size: int = 25, sort: str = "keys"):
        return JSONResponse(jsonable_encoder(_series_page(q_, page, size, sort).as_dict()))

    @app.get("/api/series/detail")
    def api_series_detail(sid: str):
        detail = q.series_detail(sid)
        if detail is None:
            return JSONResponse({"detail": f"series {sid!r} not found"}, status_code=404)
        return JSONResponse(jsonable_encoder(detail))

    # -- promotion log -------------------------------------------------------------------------

    @app.get("/promotions", response_class=HTMLResponse)
    def promotions(request: Request, action: str = "", q_: str = Query("", alias="q"), run_date: str = "",
                   page: int = 1, size: int = 25):
        facets = q.promotion_facets()
        if run_date not in facets["run_dates"]:
            run_date = ""
        listing = q.promotion_page(action=action, q=q_, run_date=run_date, page=page, size=size)
        fig = figures.to_json(figures.promotions_by_run(q.promotions_by_run())) if facets["run_dates"] else None
        return render(request, "promotions.html", active="promotions", title="Promotion log", listing=listing,
                      facets=facets, action=action, q=q_, run_date=run_date, size=listing.size, fig=fig,
                      rules=cfg.promotion)

    @app.get("/api/promotions")
    def api_promotions(action: str = "", q_: str = Query("", alias="q"), run_date: str = "", page: int = 1, size: int = 25):
        facets = q.promotion_facets()
        run_date = run_date if run_date in facets["run_dates"] else ""
        return JSONResponse(jsonable_encoder(q.promotion_page(action=action, q=q_, run_date=run_date, page=page, size=size).as_dict()))

    # -- realized accuracy over time ---------------------------------------------------------

    def _accuracy(tier: str, q_: str) -> tuple[str, list[dict], list[dict]]:
        tier = tier if tier in TIERS else ""
        return tier, q.accuracy_over_time(tier=tier, q=q_), q.drift_flags(q=q_)

    @app.get("/accuracy", response_class=HTMLResponse)
    def accuracy(request: Request, tier: str = "", q_: str = Query("", alias="q")):
        tier, rows, flags = _accuracy(tier, q_)
        scope = " · ".join(filter(None, [f"{tier} tier" if tier else "", f"series matching {q_!r}" if q_ else ""])) or "all series"
        figs = {"wape": figures.to_json(figures.accuracy_over_time(rows, scope)),
                "coverage": figures.to_json(figures.interval_coverage_over_time(rows, cfg.algorithm.interval_coverage))}
        return render(request, "accuracy.html", active="accuracy", title="Accuracy over time", rows=rows[::-1],
                      latest=rows[-1] if rows else None, flags=flags, figs=figs, tier=tier, tiers=TIERS, q=q_,
                      drift=cfg.accuracy.drift, views=q.available())

    @app.get("/api/accuracy")
    def api_accuracy(tier: str = "", q_: str = Query("", alias="q")):
        tier, rows, flags = _accuracy(tier, q_)
        return JSONResponse(jsonable_encoder({"tier": tier or None, "q": q_, "run_dates": rows, "drift": flags}))

    return app
