"""Operations on a running deployment: which series failed, and rolling series back."""

from __future__ import annotations

import getpass
from datetime import UTC, date, datetime

import pandas as pd

from mm_platform.config import DatasetConfig
from mm_platform.core.errors import UserError
from mm_platform.core.vocabulary import FAILED, ROLLBACK
from mm_platform.steps.interfaces import Registry, ReportStore
from mm_platform.stores.registry import production_by_series


def failed_series(warehouse: ReportStore, run_date: date | None = None) -> tuple[date | None, list[str]]:
    """The series that failed in the newest training run (or in ``run_date``'s)."""
    run_date = run_date or warehouse.newest_run_date("training_report")
    if run_date is None:
        return None, []
    return run_date, sorted(warehouse.series_with_status("training_report", run_date, FAILED))


def rollback(
    cfg: DatasetConfig, production: Registry, warehouse: ReportStore, series: list[str], to_version: int | None = None,
    decided_by: str | None = None,
) -> pd.DataFrame:
    """Point each series' production alias back at an earlier version (the previous one, or
    ``to_version``) and record it in the promotion log."""
    current = production_by_series(production, cfg.name)
    rows = []
    now = datetime.now(UTC).replace(tzinfo=None)
    for sid in series:
        cur = current.get(sid)
        if cur is None:
            raise UserError(f"series {sid!r} has no production model in {production.tracking_uri}")
        versions = {v.version: v for v in production.versions_of(cfg.name, sid)}
        target = to_version if to_version is not None else max((v for v in versions if v < cur.version), default=None)
        if target is None or target not in versions:
            raise UserError(f"series {sid!r}: no production version {to_version or 'before ' + str(cur.version)} "
                            f"to roll back to; versions: {sorted(versions)}")
        production.set_production(versions[target])
        rows.append({"series_id": sid, "model_name": cur.name, "training_version": None, "production_version": target,
                     "action": ROLLBACK, "reasons": f"rolled back from version {cur.version}",
                     "decided_by": decided_by or f"mm-platform rollback ({getpass.getuser()})", "decided_at": now})
    log = pd.DataFrame(rows)
    if len(log):
        warehouse.append("promotion_log", now.date(), log)
    return log
