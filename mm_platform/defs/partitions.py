"""Run dates. Series are Spark groups inside one run, not Dagster partitions; the run date
(the last day of data a run uses) is the Dagster partition, so backfills work from the UI."""

import dagster as dg

from mm_platform.config import load_config

run_dates = dg.DailyPartitionsDefinition(start_date=load_config().start_date)
