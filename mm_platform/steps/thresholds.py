"""Error thresholds (like Azure ML parallel jobs' ``error_threshold``), shared by training and scoring."""

from __future__ import annotations

import pandas as pd

from mm_platform.core.errors import UserError


class ErrorThresholdExceeded(UserError):
    """Too many series failed: the run stops (a user error: the data or models are bad, the
    message names the counts and the config fields)."""


def threshold_exceeded(
    failed: pd.DataFrame, total: int, limits, section: str, what: str, consequence: str
) -> ErrorThresholdExceeded | None:
    """The error to raise when ``failed`` (rows with a ``reason``) is over ``limits``'
    max_failed_count, or over max_failed_fraction with at least min_failed_count failures
    (config section ``section``), else None. The minimum keeps the share rule meaningful on
    small sets: 1 failure of 4 is 25% but says nothing about the run."""
    n = len(failed)
    over_count = limits.max_failed_count is not None and n > limits.max_failed_count
    over_share = (
        limits.max_failed_fraction is not None and total and n >= limits.min_failed_count
        and n / total > limits.max_failed_fraction
    )
    if not (over_count or over_share):
        return None
    reasons = failed["reason"].value_counts().head(5)
    top = "; ".join(f"{cnt}x {why}" for why, cnt in reasons.items())
    return ErrorThresholdExceeded(
        f"{n} of {total} series failed to {what}, over the error threshold "
        f"({section}.max_failed_fraction={limits.max_failed_fraction} from {section}.min_failed_count={limits.min_failed_count} "
        f"failures on, {section}.max_failed_count={limits.max_failed_count}); "
        f"{consequence}. "
        f"Most common reasons: {top}"
    )
