"""Typed dataset/run configuration, validated once at the edge.

One YAML file describes a dataset and how it runs: where the source table is, which
columns are the date, target, partition keys and regressors, the forecasting setup and
the promotion rules. Storage locations default to files under ``$MM_HOME`` so a laptop
needs nothing running; real services are selected by URL only.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mm_platform.core.errors import UserError

PACKAGED_DATASETS = Path(__file__).parent / "configs"
DEFAULT_CONFIG = PACKAGED_DATASETS / "retail_daily.yaml"
DATASETS_ENV = "MM_DATASETS"  # the folder whose dataset YAMLs the Dagster code location serves
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(UserError):
    """Invalid configuration; the message names the bad field."""


def mm_home() -> Path:
    """Root of everything the embedded defaults write (``$MM_HOME``, default ``./.mm_home``)."""
    return Path(os.environ.get("MM_HOME", ".mm_home")).resolve()


def _identifier(value: str, what: str) -> str:
    # Table and column names end up in SQL text: only plain identifiers are allowed.
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise ValueError(f"{what} {value!r} is not a valid identifier (letters, digits, underscore)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    url: str = Field(description="SQLAlchemy URL of the source database")
    table: str = "sales"

    @field_validator("table")
    @classmethod
    def _table(cls, v: str) -> str:
        return _identifier(v, "source.table")


class ColumnsConfig(_Strict):
    date: str = "date"
    target: str = "units"
    keys: list[str] = Field(default_factory=lambda: ["store", "item"], min_length=1)
    regressors: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names(self) -> ColumnsConfig:
        names = [self.date, self.target, *self.keys, *self.regressors]
        for n in names:
            _identifier(n, "column")
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"column names used twice: {sorted(dupes)}")
        reserved = {"series_id", "ds", "y", "run_date"}
        clash = reserved & set(names)
        if clash:
            raise ValueError(f"column names {sorted(clash)} are reserved by mm_platform")
        return self


class ProphetParams(_Strict):
    seasonality_mode: Literal["additive", "multiplicative"] = "additive"
    yearly_seasonality: bool | int | Literal["auto"] = "auto"
    weekly_seasonality: bool | int | Literal["auto"] = "auto"
    changepoint_prior_scale: float = Field(0.05, gt=0)
    seasonality_prior_scale: float = Field(10.0, gt=0)
    n_changepoints: int = Field(25, ge=0)
    changepoint_range: float = Field(0.8, gt=0, le=1)
    regressor_prior_scale: float = Field(10.0, gt=0)


def _family_names() -> list[str]:
    from mm_platform.forecasting.families import FAMILIES

    return sorted(FAMILIES)


def _check_families(names: list[str], what: str) -> list[str]:
    known = _family_names()
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"{what}: unknown model families {bad}; known: {known}")
    return names


class AutoConfig(_Strict):
    """``algorithm: auto``: per-series model selection by rolling-origin backtesting."""

    folds: int = Field(6, ge=1, le=20, description="rolling-origin backtest folds over the end of the training window")
    fold_length: int | None = Field(None, ge=1, description="periods per fold (default: holdout)")
    metric: Literal["wape", "mase", "rmse", "mape"] = "wape"
    candidates: list[str] = Field(
        default_factory=lambda: ["seasonal_naive", "croston", "tsb", "regression", "prophet", "ensemble"],
        min_length=1,
    )
    tie_tolerance: float = Field(
        0.02, ge=0, le=1, description="relative; within it of the best, the fallback family (else the cheapest) wins"
    )
    fallback: str = Field(
        "ensemble", description="the default family: kept on near-ties, and used when a series is too short to backtest"
    )
    ensemble: list[str] = Field(default_factory=lambda: ["prophet", "regression"], min_length=1)
    pooled_sample: int = Field(
        200, ge=0, description="series (those with the smallest sha256 of their id) whose backtests make the "
        "dataset-level choice every series trains with (docs/forecast-quality.md); 0: each series chooses alone",
    )

    @field_validator("candidates")
    @classmethod
    def _candidates(cls, v: list[str]) -> list[str]:
        return _check_families(v, "candidates")

    @field_validator("fallback")
    @classmethod
    def _fallback(cls, v: str) -> str:
        return _check_families([v], "fallback")[0]

    @field_validator("ensemble")
    @classmethod
    def _ensemble(cls, v: list[str]) -> list[str]:
        _check_families(v, "ensemble")
        if "ensemble" in v:
            raise ValueError("ensemble: an ensemble cannot contain itself")
        return v


class RegressionOptions(_Strict):
    """Options of the ``regression`` family: a constant-elasticity demand model.

    With ``price_column`` the family fits log demand on log price per series (the coefficient
    is the price elasticity); with ``target_kind: revenue`` demand is revenue / price and the
    forecast is the planned price times the forecast demand. ``pool_by`` names a key column:
    each series' elasticity is shrunk toward its group's (empirical Bayes), so short series
    borrow the group's estimate."""

    price_column: str | None = Field(None, description="a regressor: log demand is regressed on its log")
    target_kind: Literal["quantity", "revenue"] = Field(
        "quantity", description="revenue: the target is price x quantity (needs price_column)"
    )
    pool_by: str | None = Field(None, description="key column whose groups share an elasticity prior")

    @model_validator(mode="after")
    def _needs_price(self) -> RegressionOptions:
        if self.target_kind == "revenue" and not self.price_column:
            raise ValueError("target_kind revenue needs price_column")
        if self.pool_by and not self.price_column:
            raise ValueError("pool_by needs price_column")
        return self


class GlobalLGBMOptions(_Strict):
    """Options of the global family ``global_lgbm``: one LightGBM model shared by the series
    (mm_platform/forecasting/global_lgbm.py), trained in one Spark task per group."""

    group_by: str | None = Field(
        None, description="key column: one shared model per value (default: one model for all series of the dataset)"
    )


class AlgorithmConfig(_Strict):
    # "prophet" fits Prophet's own MAP objective in-process (fast); "prophet_library" calls
    # prophet/cmdstan per series (the reference approach); "seasonal_naive" is the baseline;
    # ets, arima, theta (statsforecast), regression, croston, tsb, ensemble: see
    # mm_platform/forecasting/families.py; "auto" picks one per series by backtesting.
    name: str = "prophet"
    prophet: ProphetParams = Field(default_factory=ProphetParams)
    interval_coverage: float = Field(0.9, gt=0, lt=1)
    # conformal: the interval half-width is the conformal quantile of out-of-sample residuals
    # (backtest folds + holdout); normal: z * holdout RMSE.
    interval_method: Literal["conformal", "normal"] = "conformal"
    calibration_folds: int = Field(0, ge=0, le=20, description="single-family runs: extra backtest folds for calibration")
    auto: AutoConfig = Field(default_factory=AutoConfig)
    regression: RegressionOptions = Field(default_factory=RegressionOptions)
    global_lgbm: GlobalLGBMOptions = Field(default_factory=GlobalLGBMOptions)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v != "auto":
            _check_families([v], "algorithm")
        return v


# The share rule needs a few failures before it means anything: on 4 series one failure is
# 25%, an isolated bad series rather than a broken run (docs/reliability.md).
MIN_FAILED_COUNT_HELP = (
    "the max_failed_fraction rule applies only from this many failed series on, so one isolated failure in a "
    "small set (1 of 4 is 25%) does not stop the run; 3 is a pattern, while on large sets the fraction decides"
)


class TrainingConfig(_Strict):
    # Like Azure ML parallel jobs' error_threshold: past it the run fails instead of registering.
    max_failed_fraction: float | None = Field(
        0.2, ge=0, le=1,
        description="fail the run above this share of failed series (from min_failed_count failures on); past it "
        "nothing is registered: a model set with that many failures points at a problem in the data or the config",
    )
    min_failed_count: int = Field(3, ge=1, description=MIN_FAILED_COUNT_HELP)
    max_failed_count: int | None = Field(None, ge=0, description="fail the run above this many failed series")
    fit_timeout_seconds: float | None = Field(60.0, gt=0, description="per-series limit; a slower fit is marked failed")


class ScoringConfig(_Strict):
    # The same kind of threshold for batch scoring. Past it the step fails (the run is marked
    # failed, forecast_metrics is not refreshed) but the series that scored are still written:
    # each forecast depends only on its own verified model and data, so holding good forecasts
    # back protects nothing and leaves every consumer on stale numbers (docs/reliability.md).
    max_failed_fraction: float | None = Field(
        0.2, ge=0, le=1,
        description="fail the scoring step above this share of series whose forecast failed (from min_failed_count "
        "failures on); the series that scored are still written, a failed series keeps the run date's previous "
        "predictions if it had any",
    )
    min_failed_count: int = Field(3, ge=1, description=MIN_FAILED_COUNT_HELP)
    max_failed_count: int | None = Field(None, ge=0, description="fail the scoring step above this many failed series")


class IngestConfig(_Strict):
    """The ingestion contract's settings (docs/ingestion.md)."""

    max_abs_target: float = Field(
        1e12, gt=0, description="targets beyond this absolute value are quarantined (with non-finite ones)"
    )
    # keep_scoring: a series deleted at the source is still scored from the lake's data (and
    # reported); stop_scoring: scoring skips it until it comes back.
    on_missing_series: Literal["keep_scoring", "stop_scoring"] = "keep_scoring"
    key_types: dict[str, Literal["int64", "string"]] = Field(
        default_factory=dict, description="declared key types; undeclared keys take the source's at the first write"
    )


FALLBACK_STEPS = ("own_model_if_beats_naive", "intermittent", "seasonal_naive")


class FallbackConfig(_Strict):
    """Coverage: a series with enough history but no production model gets the first
    applicable entry of ``chain`` as its model (tier ``fallback``, docs/accuracy.md)."""

    enabled: bool = True
    chain: list[Literal["own_model_if_beats_naive", "intermittent", "seasonal_naive"]] = Field(
        default_factory=lambda: list(FALLBACK_STEPS),
        description="fallbacks tried in order: the series' own newest model if its holdout WAPE beats seasonal "
        "naive; croston/tsb (the better on the holdout) for intermittent series; seasonal naive",
    )
    intermittent_zero_share: float = Field(
        0.3, gt=0, le=1, description="a series is intermittent when at least this share of its observations are zero"
    )

    @field_validator("chain")
    @classmethod
    def _chain(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"promotion.fallback.chain lists an entry twice: {v}")
        return v


class PromotionRules(_Strict):
    max_wape: float | None = Field(0.5, gt=0, description="holdout WAPE must be at most this")
    max_mape: float | None = Field(None, gt=0, description="holdout MAPE must be at most this")
    beats_seasonal_naive: bool = True
    not_worse_than_production: bool = True
    tolerance: float = Field(0.0, ge=0, description="allowed relative slack for the comparisons")
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)


class DriftConfig(_Strict):
    """When realized accuracy flags a series, and what is done about it (docs/accuracy.md)."""

    enabled: bool = True
    window_days: int = Field(28, ge=1, description="forecast run dates of the last this many days are pooled")
    min_actuals: int = Field(14, ge=1, description="a series needs this many forecast-actual pairs in the window")
    factor: float = Field(1.5, gt=0, description="flag when realized WAPE > factor x the promotion-time holdout WAPE")
    worse_than_naive: bool = Field(True, description="flag when realized WAPE > realized seasonal-naive WAPE")
    actions: list[Literal["refit", "rollback"]] = Field(
        default_factory=lambda: ["refit"],
        description="refit: the next training run refits the series even if its data is unchanged; rollback: back "
        "to the previous production version when its realized WAPE was better",
    )


class AccuracyConfig(_Strict):
    """Realized accuracy of published forecasts against the actuals that arrive later."""

    lookback_days: int = Field(90, ge=1, description="forecast run dates of the last this many days are (re)evaluated")
    drift: DriftConfig = Field(default_factory=DriftConfig)


class ChecksConfig(_Strict):
    """Thresholds of the asset checks (mm_platform/defs/*/checks.py). Every check is visible in the
    Dagster UI and in `mm-platform run`'s summary; a failed blocking check stops what follows."""

    max_staleness_periods: int = Field(
        1, ge=0, description="raw_sales_fresh: the lake's newest actual may be at most this many periods (days or "
        "weeks, by frequency) before the run date"
    )
    min_forecast: float | None = Field(
        None, description="forecasts_finite_and_bounded: no yhat below this (e.g. 0 for demand); none: no lower bound"
    )
    max_abs_forecast: float | None = Field(
        None, gt=0, description="forecasts_finite_and_bounded: no |yhat|, |yhat_lower|, |yhat_upper| above this "
        "(default: ingest.max_abs_target, the largest target the ingestion contract accepts)"
    )
    min_share_beating_naive: float = Field(
        0.5, ge=0, le=1, description="share_beating_seasonal_naive: the share of trained series whose holdout WAPE "
        "is below the seasonal-naive baseline's must be at least this"
    )
    share_beating_naive_severity: Literal["warn", "error"] = Field(
        "warn", description="warn: a low share is reported and the run goes on; error: it stops promotion"
    )


class SparkConfig(_Strict):
    # local[*] by default; any master URL (spark://host:7077) or Spark Connect (sc://host:15002).
    master: str = "local[*]"
    conf: dict[str, str] = Field(default_factory=dict)
    shuffle_partitions: int = Field(4, ge=1)
    # Python workers fork from a daemon that has already imported pandas, pyarrow, Prophet and
    # the forecasting code (mm_platform.spark.daemon): paid once per session, not per worker.
    # Needs mm_platform installed where the executors run (as in docker/); false uses Spark's own daemon.
    preload_worker_modules: bool = True
    # The driver JVMs this process starts (local mode, or a cluster's driver) map the JVM class
    # archive made by `mm-platform jvm-archive` when it exists
    # (mm_platform.spark.jvm_archive): half the JVM's start-up CPU and wall time.
    jvm_class_archive: bool = True
    # On a cluster master: each executor starts its Python worker (and the lake's filesystem) in a
    # background job as soon as it registers, while the driver does its first work, instead of
    # in the first task of a step (mm_platform.spark.session.warm_executors).
    warm_executors: bool = True


class StorageConfig(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
    lake_url: str = "${MM_HOME}/lake"
    warehouse_url: str = "sqlite:///${MM_HOME}/warehouse.db"
    training_registry_uri: str = "sqlite:///${MM_HOME}/mlflow/training.db"
    training_artifact_root: str = "${MM_HOME}/mlflow/training-artifacts"
    production_registry_uri: str = "sqlite:///${MM_HOME}/mlflow/production.db"
    production_artifact_root: str = "${MM_HOME}/mlflow/production-artifacts"
    # Who reads and writes training-set data in the Spark tasks (docs/deploying.md): fsspec
    # opened in each executor, or Spark's own Parquet I/O (hadoop-azure on Databricks/Synapse).
    lake_io: Literal["fsspec", "spark"] = Field(
        "fsspec", description="fsspec: executors open the lake URL with its fsspec package; spark: "
        "spark.read/write.parquet on the lake URL (the cluster's own connector, e.g. abfss:// with hadoop-azure)"
    )

    # Who writes the trained models' artifacts: the training tasks, into the model set's registry
    # run, so that no model travels to the driver (auto: when the tasks run on the driver's host;
    # tasks: the training artifact root is a folder every executor mounts), or the driver.
    model_artifacts: Literal["auto", "tasks", "driver"] = Field(
        "auto", description="auto: the training tasks write the models in local mode, the driver on a cluster; tasks: "
        "always the tasks (training_artifact_root is a folder every executor mounts); driver: always the driver"
    )

    @classmethod
    def embedded(cls, home) -> dict[str, str]:
        """The embedded defaults rooted at ``home`` (a config's ``storage`` section)."""
        return {
            "lake_url": f"{home}/lake",
            "warehouse_url": f"sqlite:///{home}/warehouse.db",
            "training_registry_uri": f"sqlite:///{home}/mlflow/training.db",
            "training_artifact_root": f"{home}/mlflow/training-artifacts",
            "production_registry_uri": f"sqlite:///{home}/mlflow/production.db",
            "production_artifact_root": f"{home}/mlflow/production-artifacts",
        }

    @field_validator("*")
    @classmethod
    def _expand_defaults(cls, v: str) -> str:
        return _expand(v)  # defaults mention ${MM_HOME} too

    @model_validator(mode="after")
    def _separate_registries(self) -> StorageConfig:
        if self.training_registry_uri == self.production_registry_uri:
            raise ValueError("storage.production_registry_uri must differ from storage.training_registry_uri")
        return self


class DatasetConfig(_Strict):
    name: str = Field(description="dataset name; prefixes registered model names")
    source: SourceConfig
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    frequency: Literal["daily", "weekly"] = "daily"
    horizon: int = Field(28, ge=1, le=3660)
    holdout: int = Field(28, ge=1)
    min_history: int = Field(56, ge=2, description="series with fewer observations are skipped")
    start_date: str = Field(
        "2015-01-01", description="first run date offered as a Dagster partition; a weekly dataset's run dates "
        "fall on its weekday (default 2015-01-05, a Monday, where weekly data starts its weeks)"
    )
    ingest_lookback_days: int = Field(
        7, ge=0, description="source rows this many days before the lake watermark are re-read (late corrections)"
    )
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    promotion: PromotionRules = Field(default_factory=PromotionRules)
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    accuracy: AccuracyConfig = Field(default_factory=AccuracyConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @model_validator(mode="before")
    @classmethod
    def _weekly_start(cls, data):
        # Weekly run dates are the partitions' weekday; by default the Monday weeks start on.
        if isinstance(data, dict) and data.get("frequency") == "weekly" and "start_date" not in data:
            data = {**data, "start_date": "2015-01-05"}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _identifier(v, "name")

    @field_validator("start_date", mode="before")
    @classmethod
    def _start_date(cls, v) -> str:  # (YAML reads an unquoted date as a date)
        try:
            return date.fromisoformat(str(v)).isoformat()
        except ValueError:
            raise ValueError(f"start_date {v!r} is not a date as YYYY-MM-DD") from None

    @model_validator(mode="after")
    def _lengths(self) -> DatasetConfig:
        if self.min_history <= self.holdout:
            raise ValueError(f"min_history ({self.min_history}) must exceed holdout ({self.holdout})")
        return self

    @model_validator(mode="after")
    def _regression_columns(self) -> DatasetConfig:
        reg = self.algorithm.regression
        if reg.price_column and reg.price_column not in self.columns.regressors:
            raise ValueError(
                f"algorithm.regression.price_column {reg.price_column!r} is not in columns.regressors {self.columns.regressors}"
            )
        if reg.pool_by and reg.pool_by not in self.columns.keys:
            raise ValueError(f"algorithm.regression.pool_by {reg.pool_by!r} is not in columns.keys {self.columns.keys}")
        gb = self.algorithm.global_lgbm.group_by
        if gb and gb not in self.columns.keys:
            raise ValueError(f"algorithm.global_lgbm.group_by {gb!r} is not in columns.keys {self.columns.keys}")
        return self

    @model_validator(mode="after")
    def _ingest_key_types(self) -> DatasetConfig:
        unknown = sorted(set(self.ingest.key_types) - set(self.columns.keys))
        if unknown:
            raise ValueError(f"ingest.key_types names {unknown}, which are not in columns.keys {self.columns.keys}")
        return self

    @property
    def keys(self) -> list[str]:
        return list(self.columns.keys)

    @property
    def season_length(self) -> int:
        return 7 if self.frequency == "daily" else 52

    @property
    def pandas_freq(self) -> str:
        return "D" if self.frequency == "daily" else "W"


def _expand(value):
    """Expand ``${VAR}`` / ``${VAR:-default}`` in strings; ``MM_HOME`` defaults to ``./.mm_home``."""
    if isinstance(value, str):

        def repl(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name == "MM_HOME":
                return str(mm_home())
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is referenced in the config but not set")

        return _ENV_REF.sub(repl, value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"{loc}: {e['msg']}")
    return f"invalid config {origin}: " + "; ".join(lines)


def parse_config(data: dict, origin: str = "<dict>") -> DatasetConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {origin}: expected a mapping at the top level")
    try:
        return DatasetConfig.model_validate(_expand(data))
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def config_path(path: str | os.PathLike | None = None) -> Path:
    """The config file meant: ``path``, ``$MM_CONFIG`` or the packaged retail example (absolute)."""
    return Path(path or os.environ.get("MM_CONFIG") or DEFAULT_CONFIG).expanduser().resolve()


def load_config(path: str | os.PathLike | None = None) -> DatasetConfig:
    """Load the dataset config from ``path``, ``$MM_CONFIG`` or the packaged retail example."""
    path = config_path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    return parse_config(data, origin=str(path))


def datasets_folder(folder: str | os.PathLike | None = None) -> Path:
    """The folder of dataset YAMLs one deployment serves: ``folder``, ``$MM_DATASETS``, else the
    packaged examples (mm_platform/configs)."""
    path = Path(folder or os.environ.get(DATASETS_ENV) or PACKAGED_DATASETS).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"datasets folder {path} is not a folder (set {DATASETS_ENV} to a folder of dataset YAML files)")
    return path


def load_datasets(folder: str | os.PathLike | None = None) -> dict[str, tuple[DatasetConfig, Path]]:
    """Every dataset YAML (``*.yaml``, ``*.yml``) in the datasets folder, by dataset name, in file
    name order; two files naming the same dataset are an error (their assets would collide)."""
    root = datasets_folder(folder)
    found: dict[str, tuple[DatasetConfig, Path]] = {}
    for path in sorted([*root.glob("*.yaml"), *root.glob("*.yml")]):
        cfg = load_config(path)
        if cfg.name in found:
            raise ConfigError(f"datasets folder {root}: {found[cfg.name][1].name} and {path.name} both name dataset {cfg.name!r}")
        found[cfg.name] = (cfg, path)
    return found


def find_dataset(name: str, folder: str | os.PathLike | None = None) -> tuple[DatasetConfig, Path]:
    """The dataset called ``name`` in the datasets folder; its file name without .yaml also works
    (``weekly_multikey`` for the dataset ``weekly_revenue`` it describes)."""
    datasets = load_datasets(folder)
    if name in datasets:
        return datasets[name]
    by_file = [entry for entry in datasets.values() if entry[1].stem == name]
    if by_file:
        return by_file[0]
    known = ", ".join(f"{n} ({p.name})" for n, (_, p) in datasets.items()) or "none"
    raise ConfigError(f"no dataset {name!r} in the datasets folder {datasets_folder(folder)}; datasets there: {known}")
