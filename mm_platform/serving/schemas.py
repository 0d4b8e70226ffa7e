"""Request and response models, built per dataset from its config.

The request's ``keys`` object has exactly the dataset's partition keys (``cfg.keys``), so a
wrong key name, a missing key or a value of the wrong type is a 422 that names the field
(``body.keys.store``). Key values are integers or strings (``--key-type store=int`` makes a
key integer-only); either way they are compared as text, like the registry's
``series_id`` tag (``store=3,item=17``).
"""

# No ``from __future__ import annotations``: these models are built at runtime.
import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, create_model, field_validator

from mm_platform.core.vocabulary import TIER_CHAMPION, TIER_FALLBACK

KeyType = Literal["int", "str", "any"]
KeyText = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^,=\s]+(?:[^,=]*[^,=\s])?$")]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


def key_annotation(kind: KeyType):
    if kind == "int":
        return StrictInt
    if kind == "str":
        return KeyText
    return Annotated[StrictInt | KeyText, Field(union_mode="left_to_right")]


def normalize_key(kind: KeyType, value) -> str:
    """A validated key value as the text the registry's tags use."""
    return str(int(value)) if kind == "int" else str(value)


class Schemas:
    """The dataset's request models (``ForecastRequest``, ``BatchRequest``) and response models."""

    def __init__(self, keys: list[str], regressors: list[str], default_horizon: int, max_horizon: int,
                 max_batch: int, key_types: dict[str, KeyType]):
        self.keys = list(keys)
        self.key_types = {k: key_types.get(k, "any") for k in keys}
        self.max_horizon = max_horizon
        self.max_batch = max_batch
        strict = ConfigDict(extra="forbid")
        self.SeriesKeys = create_model(
            "SeriesKeys",
            __config__=strict,
            **{k: (key_annotation(self.key_types[k]), Field(description=f"partition key {k}")) for k in keys},
        )
        self.FutureRegressors = create_model(
            "FutureRegressors",
            __config__=strict,
            **{
                r: (list[FiniteFloat] | None, Field(None, max_length=max_horizon, description=f"future {r}, one value per period"))
                for r in regressors
            },
        )
        SeriesKeys, FutureRegressors = self.SeriesKeys, self.FutureRegressors

        class ForecastRequest(BaseModel):
            """One series' forecast request."""

            model_config = ConfigDict(extra="forbid")
            keys: SeriesKeys
            horizon: Annotated[int, Field(strict=True, ge=1, le=max_horizon)] = Field(
                default_horizon, description=f"periods to forecast (1..{max_horizon})"
            )
            regressors: FutureRegressors | None = Field(
                None, description="future regressor values (length = horizon); missing ones carry the last observed value forward"
            )
            start: dt.date | None = Field(
                None, description="first forecast date, YYYY-MM-DD (default: the period after the model's last date)"
            )

            @field_validator("start", mode="before")
            @classmethod
            def _iso_date(cls, v: Any) -> Any:
                if v is not None and not isinstance(v, str):
                    raise ValueError("start must be a date string YYYY-MM-DD")
                return v

            @field_validator("regressors")
            @classmethod
            def _lengths(cls, v, info):
                horizon = info.data.get("horizon")
                if v is not None and horizon is not None:
                    for name, values in v:
                        if values is not None and len(values) != horizon:
                            raise ValueError(f"regressor {name} has {len(values)} values, horizon is {horizon}")
                return v

        class BatchRequest(BaseModel):
            """Many series in one request; each item is validated and answered on its own."""

            model_config = ConfigDict(extra="forbid")
            items: list[Any] = Field(min_length=1, max_length=max_batch, description="ForecastRequest objects")

        self.ForecastRequest = ForecastRequest
        self.BatchRequest = BatchRequest

    def series_keys(self, request) -> dict[str, str]:
        """The validated request's keys as registry text, in the configured key order."""
        return {k: normalize_key(self.key_types[k], getattr(request.keys, k)) for k in self.keys}

    def parse_series_id(self, text: str) -> dict[str, str]:
        """``store=3,item=17`` -> {"store": "3", "item": "17"}; ValueError names what is wrong."""
        parts = {}
        for part in text.split(","):
            name, sep, value = part.partition("=")
            name, value = name.strip(), value.strip()
            if not sep or not name or not value:
                raise ValueError(f"series must look like {','.join(f'{k}=<value>' for k in self.keys)}, got {text!r}")
            if name in parts:
                raise ValueError(f"key {name} appears twice")
            parts[name] = value
        unknown, missing = set(parts) - set(self.keys), [k for k in self.keys if k not in parts]
        if unknown or missing:
            raise ValueError(f"series keys must be exactly {self.keys} (unknown: {sorted(unknown)}, missing: {missing})")
        out = {}
        for k in self.keys:
            kind, value = self.key_types[k], parts[k]
            if kind == "int":
                try:
                    value = str(int(value))
                except ValueError:
                    raise ValueError(f"key {k} must be an integer, got {value!r}") from None
            elif len(value) > 128:
                raise ValueError(f"key {k} is longer than 128 characters")
            out[k] = value
        return out


# --- response models (documentation: the handlers write JSON directly) -----------------------


class ModelRef(BaseModel):
    name: str
    version: int
    algorithm: str


Tier = Literal[TIER_CHAMPION, TIER_FALLBACK]
TIER_DESCRIPTION = ("champion: the series' own model passed the promotion rules; fallback: it did not, and the "
                    "promotion's fallback chain chose this model (docs/accuracy.md)")


class ForecastResponse(BaseModel):
    series_id: str = Field(examples=["store=3,item=17"])
    keys: dict[str, str]
    model: ModelRef
    tier: Tier = Field(description=TIER_DESCRIPTION)
    tier_reason: str | None = Field(None, description="why promotion chose this model (its tier_reason tag)")
    freq: Literal["D", "W"]
    horizon: int
    start: str
    interval_coverage: float
    dates: list[str]
    yhat: list[float | None]
    lower: list[float | None]
    upper: list[float | None]


class BatchItemResult(BaseModel):
    index: int
    status: int = Field(description="200, or the status this item alone would have had (404, 422, 503)")
    forecast: ForecastResponse | None = None
    detail: Any = None


class BatchResponse(BaseModel):
    results: list[BatchItemResult]


class ModelInfo(BaseModel):
    series_id: str
    keys: dict[str, str]
    name: str
    version: int
    algorithm: str | None
    tier: Tier = Field(description=TIER_DESCRIPTION)
    tier_reason: str | None = None
    metrics: dict[str, float | None]
    tags: dict[str, str]
    cached: bool


class RefreshRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    series: list[str] | None = Field(None, max_length=10000, description="series ids to re-check (default: every cached model)")


class RefreshResponse(BaseModel):
    checked: int
    replaced: int
    removed: int
    failed: int


class ErrorResponse(BaseModel):
    detail: Any
    series_id: str | None = None
