"""In-memory stores for fast unit tests of the steps (beside the real end-to-end tests, which
use real MLflow stores and real databases). They implement ``mm_platform.steps.interfaces``."""

from __future__ import annotations

import hashlib
from datetime import date

import pandas as pd

from mm_platform.core.vocabulary import DRIFT_REFIT, PRODUCTION_ALIAS, TAG_DATASET, TAG_SERIES_ID, TAG_SHA256
from mm_platform.stores.artifacts import ArtifactIntegrityError, StoredArtifact, read_bytes
from mm_platform.stores.registry import ModelSetRun, RegisteredModel


class FakeRegistry:
    def __init__(self, tracking_uri: str = "memory://registry"):
        self.tracking_uri = tracking_uri
        self.versions: dict[str, list[RegisteredModel]] = {}
        self.artifacts: dict[tuple[str, int], bytes] = {}
        self.aliases: dict[str, int] = {}

    def begin_run(self, run_name, run_tags):
        self.runs = getattr(self, "runs", {}) | {run_name: "RUNNING"}
        return ModelSetRun(run_name, f"memory://runs/{run_name}")

    def end_run(self, run, failed=False):
        self.runs[run.run_id] = "FAILED" if failed else "FINISHED"

    def register_many(self, entries, run_name, run_tags, alias=None, run=None):
        out = []
        if run is not None:
            self.end_run(run)
        for name, data, tags in entries:
            if isinstance(data, StoredArtifact):
                data = read_bytes(data.source)
            version = len(self.versions.get(name, [])) + 1
            m = RegisteredModel(name, version, f"memory://{name}/{version}",
                                {**tags, TAG_SHA256: hashlib.sha256(data).hexdigest()}, run_name)
            self.versions.setdefault(name, []).append(m)
            self.artifacts[(name, version)] = data
            if alias:
                self.aliases[name] = version
            out.append(m)
        return out

    def _all(self, dataset):
        return [m for ms in self.versions.values() for m in ms if m.tags.get(TAG_DATASET) == dataset]

    def latest_by_series(self, dataset):
        out = {}
        for m in self._all(dataset):
            if m.series_id not in out or m.version > out[m.series_id].version:
                out[m.series_id] = m
        return out

    def aliased_by_series(self, dataset, alias=PRODUCTION_ALIAS, tag_keys=None):
        return {m.series_id: m for m in self._all(dataset) if self.aliases.get(m.name) == m.version}

    def versions_of(self, dataset, series_id):
        return [m for m in self._all(dataset) if m.tags.get(TAG_SERIES_ID) == series_id]

    def read_artifact(self, model):
        data = self.artifacts[(model.name, model.version)]
        if hashlib.sha256(data).hexdigest() != model.tags.get(TAG_SHA256):
            raise ArtifactIntegrityError(f"artifact of {model.name} v{model.version} does not match its recorded sha256")
        return data

    def set_production(self, model):
        self.aliases[model.name] = model.version


class FakeWarehouse:
    def __init__(self, dataset: str = "retail"):
        self.dataset = dataset
        self.tables: dict[str, pd.DataFrame] = {}

    def _rows(self, name):
        return self.tables.get(name, pd.DataFrame(columns=["run_date", "series_id"]))

    def replace_run(self, name, run_date, rows):
        return self.replace_runs(run_date, {name: rows})[name]

    def replace_runs(self, run_date, tables, keep=None):
        out = {}
        for name, rows in tables.items():
            old = self._rows(name)
            kept = old[(old["run_date"] != run_date) | old["series_id"].isin((keep or {}).get(name, []))]
            self.tables[name] = pd.concat([kept, rows.assign(run_date=run_date)], ignore_index=True)
            out[name] = len(rows)
        return out

    def replace_series(self, name, run_date, rows, series):
        old = self._rows(name)
        kept = old[~((old["run_date"] == run_date) & old["series_id"].isin(series))]
        self.tables[name] = pd.concat([kept, rows.assign(run_date=run_date)], ignore_index=True)
        return len(rows)

    def append(self, name, run_date, rows):
        self.tables[name] = pd.concat([self._rows(name), rows.assign(run_date=run_date)], ignore_index=True)
        return len(rows)

    def newest_run_date(self, name) -> date | None:
        rows = self._rows(name)
        return max(rows["run_date"]) if len(rows) else None

    def series_with_status(self, name, run_date, status):
        rows = self._rows(name)
        return sorted(rows[(rows["run_date"] == run_date) & (rows["status"] == status)]["series_id"])

    def decided_promotions(self):
        log = self._rows("promotion_log")
        if not len(log):
            return set()
        log = log[log["action"].isin(["promoted", "rejected"])]
        return set(zip(log["series_id"], log["training_version"].astype(int), strict=True))

    def refit_requests(self):
        """As ``Warehouse.refit_requests``: drift_log rows asking for a refit since the newest training run."""
        log, newest = self._rows("drift_log"), self.newest_run_date("training_report")
        if not len(log):
            return []
        log = log[log["actions"].fillna("").str.contains(DRIFT_REFIT)]
        if newest is not None:
            log = log[log["run_date"] >= newest]
        return sorted(set(log["series_id"]))


class FakeHistories:
    """The run date's training set as promotion reads it (``steps.promote.SeriesHistories``),
    from one frame of keys, ``series_id``, ``ds``, ``y`` (the same for every run date)."""

    def __init__(self, rows: pd.DataFrame, keys: list[str]):
        self.rows, self.keys = rows, keys

    def series(self, run_date):
        cols = [*self.keys, "series_id"]
        return self.rows[cols].drop_duplicates().reset_index(drop=True)

    def history(self, run_date, series_ids):
        return self.rows[self.rows["series_id"].isin(list(series_ids))][["series_id", "ds", "y"]].reset_index(drop=True)
