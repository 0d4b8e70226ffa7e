"""Plotly figures built from the (already aggregated, bounded) query results.

Each function returns a ``plotly.graph_objects.Figure``; :func:`to_json` serialises it for a
``<script type="application/json">`` block that the page hands to ``Plotly.newPlot``.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from mm_platform.core.vocabulary import PROMOTED, REJECTED, ROLLBACK

OURS = "#2563eb"
NAIVE = "#f59e0b"
ACTUALS = "#374151"
ACTION_COLORS = {PROMOTED: "#16a34a", REJECTED: "#dc2626", ROLLBACK: "#d97706"}
LABELS = {"wape": "WAPE", "mape": "MAPE", "rmse": "RMSE"}


def to_json(fig: go.Figure) -> str:
    """Figure JSON that is safe to place inside a ``<script>`` element."""
    s = pio.to_json(fig, validate=False, remove_uids=True)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _layout(fig: go.Figure, title: str, height: int = 360, subtitle: str | None = None, **kw) -> go.Figure:
    # Title (and subtitle) at the very top; legend and buttons sit just above the plot area.
    t = {"text": title, "x": 0.01, "xanchor": "left", "y": 1 - 10 / height, "yanchor": "top", "font": {"size": 15}}
    if subtitle:
        t["subtitle"] = {"text": subtitle, "font": {"size": 12, "color": "#6b7280"}}
    fig.update_layout(
        # A few explicit style settings instead of a named template, whose JSON would be
        # most of each figure's bytes.
        template="none",
        paper_bgcolor="#ffffff",
        plot_bgcolor="#ffffff",
        hoverlabel={"bgcolor": "#ffffff"},
        title=t,
        height=height,
        margin={"l": 55, "r": 20, "t": 75 if subtitle else 55, "b": 45},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1},
        font={"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12},
        **kw,
    )
    axis = {"gridcolor": "#e5e7eb", "linecolor": "#d1d5db", "zerolinecolor": "#d1d5db", "ticks": "", "automargin": True}
    fig.update_xaxes(**axis)
    fig.update_yaxes(**axis)
    return fig


def warm_up() -> None:
    """Build and serialise one small figure, so plotly's lazy imports happen at startup."""
    to_json(accuracy_by_key({"key": "k", "metric": "wape", "n_values": 1, "worst_only": False, "limit": 1,
                             "rows": [{"value": 1, "series": 1, "ours": 0.5, "naive": 0.6, "better": 1}]}))


def _empty(title: str, message: str, height: int = 360) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 14})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, height)


def accuracy_histogram(dists: list[dict]) -> go.Figure:
    """Grouped histogram bars (ours vs seasonal naive) per metric, with buttons to switch metric."""
    if not dists or not dists[0]["n"]:
        return _empty("Accuracy distribution", "no trained models yet")
    fig = go.Figure()
    buttons = []
    for i, d in enumerate(dists):
        edges, label = d["edges"], LABELS.get(d["metric"], d["metric"])
        centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        ranges = [f"{a:.3g}–{b:.3g}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
        if d["capped"]:
            ranges[-1] = f"≥ {edges[-2]:.3g}"
        for name, color, counts in (("ours", OURS, d["ours"]), ("seasonal naive", NAIVE, d["naive"])):
            fig.add_bar(
                x=centers, y=counts, name=name, marker_color=color, visible=i == 0, customdata=ranges,
                legendgroup=name, showlegend=True,
                hovertemplate=f"{name}<br>{label} %{{customdata}}<br>%{{y}} series<extra></extra>",
            )
        vis = [j // 2 == i for j in range(2 * len(dists))]
        title = f"Holdout {label} of {d['n']:,} trained series"
        sub = f"ours vs seasonal naive; values above {edges[-1]:.3g} are counted in the last bin" if d["capped"] else "ours vs seasonal naive"
        buttons.append({"label": label, "method": "update",
                        "args": [{"visible": vis}, {"title.text": title, "title.subtitle.text": sub, "xaxis.title.text": label}]})
    first = dists[0]
    args = buttons[0]["args"][1]
    _layout(fig, args["title.text"], subtitle=args["title.subtitle.text"], barmode="group", bargap=0.1,
            xaxis_title=LABELS.get(first["metric"], first["metric"]), yaxis_title="series")
    if len(dists) > 1:
        fig.update_layout(updatemenus=[{"type": "buttons", "direction": "right", "buttons": buttons, "showactive": True,
                                        "x": 0.0, "xanchor": "left", "y": 1.0, "yanchor": "bottom", "pad": {"t": 0, "b": 4}}],
                          margin={"t": 105})
    return fig


def naive_comparison(cmp: dict) -> go.Figure:
    """Binned scatter of our holdout metric against the seasonal-naive one; marker area ~ series per cell."""
    label = LABELS.get(cmp["metric"], cmp["metric"])
    if not cmp["n"]:
        return _empty(f"Ours vs seasonal naive ({label})", "no series with both metrics yet")
    fig = go.Figure()
    biggest = max(c["n"] for c in cmp["cells"])
    for better, name, color in ((True, "ours better", OURS), (False, "naive better or equal", NAIVE)):
        cells = [c for c in cmp["cells"] if c["better"] == better]
        if not cells:
            continue
        fig.add_scatter(
            x=[c["x"] for c in cells], y=[c["y"] for c in cells], mode="markers", name=name,
            marker={"color": color, "opacity": 0.75, "line": {"width": 0},
                    "size": [7 + 18 * math.sqrt(c["n"] / biggest) for c in cells]},
            customdata=[c["n"] for c in cells],
            hovertemplate=f"naive {label} ≈ %{{x:.3f}}<br>our {label} ≈ %{{y:.3f}}<br>%{{customdata}} series in this cell"
                          f"<extra>{name}</extra>",
        )
    hi = cmp["hi"]
    fig.add_scatter(x=[0, hi], y=[0, hi], mode="lines", name="equal", line={"color": "#6b7280", "dash": "dash", "width": 1},
                    hoverinfo="skip")
    share = cmp["better"] / cmp["n"]
    sub = f"{cmp['better']:,} of {cmp['n']:,} series ({share:.0%}) have a lower holdout {label}"
    if cmp["capped"]:
        sub += f"; values above {hi:.3g} on the edge"
    _layout(fig, f"Ours vs seasonal naive ({label})", subtitle=sub, xaxis_title=f"seasonal naive {label}",
            yaxis_title=f"our {label}")
    fig.update_xaxes(range=[0, hi * 1.03])
    fig.update_yaxes(range=[0, hi * 1.03])
    return fig


def accuracy_by_key(by_key: dict) -> go.Figure:
    """Mean holdout metric per value of one partition key, ours next to the baseline."""
    key, label = by_key["key"], LABELS.get(by_key["metric"], by_key["metric"])
    if not by_key["rows"]:
        return _empty(f"{label} by {key}", "no trained models yet")
    rows = by_key["rows"]
    xs = [str(r["value"]) for r in rows]
    custom = [[r["series"], r["better"]] for r in rows]
    fig = go.Figure()
    fig.add_bar(x=xs, y=[r["ours"] for r in rows], name="ours", marker_color=OURS, customdata=custom,
                hovertemplate=f"{key} %{{x}}<br>mean {label} %{{y:.3f}}<br>%{{customdata[0]}} series, %{{customdata[1]}} beat naive<extra>ours</extra>")
    fig.add_bar(x=xs, y=[r["naive"] for r in rows], name="seasonal naive", marker_color=NAIVE, customdata=custom,
                hovertemplate=f"{key} %{{x}}<br>mean naive {label} %{{y:.3f}}<extra>seasonal naive</extra>")
    n = by_key["n_values"]
    sub = (f"the {len(rows)} worst of {n:,} values, worst first" if by_key["worst_only"]
           else f"{n} value{'s' if n != 1 else ''}; trained series of the newest run")
    _layout(fig, f"Mean holdout {label} by {key}", subtitle=sub, barmode="group", bargap=0.15, xaxis_title=key,
            yaxis_title=f"mean {label}")
    fig.update_xaxes(type="category")
    return fig


def run_trend(runs: list[dict]) -> go.Figure:
    """Median holdout WAPE of each run, ours against the baseline."""
    if not runs:
        return _empty("Median WAPE per run", "no runs yet", height=300)
    xs = [str(r["run_date"])[:10] for r in runs]
    fig = go.Figure()
    fig.add_scatter(x=xs, y=[r["median_wape"] for r in runs], mode="lines+markers", name="ours", line={"color": OURS})
    fig.add_scatter(x=xs, y=[r["median_naive_wape"] for r in runs], mode="lines+markers", name="seasonal naive",
                    line={"color": NAIVE})
    _layout(fig, "Median holdout WAPE per run", subtitle=f"{len(runs)} run{'s' if len(runs) != 1 else ''} in v_run_summary",
            height=300, yaxis_title="median WAPE")
    fig.update_xaxes(type="category", title="run date")
    return fig


def promotions_by_run(rows: list[dict]) -> go.Figure:
    """Stacked decision counts per run date and action."""
    if not rows:
        return _empty("Decisions per run date", "no promotion decisions yet", height=300)
    fig = go.Figure()
    for action in sorted({r["action"] for r in rows}):
        sel = [r for r in rows if r["action"] == action]
        fig.add_bar(x=[str(r["run_date"])[:10] for r in sel], y=[r["n"] for r in sel], name=action,
                    marker_color=ACTION_COLORS.get(action, "#6b7280"))
    _layout(fig, "Decisions per run date", height=300, barmode="stack", yaxis_title="decisions", legend_traceorder="normal")
    fig.update_xaxes(type="category", title="run date")
    return fig


def series_forecast(history: pd.DataFrame, forecast: list[dict], title: str = "", coverage: float | None = None,
                    run_date=None, initial_days: int = 120) -> go.Figure:
    """Actuals, the production forecast and its interval band for one series."""
    fig = go.Figure()
    if len(history):
        fig.add_scatter(x=history["ds"].dt.strftime("%Y-%m-%d").tolist(), y=history["y"].astype(float).tolist(),
                        mode="lines", name="actuals", line={"color": ACTUALS, "width": 1.2})
    if forecast:
        xs = [str(r["ds"])[:10] for r in forecast]
        band = f"{coverage:.0%} interval" if coverage else "interval"
        fig.add_scatter(x=xs, y=[r["yhat_upper"] for r in forecast], mode="lines", line={"width": 0}, name=band,
                        legendgroup="band", showlegend=False, hoverinfo="skip")
        fig.add_scatter(x=xs, y=[r["yhat_lower"] for r in forecast], mode="lines", line={"width": 0}, name=band,
                        legendgroup="band", fill="tonexty", fillcolor="rgba(37,99,235,0.18)", hoverinfo="skip")
        fig.add_scatter(x=xs, y=[r["yhat"] for r in forecast], mode="lines+markers", name="production forecast",
                        line={"color": OURS, "width": 2}, marker={"size": 4},
                        customdata=[[r["yhat_lower"], r["yhat_upper"]] for r in forecast],
                        hovertemplate="%{x}<br>forecast %{y:.2f}<br>interval %{customdata[0]:.2f} – %{customdata[1]:.2f}<extra></extra>")
    if not len(history) and not forecast:
        return _empty(title, "no history or forecast for this series")
    _layout(fig, title, height=430, yaxis_title="value", hovermode="x unified")
    if not title:
        fig.update_layout(margin={"t": 70})  # room for the mode bar above the range buttons and legend
    if run_date is not None:
        x = str(run_date)[:10]
        fig.add_shape(type="line", x0=x, x1=x, y0=0, y1=1, xref="x", yref="paper", line={"color": "#9ca3af", "dash": "dot"})
        fig.add_annotation(x=x, y=1, xref="x", yref="paper", text="run date ", showarrow=False, yanchor="top",
                           xanchor="right", font={"size": 10, "color": "#6b7280"})
    end = pd.Timestamp(str(forecast[-1]["ds"])[:10]) if forecast else history["ds"].max()
    # Open on the recent past and the forecast; the range buttons and zoom show the rest.
    days = max(initial_days, 4 * len(forecast))
    start = max(history["ds"].min(), end - pd.Timedelta(days=days)) if len(history) else pd.Timestamp(str(forecast[0]["ds"])[:10])
    fig.update_xaxes(
        type="date",
        range=[start.strftime("%Y-%m-%d"), (end + pd.Timedelta(days=2)).strftime("%Y-%m-%d")],
        rangeselector={"buttons": [
            {"count": 3, "label": "3m", "step": "month", "stepmode": "backward"},
            {"count": 1, "label": "1y", "step": "year", "stepmode": "backward"},
            {"step": "all", "label": "all"},
        ]},
    )
    return fig


def accuracy_over_time(rows: list[dict], title_scope: str = "all series") -> go.Figure:
    """Realized WAPE of the forecasts published on each run date against the holdout WAPE the
    models were promoted on, and seasonal naive's realized WAPE over the same dates."""
    title = "Realized WAPE per forecast run date"
    if not rows:
        return _empty(title, "no realized accuracy yet: actuals for forecast dates arrive after the run")
    xs = [r["run_date"] for r in rows]
    custom = [[r["series"], r["pairs"]] for r in rows]
    fig = go.Figure()
    fig.add_scatter(x=xs, y=[r["wape"] for r in rows], mode="lines+markers", name="realized", line={"color": OURS, "width": 2},
                    customdata=custom,
                    hovertemplate="%{x}<br>realized WAPE %{y:.3f}<br>%{customdata[0]} series, %{customdata[1]} forecast/actual pairs"
                                  "<extra>realized</extra>")
    fig.add_scatter(x=xs, y=[r["estimated_wape"] for r in rows], mode="lines", name="holdout estimate at promotion",
                    line={"color": ACTUALS, "dash": "dash", "width": 1.5},
                    hovertemplate="%{x}<br>holdout WAPE %{y:.3f}<extra>promotion-time estimate</extra>")
    fig.add_scatter(x=xs, y=[r["naive_wape"] for r in rows], mode="lines+markers", name="seasonal naive (realized)",
                    line={"color": NAIVE, "width": 1.5}, marker={"size": 5},
                    hovertemplate="%{x}<br>seasonal naive WAPE %{y:.3f}<extra>seasonal naive</extra>")
    sub = f"{title_scope} · estimate: holdout WAPE at promotion, weighted by actuals"
    _layout(fig, title, subtitle=sub, yaxis_title="WAPE", hovermode="x unified")
    fig.update_xaxes(type="category", title="forecast run date")
    fig.update_yaxes(rangemode="tozero")
    return fig


def interval_coverage_over_time(rows: list[dict], nominal: float | None) -> go.Figure:
    """Share of actuals inside the published interval per forecast run date, against the nominal coverage."""
    title = "Interval coverage per forecast run date"
    if not rows:
        return _empty(title, "no realized accuracy yet", height=300)
    xs = [r["run_date"] for r in rows]
    fig = go.Figure()
    fig.add_scatter(x=xs, y=[r["interval_coverage"] for r in rows], mode="lines+markers", name="realized",
                    line={"color": OURS}, hovertemplate="%{x}<br>%{y:.1%} of actuals inside<extra></extra>")
    if nominal:
        fig.add_scatter(x=xs, y=[nominal] * len(xs), mode="lines", name=f"nominal {nominal:.0%}",
                        line={"color": "#6b7280", "dash": "dash", "width": 1}, hoverinfo="skip")
    _layout(fig, title, height=300, yaxis_title="share inside the interval")
    fig.update_xaxes(type="category", title="forecast run date")
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%")
    return fig
