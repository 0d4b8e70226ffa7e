from datetime import date

import dagster as dg

from mm_platform.defs.partitions import run_dates
from mm_platform.defs.resources import DatasetResource, LakeResource, SourceDatabaseResource
from mm_platform.ingestion import ingest
from mm_platform.sql import redact


@dg.asset(
    partitions_def=run_dates,
    group_name="ingestion",
    kinds={"sql", "parquet"},
    description="Copies the source sales table into the lake up to the run date: incremental on the date "
    "watermark (with a look-back for late corrections), an upsert on (keys, date), bad rows quarantined. "
    "Rows dated within the forecast horizon after the run date give the regressors' known future values "
    "(planned prices, promotions), kept as the run date's snapshot for batch scoring.",
)
def raw_sales(
    context: dg.AssetExecutionContext, dataset: DatasetResource, lake: LakeResource, source_db: SourceDatabaseResource
) -> dg.MaterializeResult:
    cfg = dataset.config
    stats = ingest(cfg, lake.lake(), source_db.url, date.fromisoformat(context.partition_key))
    context.log.info(f"ingested {stats}")
    return dg.MaterializeResult(
        metadata={
            "source": redact(source_db.url) + f" table {source_db.table}",
            "rows_read": stats["rows_read"],
            "rows_inserted": stats["inserted"],
            "rows_updated": stats["updated"],
            "rows_quarantined": stats["rows_quarantined"],
            "watermark": str(stats["watermark"]),
            "future_regressor_rows": stats.get("future_rows", 0),
            "lake_path": dg.MetadataValue.path(lake.lake().uri("raw", cfg.source.table)),
        }
    )
