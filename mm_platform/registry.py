"""Model registries on MLflow: one for training, a separate one for production.

Each series has its own registered model (``<dataset>.<key>_<value>...``); every version
carries tags (dataset, series id, each partition key value, algorithm, data fingerprint,
artifact sha256, metrics) so scoring and serving find a series' model by tags. The
artifact is the model's compact JSON form; its sha256 is checked on every load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)

PRODUCTION_ALIAS = "production"


class ArtifactIntegrityError(RuntimeError):
    """A model artifact does not match the sha256 recorded at registration."""


class ReadOnlyRegistryError(PermissionError):
    """A write was attempted through a read-only registry handle."""


def model_name(dataset: str, keys: dict) -> str:
    parts = [f"{k}_{re.sub(r'[^A-Za-z0-9_-]', '_', str(v))}" for k, v in keys.items()]
    return ".".join([dataset, *parts])


def series_id(keys: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in keys.items())


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: int
    source: str
    tags: dict[str, str]
    run_id: str | None = None

    @property
    def series_id(self) -> str:
        return self.tags.get("series_id", "")

    def metric(self, name: str) -> float | None:
        v = self.tags.get(f"metric.{name}")
        return float(v) if v not in (None, "", "nan") else None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _to_registered(mv) -> RegisteredModel:
    return RegisteredModel(mv.name, int(mv.version), mv.source, dict(mv.tags), mv.run_id)


class ModelRegistry:
    """An MLflow tracking/registry store plus an artifact root."""

    def __init__(self, tracking_uri: str, artifact_root: str, experiment: str, writable: bool = True):
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.experiment = experiment
        self.writable = writable
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # -- reading -------------------------------------------------------------------------------

    def search(self, dataset: str, extra_filter: str | None = None) -> list[RegisteredModel]:
        flt = f"tags.dataset = '{_quote(dataset)}'"
        if extra_filter:
            flt += f" AND {extra_filter}"
        out, token = [], None
        while True:
            page = self.client.search_model_versions(flt, max_results=10000, page_token=token)
            out.extend(_to_registered(mv) for mv in page)
            token = page.token
            if not token:
                return out

    def latest_by_series(self, dataset: str) -> dict[str, RegisteredModel]:
        """The newest version of each series' model."""
        latest: dict[str, RegisteredModel] = {}
        for mv in self.search(dataset):
            cur = latest.get(mv.series_id)
            if cur is None or mv.version > cur.version:
                latest[mv.series_id] = mv
        return latest

    def find(self, dataset: str, series: str) -> RegisteredModel | None:
        """A series' newest model, found by its tags."""
        found = self.search(dataset, f"tags.series_id = '{_quote(series)}'")
        return max(found, key=lambda m: m.version) if found else None

    def read_artifact(self, model: RegisteredModel) -> bytes:
        path = _local_path(model.source)
        if path is not None:
            data = Path(path).read_bytes()
        else:
            from mlflow.artifacts import download_artifacts

            with tempfile.TemporaryDirectory() as tmp:
                data = Path(download_artifacts(artifact_uri=model.source, dst_path=tmp)).read_bytes()
        expected = model.tags.get("artifact_sha256")
        if not expected or _sha256(data) != expected:
            raise ArtifactIntegrityError(
                f"artifact of {model.name} v{model.version} at {model.source} does not match its recorded sha256"
            )
        return data

    def load_model(self, model: RegisteredModel) -> dict:
        return json.loads(self.read_artifact(model))

    # -- writing ---------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if not self.writable:
            raise ReadOnlyRegistryError(f"registry {self.tracking_uri} is opened read-only here")

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        root = self.artifact_root
        if "://" not in root:
            Path(root).mkdir(parents=True, exist_ok=True)
            root = Path(root).resolve().as_uri()
        try:
            return self.client.create_experiment(self.experiment, artifact_location=f"{root}/{self.experiment}")
        except MlflowException:  # created concurrently
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def register_many(self, entries: list[tuple[str, bytes, dict[str, str]]], run_name: str, run_tags: dict) -> list[RegisteredModel]:
        """Register many (name, artifact bytes, tags) in one MLflow run: one artifact upload,
        then one model version each."""
        self._check_writable()
        if not entries:
            return []
        run = self.client.create_run(self._experiment_id(), run_name=run_name, tags=run_tags)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                for name, data, _ in entries:
                    Path(tmp, f"{name}.json").write_bytes(data)
                self.client.log_artifacts(run.info.run_id, tmp, artifact_path="models")
            out = []
            for name, data, tags in entries:
                self._ensure_registered_model(name, tags)
                mv = self.client.create_model_version(
                    name,
                    source=f"{run.info.artifact_uri}/models/{name}.json",
                    run_id=run.info.run_id,
                    tags={**tags, "artifact_sha256": _sha256(data)},
                )
                out.append(_to_registered(mv))
            self.client.set_terminated(run.info.run_id, "FINISHED")
            return out
        except Exception:
            self.client.set_terminated(run.info.run_id, "FAILED")
            raise

    def _ensure_registered_model(self, name: str, tags: dict[str, str]) -> None:
        try:
            self.client.create_registered_model(
                name, tags={k: v for k, v in tags.items() if k in ("dataset", "series_id") or k.startswith("key.")}
            )
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise

    def set_production(self, model: RegisteredModel) -> None:
        self._check_writable()
        self.client.set_registered_model_alias(model.name, PRODUCTION_ALIAS, str(model.version))


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def _local_path(uri: str) -> str | None:
    if uri.startswith("file://"):
        return unquote(urlparse(uri).path)
    if "://" not in uri and os.path.isabs(uri):
        return uri
    return None
