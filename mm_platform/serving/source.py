"""Read-only access to the production registry for one dataset: find a series' production
model, check which version the ``production`` alias points at (in batches), and load a
verified artifact into a :class:`PreparedModel`.

Both registry reads have two implementations with the same answers:

* MLflow's public client API (``get_model_version_by_alias``, ``search_registered_models``),
  which works with any registry (SQL database or MLflow server). It is slow for this use:
  ``search_registered_models`` loads every version and tag of each model it returns (about
  1-3 ms per model with 10,000 models on SQLite) and ``get_model_version_by_alias`` first
  loads the whole registered model (8-20 ms).
* For a SQL-backed registry, read-only queries built from MLflow's own ORM models and run
  in its store's sessions: one joined query for a series' production version and its tags
  (about a millisecond), one indexed query for the production versions of hundreds of
  models (version checks).

The SQL path is used when the registry is SQL-backed; if it ever fails (e.g. an MLflow
release with different internals) the source logs it once and uses the public API from then
on. All of it is blocking I/O; the cache runs it on a small thread pool.
"""

from __future__ import annotations

import json
import logging

from mlflow.exceptions import MlflowException

from mm_platform.registry import PRODUCTION_ALIAS, ModelRegistry, RegisteredModel, model_name, series_id
from mm_platform.serving.model import PreparedModel

log = logging.getLogger(__name__)

CHECK_BATCH = 500  # registered models per version check (the cache's unit of work)
SEARCH_BATCH = 100  # names per search_registered_models query


class ProductionSource:
    def __init__(self, registry: ModelRegistry, dataset: str, keys: list[str]):
        if registry.writable:
            raise ValueError("serving reads the production registry through a read-only handle")
        self.registry = registry
        self.dataset = dataset
        self.keys = list(keys)
        self._sql_ok = True  # until a direct SQL read fails once
        self._statements = None

    # -- which model ------------------------------------------------------------------------

    def lookup(self, keys: dict[str, str]) -> RegisteredModel | None:
        """The version the series' ``production`` alias points at, or None.

        The registered model's name follows ``registry.model_name`` (a direct lookup, no
        search); the version's tags (dataset, series id, key values) must confirm the series.
        """
        name = model_name(self.dataset, keys)
        model = self._with_fallback(self._lookup_sql, self._lookup_api, name)
        if model is None:
            return None
        expected = {"dataset": self.dataset, "series_id": series_id(keys), **{f"key.{k}": v for k, v in keys.items()}}
        mismatch = {k: model.tags.get(k) for k, v in expected.items() if model.tags.get(k) != v}
        if mismatch:
            log.warning("model %s v%s does not carry the tags of series %s: %s", name, model.version, series_id(keys), mismatch)
            return None
        return model

    def production_versions(self, names: list[str]) -> dict[str, int | None]:
        """Which version each registered model's ``production`` alias points at now (None: gone)."""
        return self._with_fallback(self._production_versions_sql, self._production_versions_api, names)

    def _with_fallback(self, sql, api, arg):
        if self._sql_ok:
            try:
                return sql(arg)
            except Exception as exc:
                self._sql_ok = False
                log.info("direct registry queries unavailable (%s: %s); using MLflow's client API", type(exc).__name__, exc)
        return api(arg)

    # -- MLflow client API ----------------------------------------------------------------------

    def _lookup_api(self, name: str) -> RegisteredModel | None:
        try:
            mv = self.registry.client.get_model_version_by_alias(name, PRODUCTION_ALIAS)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None  # no such model, or it has no production alias
            raise
        return RegisteredModel(mv.name, int(mv.version), mv.source, dict(mv.tags), mv.run_id)

    def _production_versions_api(self, names: list[str]) -> dict[str, int | None]:
        out: dict[str, int | None] = dict.fromkeys(names)
        for i in range(0, len(names), SEARCH_BATCH):
            chunk = names[i : i + SEARCH_BATCH]
            # Names come from model_name(): letters, digits, "_", "-" and "." only.
            flt = "name IN (" + ",".join(f"'{n}'" for n in chunk) + ")"
            token = None
            while True:
                page = self.registry.client.search_registered_models(flt, max_results=len(chunk), page_token=token)
                for rm in page:
                    alias = (rm.aliases or {}).get(PRODUCTION_ALIAS)
                    out[rm.name] = int(alias) if alias is not None else None
                token = page.token
                if not token:
                    break
        return out

    # -- direct SQL (SQL-backed registries) -----------------------------------------------------

    def _sql(self):
        """MLflow's SQL store and two statements built once from its ORM models: a series'
        production version with its tags (one joined query), and the production versions of
        many models (one indexed query)."""
        if self._statements is None:
            from mlflow.entities.model_registry.model_version_stages import STAGE_DELETED_INTERNAL
            from mlflow.store.model_registry.dbmodels.models import SqlModelVersion as Version
            from mlflow.store.model_registry.dbmodels.models import SqlModelVersionTag as Tag
            from mlflow.store.model_registry.dbmodels.models import SqlRegisteredModelAlias as Alias
            from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore
            from sqlalchemy import and_, bindparam, select

            store = self.registry.client._get_registry_client().store
            if not isinstance(store, SqlAlchemyStore):
                raise TypeError(f"the registry store is {type(store).__name__}, not SQL")
            workspace = store._get_active_workspace()
            lookup = (
                select(Version.version, Version.source, Version.run_id, Tag.key, Tag.value)
                .select_from(Alias)
                .join(Version, and_(Version.workspace == Alias.workspace, Version.name == Alias.name,
                                    Version.version == Alias.version))
                .outerjoin(Tag, and_(Tag.workspace == Version.workspace, Tag.name == Version.name,
                                     Tag.version == Version.version))
                .where(Alias.workspace == workspace, Alias.name == bindparam("name"), Alias.alias == PRODUCTION_ALIAS,
                       Version.current_stage != STAGE_DELETED_INTERNAL)
            )
            versions = select(Alias.name, Alias.version).where(
                Alias.workspace == workspace, Alias.alias == PRODUCTION_ALIAS, Alias.name.in_(bindparam("names", expanding=True))
            )
            self._statements = (store, lookup, versions)
        return self._statements

    def _lookup_sql(self, name: str) -> RegisteredModel | None:
        store, lookup, _ = self._sql()
        with store.ManagedSessionMaker() as session:
            rows = session.execute(lookup, {"name": name}).all()
        if not rows:
            return None
        version, source, run_id = rows[0][:3]
        tags = {key: value for *_, key, value in rows if key is not None}
        return RegisteredModel(name, int(version), source, tags, run_id)

    def _production_versions_sql(self, names: list[str]) -> dict[str, int | None]:
        store, _, versions = self._sql()
        out: dict[str, int | None] = dict.fromkeys(names)
        with store.ManagedSessionMaker() as session:
            for i in range(0, len(names), CHECK_BATCH):
                for name, version in session.execute(versions, {"names": names[i : i + CHECK_BATCH]}):
                    out[name] = int(version)
        return out

    # -- loading --------------------------------------------------------------------------------

    def load(self, model: RegisteredModel) -> tuple[PreparedModel, int]:
        """The verified artifact (sha256 checked) as a PreparedModel, and the artifact's size."""
        data = self.registry.read_artifact(model)
        return PreparedModel(json.loads(data)), len(data)

    def warm_up(self) -> None:
        """Open the registry connection and import the model code (no model is loaded)."""
        import mm_platform.forecasting.prophet_fast  # noqa: F401  (scipy/pandas imports)

        self.production_versions([f"{self.dataset}.__warm_up__"])
