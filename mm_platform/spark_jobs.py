"""Transitional: the old module's names, while the layout moves to ``spark/`` and ``stores/``
(removed once every caller imports from there)."""

from mm_platform.core.vocabulary import SCORED, SCORING_FAILED, SCORING_SKIPPED, UNCHANGED  # noqa: F401
from mm_platform.spark.score import ScoredSeries, forecast_or_reason, score_series  # noqa: F401
from mm_platform.spark.session import get_session, spark_conf, task_count  # noqa: F401
from mm_platform.spark.train import RESULT_FIELDS, read_previous_model, series_fingerprint, train_spec  # noqa: F401
from mm_platform.spark.train import train_grouped as train_model_set  # noqa: F401
from mm_platform.stores.training_sets import N_BUCKETS, LocalTrainingSets, training_rows, training_set_store  # noqa: F401


def build_training_sets(spark, lake, cfg, run_date):
    return training_set_store(lake, cfg).build(spark, run_date)


def read_training_set(spark, lake, cfg, run_date):
    return training_set_store(lake, cfg).dataframe(spark, run_date)


def training_set_series(lake, cfg, run_date):
    return training_set_store(lake, cfg).series(run_date)


def training_set_uri(lake, cfg, run_date):
    return training_set_store(lake, cfg).uri(run_date)


def train_local_buckets(spark, lake, cfg, run_date, known=None, previous=None, only_series=None):
    return LocalTrainingSets(lake, cfg).train(spark, run_date, known=known, previous=previous, only_series=only_series)
