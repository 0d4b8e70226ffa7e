"""Model registries on MLflow: one for training, a separate one for production.

Each series has its own registered model (``<dataset>.<key>_<value>...``); every version
carries tags (dataset, series id, each partition key value, algorithm, data fingerprint,
artifact sha256, metrics) so scoring and serving find a series' model by tags. The
artifact is the model's compact JSON form; its sha256 is checked on every load.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from itertools import chain, islice
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from mm_platform.config import DatasetConfig
from mm_platform.core.errors import UserError, one_line
from mm_platform.core.faults import fault_point
from mm_platform.core.vocabulary import (
    PRODUCTION_ALIAS,
    TAG_DATASET,
    TAG_SERIES_ID,
    TAG_SHA256,
    is_identity_tag,
    metric_tag,
)
from mm_platform.stores.artifacts import StoredArtifact, TaskArtifacts, read_verified, sha256

logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)
log = logging.getLogger(__name__)

CHECK_BATCH = 500  # registered models per query of aliased versions
REGISTER_CHUNK = 500  # models per chunk of register_many (artifacts written, rows inserted)
SEARCH_BATCH = 100  # names per search_registered_models query (client API)


class ReadOnlyRegistryError(PermissionError):
    """A write was attempted through a read-only registry handle."""


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: int
    source: str
    tags: dict[str, str]
    run_id: str | None = None

    @property
    def series_id(self) -> str:
        return self.tags.get(TAG_SERIES_ID, "")

    def metric(self, name: str) -> float | None:
        v = self.tags.get(metric_tag(name))
        return float(v) if v not in (None, "", "nan") else None


@dataclass(frozen=True)
class ModelSetRun:
    """The MLflow run a model set is registered in, started before its models exist, so the
    training tasks can write their artifacts into it (``task_artifacts``)."""

    run_id: str
    artifact_uri: str

    def task_artifacts(self) -> TaskArtifacts | None:
        return TaskArtifacts.under(self.artifact_uri)


def _to_registered(mv) -> RegisteredModel:
    return RegisteredModel(mv.name, int(mv.version), mv.source, dict(mv.tags), mv.run_id)


class ModelRegistry:
    """An MLflow tracking/registry store plus an artifact root."""

    def __init__(self, tracking_uri: str, artifact_root: str, experiment: str, writable: bool = True):
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.experiment = experiment
        self.writable = writable
        ensure_schema(tracking_uri)  # complete and at MLflow's head, or created atomically now
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._sql_ok = True  # direct queries for aliased versions, until they fail once
        self._statements = None

    # -- reading -------------------------------------------------------------------------------

    def search(self, dataset: str, extra_filter: str | None = None) -> list[RegisteredModel]:
        flt = f"tags.{TAG_DATASET} = '{_quote(dataset)}'"
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
        """The newest version of each series' model. On a database-backed registry: three
        queries through MLflow's ORM models that read only the newest versions' tags (MLflow's
        search loads every version with its tags as objects: ~2 s per 1,000 models)."""
        store = self._sql_store()
        if store is None:
            return self._latest_by_series_client(dataset)
        import sqlalchemy as sa
        from mlflow.entities.model_registry.model_version_stages import STAGE_DELETED_INTERNAL
        from mlflow.store.model_registry.dbmodels.models import SqlModelVersion, SqlModelVersionTag

        workspace = store._get_active_workspace()
        mv, t = SqlModelVersion, SqlModelVersionTag
        with store.ManagedSessionMaker() as session:
            # The newest version per model among the dataset's versions (tags.dataset, as search has it).
            newest = (
                session.query(mv.name.label("name"), sa.func.max(mv.version).label("version"))
                .join(t, sa.and_(t.workspace == workspace, t.name == mv.name, t.version == mv.version))
                .filter(mv.workspace == workspace, mv.current_stage != STAGE_DELETED_INTERNAL, t.key == TAG_DATASET, t.value == dataset)
                .group_by(mv.name)
                .subquery()
            )
            versions = (
                session.query(mv.name, mv.version, mv.source, mv.run_id)
                .join(newest, sa.and_(mv.name == newest.c.name, mv.version == newest.c.version))
                .filter(mv.workspace == workspace)
                .all()
            )
            tags: dict[str, dict[str, str]] = {}
            rows = (
                session.query(t.name, t.key, t.value)
                .join(newest, sa.and_(t.name == newest.c.name, t.version == newest.c.version))
                .filter(t.workspace == workspace)
            )
            for name, key, value in rows:
                tags.setdefault(name, {})[sys.intern(key)] = value  # one key string for every model
        latest: dict[str, RegisteredModel] = {}
        for name, version, source, run_id in versions:
            m = RegisteredModel(name, int(version), source, tags.get(name, {}), run_id)
            cur = latest.get(m.series_id)
            if cur is None or m.version > cur.version:
                latest[m.series_id] = m
        return latest

    def _latest_by_series_client(self, dataset: str) -> dict[str, RegisteredModel]:
        latest: dict[str, RegisteredModel] = {}
        for mv in self.search(dataset):
            cur = latest.get(mv.series_id)
            if cur is None or mv.version > cur.version:
                latest[mv.series_id] = mv
        return latest

    def versions_of(self, dataset: str, series: str) -> list[RegisteredModel]:
        """Every version of a series' model, found by its tags."""
        return self.search(dataset, f"tags.{TAG_SERIES_ID} = '{_quote(series)}'")

    def find(self, dataset: str, series: str) -> RegisteredModel | None:
        """A series' newest model, found by its tags."""
        found = self.versions_of(dataset, series)
        return max(found, key=lambda m: m.version) if found else None

    def aliased_by_series(
        self, dataset: str, alias: str = PRODUCTION_ALIAS, tag_keys: Iterable[str] | None = None
    ) -> dict[str, RegisteredModel]:
        """Each series' version that ``alias`` points at (its production model). On a
        database-backed registry: two queries through MLflow's ORM models, not a client call
        per page of registered models and versions (thousands of series in a fraction of a second).
        ``tag_keys``: read only these tags (the series id always), e.g. for scoring."""
        store = self._sql_store()
        if store is None:
            found = self._aliased_by_series_client(dataset, alias)
            if tag_keys is not None:
                keep = {*tag_keys, TAG_SERIES_ID}
                found = {sid: replace(m, tags={k: v for k, v in m.tags.items() if k in keep}) for sid, m in found.items()}
            return found
        import sqlalchemy as sa
        from mlflow.entities.model_registry.model_version_stages import STAGE_DELETED_INTERNAL
        from mlflow.store.model_registry.dbmodels.models import (
            SqlModelVersion,
            SqlModelVersionTag,
            SqlRegisteredModelAlias,
            SqlRegisteredModelTag,
        )

        workspace = store._get_active_workspace()
        mv = SqlModelVersion

        def aliased(query, name_col, version_col):
            a, rt = SqlRegisteredModelAlias, SqlRegisteredModelTag
            return (
                query.join(a, sa.and_(a.workspace == workspace, a.name == name_col, a.version == version_col))
                .join(rt, sa.and_(rt.workspace == workspace, rt.name == name_col, rt.key == TAG_DATASET))
                .filter(a.alias == alias, rt.value == dataset)
            )

        with store.ManagedSessionMaker() as session:
            versions = aliased(session.query(mv.name, mv.version, mv.source, mv.run_id), mv.name, mv.version).filter(
                mv.workspace == workspace, mv.current_stage != STAGE_DELETED_INTERNAL
            ).all()
            t = SqlModelVersionTag
            tags: dict[str, dict[str, str]] = {}
            query = aliased(session.query(t.name, t.key, t.value), t.name, t.version).filter(t.workspace == workspace)
            if tag_keys is not None:
                query = query.filter(t.key.in_(sorted({*tag_keys, TAG_SERIES_ID})))
            for name, key, value in query:
                tags.setdefault(name, {})[sys.intern(key)] = value  # one key string for every model
        out = {}
        for name, version, source, run_id in versions:
            m = RegisteredModel(name, int(version), source, tags.get(name, {}), run_id)
            out[m.series_id] = m
        return out

    def _aliased_by_series_client(self, dataset: str, alias: str) -> dict[str, RegisteredModel]:
        aliases, token = {}, None
        while True:
            page = self.client.search_registered_models(f"tags.dataset = '{_quote(dataset)}'", max_results=1000, page_token=token)
            for rm in page:
                if alias in (rm.aliases or {}):
                    aliases[rm.name] = int(rm.aliases[alias])
            token = page.token
            if not token:
                break
        return {mv.series_id: mv for mv in self.search(dataset) if aliases.get(mv.name) == mv.version}

    def read_artifact(self, model: RegisteredModel) -> bytes:
        """The model's artifact, checked against the sha256 recorded at registration."""
        return read_verified(model.source, model.tags.get(TAG_SHA256), f"artifact of {model.name} v{model.version}")

    def load_model(self, model: RegisteredModel) -> dict:
        return json.loads(self.read_artifact(model))


    # -- production lookups, one series or a batch of models at a time (real-time serving) ------
    #
    # MLflow's client API works with any registry but is slow for this (get_model_version_by_alias
    # loads the whole registered model; search_registered_models every version and tag). On a
    # SQL-backed registry: read-only queries built from MLflow's own ORM models. If they ever
    # fail (an MLflow release with other internals) the client API is used from then on.

    def aliased_version(self, name: str, alias: str = PRODUCTION_ALIAS) -> RegisteredModel | None:
        """The version ``alias`` of registered model ``name`` points at, with its tags, or None."""
        return self._fast_or_api(self._lookup_sql, self._lookup_api, name, alias)

    def aliased_versions(self, names: list[str], alias: str = PRODUCTION_ALIAS) -> dict[str, int | None]:
        """Which version ``alias`` points at now for each registered model (None: gone)."""
        return self._fast_or_api(self._production_versions_sql, self._production_versions_api, names, alias)

    def _fast_or_api(self, sql, api, arg, alias):
        if self._sql_ok:
            try:
                return sql(arg, alias)
            except Exception as exc:  # noqa: BLE001 - any failure of the internals: use the public API
                self._sql_ok = False
                log.info("direct registry queries unavailable (%s: %s); using MLflow's client API", type(exc).__name__, exc)
        return api(arg, alias)

    def _lookup_api(self, name: str, alias: str) -> RegisteredModel | None:
        try:
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None  # no such model, or it has no production alias
            raise
        return RegisteredModel(mv.name, int(mv.version), mv.source, dict(mv.tags), mv.run_id)

    def _production_versions_api(self, names: list[str], alias: str) -> dict[str, int | None]:
        out: dict[str, int | None] = dict.fromkeys(names)
        for i in range(0, len(names), SEARCH_BATCH):
            chunk = names[i : i + SEARCH_BATCH]
            # Names come from model_name(): letters, digits, "_", "-" and "." only.
            flt = "name IN (" + ",".join(f"'{n}'" for n in chunk) + ")"
            token = None
            while True:
                page = self.client.search_registered_models(flt, max_results=len(chunk), page_token=token)
                for rm in page:
                    version = (rm.aliases or {}).get(alias)
                    out[rm.name] = int(version) if version is not None else None
                token = page.token
                if not token:
                    break
        return out

    def _alias_statements(self):
        """MLflow's SQL store and two statements built once from its ORM models: a series'
        production version with its tags (one joined query), and the production versions of
        many models (one indexed query)."""
        if self._statements is None:
            from mlflow.entities.model_registry.model_version_stages import STAGE_DELETED_INTERNAL
            from mlflow.store.model_registry.dbmodels.models import SqlModelVersion as Version
            from mlflow.store.model_registry.dbmodels.models import SqlModelVersionTag as Tag
            from mlflow.store.model_registry.dbmodels.models import SqlRegisteredModelAlias as Alias
            from sqlalchemy import and_, bindparam, select

            store = self._sql_store()
            if store is None:
                raise TypeError("the registry store is not SQL")
            workspace = store._get_active_workspace()
            lookup = (
                select(Version.version, Version.source, Version.run_id, Tag.key, Tag.value)
                .select_from(Alias)
                .join(Version, and_(Version.workspace == Alias.workspace, Version.name == Alias.name,
                                    Version.version == Alias.version))
                .outerjoin(Tag, and_(Tag.workspace == Version.workspace, Tag.name == Version.name,
                                     Tag.version == Version.version))
                .where(Alias.workspace == workspace, Alias.name == bindparam("name"), Alias.alias == bindparam("alias"),
                       Version.current_stage != STAGE_DELETED_INTERNAL)
            )
            versions = select(Alias.name, Alias.version).where(
                Alias.workspace == workspace, Alias.alias == bindparam("alias"), Alias.name.in_(bindparam("names", expanding=True))
            )
            self._statements = (store, lookup, versions)
        return self._statements

    def _lookup_sql(self, name: str, alias: str) -> RegisteredModel | None:
        store, lookup, _ = self._alias_statements()
        with store.ManagedSessionMaker() as session:
            rows = session.execute(lookup, {"name": name, "alias": alias}).all()
        if not rows:
            return None
        version, source, run_id = rows[0][:3]
        tags = {key: value for *_, key, value in rows if key is not None}
        return RegisteredModel(name, int(version), source, tags, run_id)

    def _production_versions_sql(self, names: list[str], alias: str) -> dict[str, int | None]:
        store, _, versions = self._alias_statements()
        out: dict[str, int | None] = dict.fromkeys(names)
        with store.ManagedSessionMaker() as session:
            for i in range(0, len(names), CHECK_BATCH):
                for name, version in session.execute(versions, {"names": names[i : i + CHECK_BATCH], "alias": alias}):
                    out[name] = int(version)
        return out

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

    def begin_run(self, run_name: str, run_tags: dict) -> ModelSetRun:
        """A new run for ``register_many(..., run=…)``, before its models exist."""
        self._check_writable()
        run = self.client.create_run(self._experiment_id(), run_name=run_name, tags=run_tags)
        return ModelSetRun(run.info.run_id, run.info.artifact_uri)

    def end_run(self, run: ModelSetRun, failed: bool = False) -> None:
        """Close a run ``register_many`` did not: FAILED drops what the tasks wrote into it."""
        if failed and (written := run.task_artifacts()) is not None:
            written.remove()
        self.client.set_terminated(run.run_id, "FAILED" if failed else "FINISHED")

    def register_many(
        self,
        entries: Iterable[tuple[str, bytes | StoredArtifact, dict[str, str]]],
        run_name: str,
        run_tags: dict,
        alias: str | None = None,
        run: ModelSetRun | None = None,
    ) -> list[RegisteredModel]:
        """Register many (name, artifact bytes, tags) in one MLflow run: one artifact upload,
        then one new model version each (optionally moving ``alias`` to it). ``run``: a run
        from ``begin_run`` instead of a new one; an entry's artifact may then be a
        ``StoredArtifact`` a training task already wrote into it (recorded, not uploaded).

        On a database-backed registry (SQLite, PostgreSQL, MySQL, SQL Server) the versions,
        tags and aliases are inserted into MLflow's own tables in one transaction: thousands
        of versions in a second or two, and all or nothing. ``entries`` is consumed
        ``REGISTER_CHUNK`` at a time (artifacts to a temp folder, rows inserted), so the
        caller can stream them and the driver's memory does not grow with the model set; the
        transaction commits only after the artifacts are uploaded. Other registries (an
        MLflow server over HTTP) get one client call per model.
        """
        self._check_writable()
        entries = iter(entries)
        first = list(islice(entries, REGISTER_CHUNK))
        if not first:
            if run is not None:
                self.end_run(run)
            return []
        chunks = chain([first], iter(lambda: list(islice(entries, REGISTER_CHUNK)), []))
        if run is None:
            created = self.client.create_run(self._experiment_id(), run_name=run_name, tags=run_tags)
            run = ModelSetRun(created.info.run_id, created.info.artifact_uri)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                folder, copied, uploads = Path(tmp), {}, []
                (folder / "models").mkdir()

                def prepared():
                    for chunk in chunks:
                        chunk = self._with_own_shared(chunk, run.artifact_uri, folder / "shared", copied)
                        out = []
                        for name, data, tags in chunk:
                            if isinstance(data, StoredArtifact):  # written by its training task
                                out.append((name, data.source, {**tags, TAG_SHA256: data.sha256}))
                                continue
                            (folder / "models" / f"{name}.json").write_bytes(data)
                            uploads.append(name)
                            out.append((name, f"{run.artifact_uri}/models/{name}.json", {**tags, TAG_SHA256: sha256(data)}))
                        yield out

                # Resolved before the transaction: the client's own lookup reads the run from
                # the tracking store, which may be the registry's database (locked by then).
                repo = get_artifact_repository(run.artifact_uri, tracking_uri=self.client.tracking_uri)

                def upload():
                    if uploads or copied:
                        repo.log_artifacts(tmp)

                store = self._sql_store()
                if store is not None:
                    out = _bulk_register(store, prepared(), run.run_id, alias, before_commit=upload)
                else:
                    ready = [p for chunk in prepared() for p in chunk]
                    upload()
                    out = []
                    for name, source, tags in ready:
                        self._ensure_registered_model(name, tags)
                        mv = _to_registered(self.client.create_model_version(name, source=source, run_id=run.run_id, tags=tags))
                        if alias:
                            self.client.set_registered_model_alias(name, alias, str(mv.version))
                        out.append(mv)
            self.end_run(run)
            return out
        except Exception:
            self.end_run(run, failed=True)
            raise

    # -- shared artifacts (the global family's shared model) ----------------------------------
    #
    # A per-series model of the global family refers to one shared artifact (the LightGBM model
    # of all series, or of its group) by location and sha256. The shared artifact is stored once
    # per training run in the registry's own artifact store (``store_shared``), and a registry
    # never depends on another one's store: registering per-series models that refer to a
    # shared artifact elsewhere (promotion copies training's models into production) copies
    # the shared artifact once, verified, into this registry's run and points them at the copy.

    def store_shared(self, texts: list[str], run_name: str, run_tags: dict) -> dict[str, str]:
        """Store shared artifacts (each text once, named by its sha256) in one MLflow run of
        this registry's experiment; ``{sha256: artifact URI}``."""
        self._check_writable()
        if not texts:
            return {}
        run = self.client.create_run(self._experiment_id(), run_name=run_name, tags=run_tags)
        try:
            out = {}
            with tempfile.TemporaryDirectory() as tmp:
                for text in texts:
                    data = text.encode()
                    sha = sha256(data)
                    Path(tmp, f"{sha}.json").write_bytes(data)
                    out[sha] = f"{run.info.artifact_uri}/shared/{sha}.json"
                self.client.log_artifacts(run.info.run_id, tmp, artifact_path="shared")
            self.client.set_terminated(run.info.run_id, "FINISHED")
            return out
        except Exception:
            self.client.set_terminated(run.info.run_id, "FAILED")
            raise

    def _owns(self, uri: str) -> bool:
        root = self.artifact_root if "://" in self.artifact_root else Path(self.artifact_root).resolve().as_uri()
        return uri.startswith(root.rstrip("/") + "/")

    def _with_own_shared(self, entries, run_artifact_uri: str, folder: Path, copied: dict[str, str]):
        """``entries`` with every shared-artifact reference pointing into this registry: a
        referenced shared artifact stored elsewhere is read (sha256-verified) once and written
        to ``folder`` (logged as the run's ``shared/``). ``copied``: sha256 -> the copy's URI,
        kept across calls of one run."""
        from mm_platform.forecasting.global_lgbm import shared_refs

        out = []
        for name, data, tags in entries:
            # (an artifact a training task wrote refers to this registry's own shared models)
            if isinstance(data, StoredArtifact) or b'"shared_sha256"' not in data:
                out.append((name, data, tags))
                continue
            artifact = json.loads(data)
            refs = [r for r in shared_refs(artifact) if r.get("shared_uri") and not self._owns(r["shared_uri"])]
            if not refs:
                out.append((name, data, tags))
                continue
            for ref in refs:
                sha = str(ref["shared_sha256"])
                if sha not in copied:
                    blob = read_verified(ref["shared_uri"], sha, f"shared model {sha[:12]} of {name}")
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / f"{sha}.json").write_bytes(blob)
                    copied[sha] = f"{run_artifact_uri}/shared/{sha}.json"
                ref["shared_uri"] = copied[sha]
            out.append((name, json.dumps(artifact, separators=(",", ":")).encode(), tags))
        return out

    def _sql_store(self):
        from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

        store = self.client._get_registry_client().store
        return store if isinstance(store, SqlAlchemyStore) else None

    def _ensure_registered_model(self, name: str, tags: dict[str, str]) -> None:
        try:
            self.client.create_registered_model(
                name, tags={k: v for k, v in tags.items() if is_identity_tag(k)}
            )
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise

    def set_production(self, model: RegisteredModel) -> None:
        self._check_writable()
        self.client.set_registered_model_alias(model.name, PRODUCTION_ALIAS, str(model.version))


def training_registry(cfg: DatasetConfig) -> ModelRegistry:
    """The dataset's training registry (where every trained model is registered)."""
    s = cfg.storage
    return ModelRegistry(s.training_registry_uri, s.training_artifact_root, f"{cfg.name}-training")


def production_registry(cfg: DatasetConfig, writable: bool = False) -> ModelRegistry:
    """The dataset's production registry; read-only unless asked (only promotion and rollback write)."""
    s = cfg.storage
    return ModelRegistry(s.production_registry_uri, s.production_artifact_root, f"{cfg.name}-production", writable=writable)


def production_by_series(production, dataset: str, tag_keys: Iterable[str] | None = None) -> dict[str, RegisteredModel]:
    """Each series' production model: the version its ``production`` alias points at
    (``tag_keys``: only these tags)."""
    return production.aliased_by_series(dataset, PRODUCTION_ALIAS, tag_keys=tag_keys)


def _bulk_register(
    store, chunks: Iterable[list[tuple[str, str, dict[str, str]]]], run_id: str, alias: str | None,
    before_commit: Callable[[], None] = lambda: None,
) -> list[RegisteredModel]:
    """New model versions for many registered models in one registry transaction, written a
    chunk of (name, source, tags) at a time (each chunk's rows inserted, none kept in the session);
    ``before_commit`` runs last inside the transaction (the artifacts' upload)."""
    import sqlalchemy as sa
    from mlflow.entities.model_registry.model_version_stages import STAGE_NONE
    from mlflow.entities.model_registry.model_version_status import ModelVersionStatus
    from mlflow.store.model_registry.dbmodels.models import (
        SqlModelVersion,
        SqlModelVersionTag,
        SqlRegisteredModel,
        SqlRegisteredModelAlias,
        SqlRegisteredModelTag,
    )
    from mlflow.utils.time import get_current_time_millis
    from mlflow.utils.validation import _validate_model_name

    now = get_current_time_millis()
    ready = ModelVersionStatus.to_string(ModelVersionStatus.READY)
    # The workspace column MLflow's own writes fill (``_with_workspace_field``), where the schema has it.
    ws = {"workspace": store._get_active_workspace()} if hasattr(SqlModelVersion, "workspace") else {}
    seen: set[str] = set()
    out: list[RegisteredModel] = []
    # MLflow's session wraps any error in an MlflowException; errors that are not the
    # database's (from the entries, the artifacts' upload) are raised as themselves.
    failure: list[BaseException] = []
    try:
        with store.ManagedSessionMaker(read_only=False) as session:
            try:
                for prepared in chunks:
                    names = [name for name, _, _ in prepared]
                    for name in names:
                        _validate_model_name(name)
                        if name in seen:
                            raise ValueError("register_many got the same model name twice")
                        seen.add(name)
                    max_version = {
                        n: int(v)
                        for n, v in session.query(SqlModelVersion.name, sa.func.max(SqlModelVersion.version))
                        .filter(SqlModelVersion.name.in_(names))
                        .group_by(SqlModelVersion.name)
                    }
                    existing = {n for (n,) in session.query(SqlRegisteredModel.name).filter(SqlRegisteredModel.name.in_(names))}
                    # Plain rows through SQLAlchemy's bulk INSERT (executemany), not ORM objects:
                    # a model version with its tags is a dozen or more rows.
                    models, model_tags, versions, version_tags, done = [], [], [], [], []
                    for name, source, tags in prepared:
                        version = max_version.get(name, 0) + 1
                        if name not in existing:
                            models.append({"name": name, "creation_time": now, "last_updated_time": now, **ws})
                            model_tags += [{"name": name, "key": k, "value": v, **ws} for k, v in tags.items() if is_identity_tag(k)]
                        versions.append({"name": name, "version": version, "creation_time": now, "last_updated_time": now,
                                         "source": source, "storage_location": source, "run_id": run_id, "status": ready,
                                         "current_stage": STAGE_NONE, **ws})
                        version_tags += [{"name": name, "version": version, "key": k, "value": v, **ws} for k, v in tags.items()]
                        done.append(RegisteredModel(name, version, source, tags, run_id))
                    if alias:
                        session.query(SqlRegisteredModelAlias).filter(
                            SqlRegisteredModelAlias.name.in_(names), SqlRegisteredModelAlias.alias == alias
                        ).delete(synchronize_session=False)
                    for model, rows in ((SqlRegisteredModel, models), (SqlRegisteredModelTag, model_tags),
                                        (SqlModelVersion, versions), (SqlModelVersionTag, version_tags),
                                        (SqlRegisteredModelAlias, [{"name": m.name, "alias": alias, "version": m.version, **ws}
                                                                   for m in done] if alias else [])):
                        if rows:
                            session.execute(sa.insert(model), rows)
                    out += done
                fault_point("registry.before_commit")  # versions written, transaction not committed
                before_commit()
            except Exception as exc:
                if not isinstance(exc, sa.exc.SQLAlchemyError):
                    failure.append(exc)
                raise
    except MlflowException:
        if failure:
            raise failure[0] from None
        raise
    return out


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


# -- creating a registry store -------------------------------------------------------------------
#
# MLflow creates its schema on first use with ~330 DDL statements (create_all, then alembic
# migrations) that are not one transaction on SQLite or MySQL: a process killed in the middle
# leaves a database that every later open fails on ("table logged_models already exists"), and
# two processes creating the same new database at once collide. So a registry database is
# created here, before MLflow opens it:
# - SQLite: under an exclusive file lock, MLflow creates its schema in a temporary file in the
#   same folder, which is then renamed into place: the database is absent or complete, never half.
#   One left half-created by a killed creation (it holds no runs or models) is replaced the same
#   way. One with models but an older MLflow schema is reported (like MLflow does): migrating it is
#   `mm-platform doctor --repair` (a copy is migrated, then renamed into place), run when no other
#   process has it open (a process holding the old file would go on reading and writing it).
# - PostgreSQL / MySQL: first-time creation under an advisory lock (pg_advisory_lock, GET_LOCK);
#   an interrupted creation (no runs or models) is resumed there; a schema that is still
#   incomplete, or behind the head with data, is reported with how to repair it (a server
#   database is never dropped or rewritten automatically).

SCHEMA_FAULT_POINT = "registry.creating_schema"
_SQL_BACKENDS = ("sqlite", "postgresql", "mysql", "mariadb", "mssql")
_READY: set[str] = set()  # URIs found complete in this process (a complete schema stays complete)


class RegistrySchemaError(UserError):
    """A registry database is half-created or behind MLflow's schema and cannot be repaired here."""


@dataclass(frozen=True)
class SchemaState:
    """What a registry database holds: ``missing`` (nothing yet: the first run creates it),
    ``ok``, ``interrupted`` (a creation was killed: incomplete schema, no runs or models),
    ``outdated`` (an older MLflow's schema, with models), ``broken`` (incomplete and
    holding data), ``unreachable``, or ``not_sql`` (an MLflow server: not checked here)."""

    uri: str
    status: str
    detail: str = ""
    repair: str = ""

    @property
    def healthy(self) -> bool:
        return self.status in ("ok", "missing", "not_sql")


def _backend(uri: str) -> str | None:
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    return scheme if scheme in _SQL_BACKENDS else None


def _sqlite_path(uri: str) -> Path | None:
    import sqlalchemy as sa

    db = sa.make_url(uri).database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).resolve()


def _redacted(uri: str) -> str:
    import sqlalchemy as sa

    try:
        return sa.make_url(uri).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for messages
        return uri


def _alembic_script():
    global _SCRIPT
    if _SCRIPT is None:
        from alembic.script import ScriptDirectory
        from mlflow.store.db.utils import _get_alembic_config

        _SCRIPT = ScriptDirectory.from_config(_get_alembic_config(""))
    return _SCRIPT


_SCRIPT = None


def _head_revision() -> str:
    heads = _alembic_script().get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"MLflow's migration scripts have {len(heads)} heads: {heads}")
    return heads[0]


def _known_revision(rev: str) -> bool:
    try:
        return _alembic_script().get_revision(rev) is not None
    except Exception:  # noqa: BLE001 - alembic raises its own errors for unknown ids
        return False


def _user_rows(conn, tables: set[str]) -> int:
    """Runs, models and non-default experiments: what a killed creation never holds."""
    import sqlalchemy as sa

    total = 0
    for table, where in (("runs", ""), ("registered_models", ""), ("model_versions", ""), ("logged_models", ""),
                         ("experiments", " WHERE name <> 'Default'")):
        if table in tables:
            total += int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}{where}")).scalar() or 0)
    return total


def schema_state(uri: str) -> SchemaState:
    """Inspect a registry database without creating or changing anything."""
    import sqlalchemy as sa

    backend = _backend(uri)
    if backend is None:
        return SchemaState(uri, "not_sql", "not a database URI: MLflow's server owns its schema")
    if backend == "sqlite":
        path = _sqlite_path(uri)
        if path is not None and (not path.exists() or path.stat().st_size == 0):
            return SchemaState(uri, "missing", "not created yet (the first run creates it)")
    shown = _redacted(uri)
    engine = sa.create_engine(uri, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            names = set(sa.inspect(conn).get_table_names())
            tables = {t for t in names if not t.startswith("alembic_")}
            if not tables:
                return SchemaState(uri, "missing", "empty database (the first run creates the schema)")
            rev = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() if "alembic_version" in names else None
            from mlflow.store.db.utils import Base  # every table of MLflow's current schema

            absent = sorted(set(Base.metadata.tables) - tables)
            head = _head_revision()
            if rev == head and not absent:
                return SchemaState(uri, "ok", f"MLflow schema at head {head}")
            try:
                rows = _user_rows(conn, tables)
            except sa.exc.DBAPIError:
                rows = -1  # unreadable tables: treat as holding data (never discarded)
    except sa.exc.DBAPIError as err:
        return SchemaState(uri, "unreachable", f"cannot open {shown}: {' '.join(str(err.orig or err).split())[:300]}",
                           "check the URI, the server and the credentials")
    finally:
        engine.dispose()
    found = f"revision {rev or 'none'}, head {head}, {len(absent)} of MLflow's tables missing"
    if rows == 0:  # what a killed creation leaves (or an unused old schema): recreating it loses nothing
        if backend == "sqlite":
            repair = "it holds no runs or models: the next run (or `mm-platform doctor --repair`) recreates it"
        else:
            repair = (f"it holds no runs or models: drop its tables (or the database) and rerun, "
                      f"or back it up and run `mlflow db upgrade {shown}`")
        return SchemaState(uri, "interrupted", f"MLflow schema creation was interrupted ({found})", repair)
    if rev and rev != head and _known_revision(rev):
        if backend == "sqlite":
            repair = ("stop the processes using it, back it up, then run `mm-platform doctor --repair` "
                      "(migrates a copy and renames it into place)")
        else:
            repair = f"back the database up, then run `mlflow db upgrade {shown}`"
        return SchemaState(uri, "outdated", f"MLflow schema of an older version ({found})", repair)
    return SchemaState(
        uri, "broken", f"incomplete MLflow schema holding runs or models ({found})",
        f"restore it from a backup, or back it up and run `mlflow db upgrade {shown}`",
    )


def ensure_schema(uri: str, migrate: bool = False) -> None:
    """Make sure the registry database at ``uri`` is complete and at MLflow's head revision,
    creating it atomically if absent or left half-created (see above), and (``migrate``) migrating
    an outdated SQLite one atomically. Otherwise raises ``RegistrySchemaError`` saying how to repair."""
    backend = _backend(uri)
    if backend is None or uri in _READY:
        return
    state = schema_state(uri)
    if state.status == "ok":
        _READY.add(uri)
        return
    if state.status == "unreachable":
        raise RegistrySchemaError(f"registry database: {state.detail}: {state.repair}")
    if backend == "sqlite" and _sqlite_path(uri) is not None:
        _ensure_sqlite(uri, migrate)
    else:
        _ensure_server(uri, backend)
    _READY.add(uri)


def _ensure_sqlite(uri: str, migrate: bool) -> None:
    import sqlalchemy as sa

    path = _sqlite_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_file_lock(path.with_name(path.name + ".lock")):
        state = schema_state(uri)  # again: another process may have created it meanwhile
        if state.status == "ok":
            return
        if state.status not in ("missing", "interrupted", *(("outdated",) if migrate else ())):
            raise RegistrySchemaError(f"registry database {path}: {state.detail}: {state.repair}")
        for stale in path.parent.glob(f".{path.name}.creating-*"):  # left by a killed creation
            stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.creating-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            if state.status == "outdated":
                _sqlite_copy(path, tmp)
            engine = _mlflow_engine(sa.make_url(uri).set(database=str(tmp)).render_as_string(hide_password=False))
            try:
                _create_or_migrate(engine, fresh=state.status != "outdated")
            except Exception as err:
                if state.status != "outdated":
                    raise
                raise RegistrySchemaError(
                    f"registry database {path}: migrating a copy of it to MLflow's schema failed "
                    f"({one_line(err)[:300]}); the database is unchanged: back it up, then run `mlflow db upgrade {uri}`"
                ) from None
            finally:
                engine.dispose()
            # Schema complete in the temporary file, not yet in place (":<file>" targets one registry).
            fault_point(SCHEMA_FAULT_POINT)
            fault_point(f"{SCHEMA_FAULT_POINT}:{path.name}")
            for suffix in ("-journal", "-wal", "-shm"):  # a killed writer's journal must not meet the new file
                path.with_name(path.name + suffix).unlink(missing_ok=True)
            os.replace(tmp, path)  # the commit point
            _fsync_dir(path.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        done = schema_state(uri)
        if done.status != "ok":
            raise RegistrySchemaError(f"registry database {path}: {done.detail} after creating it")


def _ensure_server(uri: str, backend: str) -> None:
    shown = _redacted(uri)
    with _advisory_lock(uri, backend):
        state = schema_state(uri)
        if state.status == "ok":
            return
        if state.status not in ("missing", "interrupted"):
            raise RegistrySchemaError(f"registry database {shown}: {state.detail}: {state.repair}")
        # An interrupted creation (no runs or models) is resumed: on PostgreSQL MLflow's migrations
        # are one transaction, so a kill leaves at most its first tables, which the resumed creation
        # keeps; on MySQL (DDL is not transactional) it may fail, and then says how to repair.
        engine = _mlflow_engine(uri)
        try:
            _create_or_migrate(engine, fresh=True)
            fault_point(SCHEMA_FAULT_POINT)
        except Exception as err:
            if state.status == "missing":
                raise
            raise RegistrySchemaError(
                f"registry database {shown}: {state.detail}; resuming it failed ({one_line(err)[:300]}): {state.repair}"
            ) from None
        finally:
            engine.dispose()
        done = schema_state(uri)
        if done.status != "ok":
            raise RegistrySchemaError(f"registry database {shown}: {done.detail} after creating it: {done.repair}")


def _mlflow_engine(uri: str):
    from mlflow.store.db.utils import create_sqlalchemy_engine

    return create_sqlalchemy_engine(uri)


def _create_or_migrate(engine, fresh: bool) -> None:
    # MLflow's own creation and migration code (what its stores run on first use).
    from mlflow.store.db.utils import _initialize_tables, _upgrade_db

    if fresh:
        _initialize_tables(engine)
    else:
        _upgrade_db(engine)


def _sqlite_copy(src: Path, dst: Path) -> None:
    import sqlite3

    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)  # a consistent copy even if another process reads it meanwhile
    finally:
        a.close()
        b.close()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _exclusive_file_lock:
    """fcntl.flock on ``path`` (created if needed); the kernel releases it if the process dies."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the lock


class _advisory_lock:
    """A database-wide lock for first-time creation: pg_advisory_lock on PostgreSQL, GET_LOCK on
    MySQL/MariaDB (both released by the server if this process dies); SQL Server: none."""

    _KEY = 0x6D6D5F726567  # "mm_reg"

    def __init__(self, uri: str, backend: str):
        self.uri, self.backend = uri, backend

    def __enter__(self):
        import sqlalchemy as sa

        self.engine = sa.create_engine(self.uri, poolclass=sa.pool.NullPool)
        self.conn = None
        if self.backend not in ("postgresql", "mysql", "mariadb"):
            return self
        self.conn = self.engine.connect()
        if self.backend == "postgresql":
            self.conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": self._KEY})
        else:
            name = f"mm_platform.registry.{self.engine.url.database}"[:64]
            got = self.conn.execute(sa.text("SELECT GET_LOCK(:n, 600)"), {"n": name}).scalar()
            if got != 1:
                self.conn.close()
                raise RegistrySchemaError(f"registry database {_redacted(self.uri)}: lock {name} not obtained in 600 s")
        self.conn.commit()  # only the lock is kept: no transaction stays open
        return self

    def __exit__(self, *exc):
        import sqlalchemy as sa

        try:
            if self.conn is not None:
                if self.backend == "postgresql":
                    self.conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self._KEY})
                else:
                    self.conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"),
                                      {"n": f"mm_platform.registry.{self.engine.url.database}"[:64]})
                self.conn.close()
        finally:
            self.engine.dispose()
