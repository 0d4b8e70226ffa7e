from datetime import date

import dagster as dg

from mm_platform.core.errors import user_errors_as_failures
from mm_platform.defs.dataset import Dataset
from mm_platform.defs.resources import (
    DatasetResource,
    LakeResource,
    SourceDatabaseResource,
    WarehouseResource,
)
from mm_platform.steps.ingest import ingest
from mm_platform.stores.sql import redact

MISSING_SERIES_SHOWN = 20  # series ids listed in the metadata; the warehouse view has them all


@user_errors_as_failures
def raw_sales(
    context: dg.AssetExecutionContext,
    dataset: DatasetResource,
    lake: LakeResource,
    source_db: SourceDatabaseResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Copies the source sales table into the lake up to the run date under the ingestion contract
    (docs/ingestion.md): incremental on the watermark (the newest date with a target, with a look-back for
    late corrections), an upsert on (keys, date) with column types fixed at the first write, bad rows
    quarantined with the reason (never dropped). Planned rows and rows within the forecast horizon after the
    run date give the regressors' known future values, kept as the run date's snapshot for batch scoring.
    Series no longer in the source are listed in the warehouse view v_missing_series."""
    cfg = dataset.config
    run_date = date.fromisoformat(context.partition_key)
    stats = ingest(cfg, lake.lake(), source_db.url, run_date)
    missing = stats["missing_series"]
    wh = warehouse.warehouse()  # (the resource disposes it when the step ends)
    wh.replace_missing_series(
        run_date, stats["missing_series_detail"], cfg.ingest.on_missing_series, stats["contract"]["keys"]
    )
    context.log.info(f"ingested {({k: v for k, v in stats.items() if k != 'missing_series_detail'})}")
    if stats["rows_quarantined"]:
        context.log.warning(f"{stats['rows_quarantined']} source rows quarantined: {stats['quarantine_reasons']}")
    if missing:
        context.log.warning(
            f"{len(missing)} series are in the lake but no longer in the source ({', '.join(missing[:MISSING_SERIES_SHOWN])}"
            f"{', ...' if len(missing) > MISSING_SERIES_SHOWN else ''}); ingest.on_missing_series is "
            f"{cfg.ingest.on_missing_series}"
        )
    return dg.MaterializeResult(
        metadata={
            "source": redact(source_db.url) + f" table {source_db.table}",
            "rows_read": stats["rows_read"],
            "rows_inserted": stats["inserted"],
            "rows_updated": stats["updated"],
            "rows_quarantined": stats["rows_quarantined"],
            "rows_newly_quarantined": stats["rows_newly_quarantined"],
            "quarantine_reasons": dg.MetadataValue.json(stats["quarantine_reasons"]),
            "rows_planned": stats["rows_planned"],
            "rows_outside_window": stats["rows_outside_window"],
            "watermark": str(stats["watermark"]),
            "future_regressor_rows": stats.get("future_rows", 0),
            "column_types": dg.MetadataValue.json(stats["contract"]),
            "missing_series": len(missing),
            "missing_series_ids": dg.MetadataValue.json(missing[:MISSING_SERIES_SHOWN]),
            "on_missing_series": cfg.ingest.on_missing_series,
            "lake_path": dg.MetadataValue.path(lake.lake().uri("raw", cfg.source.table)),
        }
    )


def dataset_defs(ds: Dataset) -> dg.Definitions:
    return dg.Definitions(assets=[ds.asset(raw_sales, kinds={"sql", "parquet"})])
