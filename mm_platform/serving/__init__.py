"""Real-time scoring: a FastAPI service that forecasts one series (or a batch) on request
with the model the *production* registry's ``production`` alias points at.

Models are loaded on first use into a bounded LRU cache (by count and by bytes), one load
per series however many requests arrive at once, and replaced without a restart when a
new version is promoted. Per-request work is numpy only.
"""

from mm_platform.serving.app import ServingSettings, create_app

__all__ = ["ServingSettings", "create_app"]
