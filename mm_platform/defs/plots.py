"""Small static plots (PNG bytes, matplotlib Agg) for Dagster asset metadata.

Pure functions: frames in, PNG bytes out. :func:`png_markdown` wraps the bytes in a markdown
image with a base64 data URI, for ``dagster.MetadataValue.md``.
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mm_platform.core.vocabulary import TRAINED

OURS = "#2563eb"
NAIVE = "#f59e0b"
ACTUALS = "#374151"
CAP = 2.0  # WAPE above 200 % is drawn in the last bin


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _message(text: str, size=(6, 2)) -> bytes:
    fig, ax = plt.subplots(figsize=size)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="#6b7280")
    return _png(fig)


def accuracy_histogram_png(report_df: pd.DataFrame) -> bytes:
    """Histogram of holdout WAPE, ours against the seasonal-naive baseline.

    ``report_df`` has ``wape`` and ``naive_wape`` (a ``training_report`` frame; if it has
    ``status``, only ``trained`` rows are used). Values above 2 are counted in the last bin.
    """
    df = report_df
    if "status" in df.columns:
        df = df[df["status"] == TRAINED]
    ours = pd.to_numeric(df.get("wape", pd.Series(dtype=float)), errors="coerce")
    naive = pd.to_numeric(df.get("naive_wape", pd.Series(dtype=float)), errors="coerce")
    ours, naive = ours[np.isfinite(ours)], naive[np.isfinite(naive)]
    if not len(ours) and not len(naive):
        return _message("no trained models with holdout WAPE")
    hi = float(min(max(ours.max() if len(ours) else 0, naive.max() if len(naive) else 0, 1e-9), CAP))
    bins = np.linspace(0, hi, int(min(30, max(8, np.ceil(2 * np.sqrt(max(len(ours), 1)))))) + 1)
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.hist([ours.clip(upper=hi), naive.clip(upper=hi)], bins=bins, color=[OURS, NAIVE],
            label=[f"ours (median {ours.median():.3f})" if len(ours) else "ours",
                   f"seasonal naive (median {naive.median():.3f})" if len(naive) else "seasonal naive"])
    both = pd.concat([ours, naive], axis=1, keys=["o", "n"]).dropna()
    share = f", {float((both['o'] < both['n']).mean()):.0%} beat naive" if len(both) else ""
    ax.set_title(f"Holdout WAPE of {len(ours)} series{share}", fontsize=11, loc="left")
    ax.set_xlabel("WAPE" + (f" (values above {hi:g} in the last bin)" if (ours > hi).any() or (naive > hi).any() else ""))
    ax.set_ylabel("series")
    ax.legend(frameon=False, fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def sample_forecasts_png(history_df: pd.DataFrame, predictions_df: pd.DataFrame, n: int = 4,
                         history_points: int = 120) -> bytes:
    """Small multiples of ``n`` series: recent actuals, forecast and its interval band.

    ``history_df`` has ``series_id``, ``ds``, ``y``; ``predictions_df`` has ``series_id``,
    ``ds``, ``yhat`` and optionally ``yhat_lower``/``yhat_upper``. The first ``n`` series ids
    (sorted) that have predictions are drawn, each with its last ``history_points`` actuals.
    """
    if predictions_df is None or not len(predictions_df):
        return _message("no predictions")
    series = sorted(predictions_df["series_id"].astype(str).unique())[: max(1, n)]
    cols = 2 if len(series) > 1 else 1
    rows = int(np.ceil(len(series) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 2.5 * rows), squeeze=False)
    hist = history_df.assign(series_id=history_df["series_id"].astype(str)) if len(history_df) else history_df
    preds = predictions_df.assign(series_id=predictions_df["series_id"].astype(str))
    for ax, sid in zip(axes.flat, series, strict=False):
        h = hist[hist["series_id"] == sid].sort_values("ds").tail(history_points) if len(hist) else hist
        p = preds[preds["series_id"] == sid].sort_values("ds")
        if len(h):
            ax.plot(pd.to_datetime(h["ds"]), h["y"].astype(float), color=ACTUALS, lw=0.9, label="actuals")
        x = pd.to_datetime(p["ds"])
        if {"yhat_lower", "yhat_upper"} <= set(p.columns):
            ax.fill_between(x, p["yhat_lower"].astype(float), p["yhat_upper"].astype(float), color=OURS, alpha=0.2,
                            lw=0, label="interval")
        ax.plot(x, p["yhat"].astype(float), color=OURS, lw=1.6, label="forecast")
        ax.set_title(sid, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
        locator = mdates.AutoDateLocator(maxticks=5)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    axes.flat[0].legend(frameon=False, fontsize=7, loc="upper left")
    fig.tight_layout()
    return _png(fig)


def png_markdown(png_bytes: bytes, alt: str = "plot") -> str:
    """A markdown image with the PNG inlined as a base64 data URI (for ``MetadataValue.md``)."""
    alt = alt.replace("[", "(").replace("]", ")")
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png_bytes).decode('ascii')})"
