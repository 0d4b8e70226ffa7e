"""The narrow interfaces the steps need from the stores. The real ones are
``stores.registry.ModelRegistry`` and ``stores.warehouse.Warehouse``; the unit tests pass
in-memory ones (mm_platform_tests/fakes.py)."""

from __future__ import annotations

from datetime import date
from typing import Protocol

import pandas as pd

from mm_platform.stores.artifacts import StoredArtifact
from mm_platform.stores.registry import ModelSetRun, RegisteredModel


class RegistryReader(Protocol):
    tracking_uri: str

    def latest_by_series(self, dataset: str) -> dict[str, RegisteredModel]: ...

    def aliased_by_series(self, dataset: str, alias: str, tag_keys=None) -> dict[str, RegisteredModel]: ...

    def versions_of(self, dataset: str, series_id: str) -> list[RegisteredModel]: ...

    def read_artifact(self, model: RegisteredModel) -> bytes: ...


class Registry(RegistryReader, Protocol):
    def begin_run(self, run_name: str, run_tags: dict) -> ModelSetRun: ...

    def end_run(self, run: ModelSetRun, failed: bool = False) -> None: ...

    def register_many(self, entries: list[tuple[str, bytes | StoredArtifact, dict[str, str]]], run_name: str,
                      run_tags: dict, alias: str | None = None, run: ModelSetRun | None = None) -> list[RegisteredModel]: ...

    def set_production(self, model: RegisteredModel) -> None: ...


class ReportStore(Protocol):
    dataset: str

    def replace_run(self, name: str, run_date: date, rows: pd.DataFrame) -> int: ...

    def replace_runs(self, run_date: date, tables: dict[str, pd.DataFrame],
                     keep: dict[str, list[str]] | None = None) -> dict[str, int]: ...

    def replace_series(self, name: str, run_date: date, rows: pd.DataFrame, series: list[str]) -> int: ...

    def append(self, name: str, run_date: date, rows: pd.DataFrame) -> int: ...

    def newest_run_date(self, name: str) -> date | None: ...

    def series_with_status(self, name: str, run_date: date, status: str) -> list[str]: ...

    def decided_promotions(self) -> set[tuple[str, int]]: ...

    def refit_requests(self) -> list[str]: ...
