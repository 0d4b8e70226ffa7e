"""Promotion rules: pure functions that decide whether a trained model may go to production."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mm_platform.config import PromotionRules


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)  # why not, one per failed rule
    values: dict[str, float | None] = field(default_factory=dict)  # the values the rules looked at


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def evaluate(metrics: dict, rules: PromotionRules, production_metrics: dict | None = None) -> Decision:
    """Apply every configured rule to a candidate's holdout metrics.

    A metric the rule needs but the candidate lacks (e.g. WAPE of an all-zero holdout) fails
    the rule: nothing unsafe is promoted for want of evidence.
    """
    wape, mape = _num(metrics.get("wape")), _num(metrics.get("mape"))
    naive = _num(metrics.get("naive_wape"))
    prod = _num((production_metrics or {}).get("wape"))
    slack = 1.0 + rules.tolerance
    d = Decision(True, values={"wape": wape, "mape": mape, "naive_wape": naive, "production_wape": prod})

    def fail(reason: str) -> None:
        d.promote = False
        d.reasons.append(reason)

    if rules.max_wape is not None:
        if wape is None:
            fail("wape unavailable")
        elif wape > rules.max_wape:
            fail(f"wape {wape:.4f} > max_wape {rules.max_wape}")
    if rules.max_mape is not None:
        if mape is None:
            fail("mape unavailable")
        elif mape > rules.max_mape:
            fail(f"mape {mape:.4f} > max_mape {rules.max_mape}")
    if rules.beats_seasonal_naive:
        if wape is None or naive is None:
            fail("cannot compare with seasonal naive (wape unavailable)")
        elif wape > naive * slack:
            fail(f"wape {wape:.4f} does not beat seasonal naive {naive:.4f}")
    if rules.not_worse_than_production and prod is not None and wape is not None and wape > prod * slack:
        fail(f"wape {wape:.4f} worse than production {prod:.4f}")
    return d
