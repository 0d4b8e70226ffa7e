"""Manual interventions as Dagster jobs with typed run config: retrain the series that failed
in a training run, and roll series back to an earlier production model. Launchable from the
Launchpad; ``mm-platform retrain --failed`` and ``mm-platform rollback`` launch the same jobs
through the instance, so each intervention leaves a run, its event log and an asset event.

One job per dataset (``<dataset>_retrain_failed_job``, ``<dataset>_rollback_job``), each bound to
that dataset's resources, rather than one job taking the dataset in its run config: an op reaches
resources only through its job, so a shared job would have to initialize every dataset's
resources (or bypass Dagster's); per dataset, the Launchpad shows each dataset's operations with
their typed config and the run's lineage points at that dataset's assets. The ops themselves are
shared (Dagster requires op names to be unique in a code location)."""

import getpass
from datetime import date

import dagster as dg

from mm_platform.core.errors import UserError, user_errors_as_failures
from mm_platform.defs.dataset import Dataset
from mm_platform.defs.resources import DatasetResource, LakeResource, RegistryResource, WarehouseResource
from mm_platform.steps.operations import failed_series, rollback
from mm_platform.steps.train import train_and_register

RETRAIN_JOB = "retrain_failed_job"  # prefixed with the dataset's name
ROLLBACK_JOB = "rollback_job"


class RetrainFailedConfig(dg.Config):
    run_date: str | None = None  # YYYY-MM-DD of the training run to repair; none: the newest


class RollbackConfig(dg.Config):
    series: list[str]  # series ids such as store=3,item=17
    to_version: int | None = None  # production version to restore; none: each series' previous one


def _run_date(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UserError(f"run config run_date {value!r} is not a date as YYYY-MM-DD") from None


@dg.op(description="Retrain only the series that failed in a training run and register their models.")
@user_errors_as_failures
def retrain_failed_series(
    context: dg.OpExecutionContext,
    config: RetrainFailedConfig,
    dataset: DatasetResource,
    lake: LakeResource,
    training_registry: RegistryResource,
    warehouse: WarehouseResource,
) -> dict:
    from mm_platform.spark.session import get_session, warm_executors

    cfg = dataset.config
    wh = warehouse.warehouse()
    run_date, series = failed_series(wh, _run_date(config.run_date))
    if not series:
        context.log.info("no failed series to retrain")
        return {"run_date": str(run_date) if run_date else None, "retried": 0}
    # Spark only when there is something to train (not a resource: it would start on every run).
    spark = get_session(cfg.spark)
    if cfg.spark.warm_executors:  # while the driver reads the registry
        warm_executors(spark, cfg.storage.lake_url)
    outcome = train_and_register(spark, lake.lake(), cfg, run_date, training_registry.registry(), wh, context.run_id, series)
    summary = {"run_date": str(run_date), "retried": len(series), "registered": outcome.registered,
               "still_failed": outcome.failed, "skipped": outcome.skipped}
    # model_set's run-date partition changed: record it there, with the lineage of this run.
    context.log_event(dg.AssetMaterialization(
        asset_key=[cfg.name, "model_set"], partition=str(run_date),
        description=f"retrain of {len(series)} failed series", metadata={**summary, "series": dg.MetadataValue.json(series)},
    ))
    return summary


@dg.op(description="Point series back at an earlier production model version and log it in promotion_log.")
@user_errors_as_failures
def rollback_series(
    context: dg.OpExecutionContext,
    config: RollbackConfig,
    dataset: DatasetResource,
    production_registry: RegistryResource,
    warehouse: WarehouseResource,
) -> list[dict]:
    if not config.series:
        raise UserError("run config series is empty: name at least one series id")
    log = rollback(dataset.config, production_registry.registry(writable=True), warehouse.warehouse(), config.series,
                   config.to_version, decided_by=f"dagster run {context.run_id} ({getpass.getuser()})")
    rows = [{"series_id": str(r["series_id"]), "model_name": str(r["model_name"]),
             "production_version": int(r["production_version"]), "reasons": str(r["reasons"])}
            for r in log.to_dict("records")]
    # Not a run-date partition's output: an observation of promoted_models, visible on its page.
    context.log_event(dg.AssetObservation(asset_key=[dataset.config.name, "promoted_models"], description="rollback",
                                          metadata={"rolled_back": dg.MetadataValue.json(rows)}))
    return rows


def dataset_defs(ds: Dataset) -> dg.Definitions:
    resources = {k: ds.resources[k] for k in ("dataset", "lake", "training_registry", "production_registry", "warehouse")}
    tags = {"mm_platform/dataset": ds.name}

    @dg.job(name=ds.prefixed(RETRAIN_JOB), resource_defs=resources, tags={**tags, "mm_platform/operation": "retrain-failed"},
            description=f"Dataset {ds.name}: retrain the series that failed in a training run (default: the newest).")
    def retrain_failed_job():
        retrain_failed_series()

    @dg.job(name=ds.prefixed(ROLLBACK_JOB), resource_defs=resources, tags={**tags, "mm_platform/operation": "rollback"},
            description=f"Dataset {ds.name}: roll series back to an earlier production model version.")
    def rollback_job():
        rollback_series()

    return dg.Definitions(jobs=[retrain_failed_job, rollback_job])
