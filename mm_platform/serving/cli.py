"""``mm-platform serve``."""

from __future__ import annotations

import argparse
import logging
import sys

from mm_platform.cli import _positive, add_dataset_options, load_dataset_config


def _positive_float(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v!r}")
    return x


def _key_type(v: str) -> tuple[str, str]:
    name, sep, kind = v.partition("=")
    if not sep or kind not in ("int", "str", "any"):
        raise argparse.ArgumentTypeError(f"expected KEY=int|str|any, got {v!r}")
    return name, kind


def add_cache_options(p: argparse.ArgumentParser, bench: bool = False) -> None:
    p.add_argument("--cache-models", type=_positive, default=None if bench else 2000,
                   help="most models kept loaded (default 2000" + ("; 1000 with --cycle)" if bench else ")"))
    p.add_argument("--cache-mb", type=_positive_float, default=None if bench else 256.0,
                   help="most megabytes of loaded models (default 256" + ("; 8 with --cycle)" if bench else ")"))
    p.add_argument("--version-ttl", type=_positive_float, default=5.0,
                   help="seconds a cached model's version is trusted before it is re-checked in the background (default 5)")
    p.add_argument("--load-workers", type=_positive, default=4, help="threads for registry lookups and model loads (default 4)")


def settings_from_args(args):
    from mm_platform.serving.app import ServingSettings

    return ServingSettings(
        cache_models=args.cache_models,
        cache_mb=args.cache_mb,
        version_ttl=args.version_ttl,
        max_horizon=getattr(args, "max_horizon", None),
        max_batch=getattr(args, "max_batch", 1000),
        load_workers=args.load_workers,
        key_types=dict(getattr(args, "key_type", None) or []),
    )


def cmd_serve(args) -> int:
    import uvicorn

    from mm_platform.serving.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_dataset_config(args)
    try:
        app = create_app(cfg, settings_from_args(args))
    except ValueError as exc:
        print(f"mm-platform serve: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level=args.log_level.lower(),
                access_log=args.access_log, timeout_keep_alive=30)
    return 0


def add_commands(sub) -> None:
    s = sub.add_parser("serve", help="serve real-time forecasts from the production registry (FastAPI + uvicorn)")
    add_dataset_options(s)
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=_positive, default=8000)
    add_cache_options(s)
    s.add_argument("--max-horizon", type=_positive, help="largest horizon a request may ask for (default 4 x the config's horizon)")
    s.add_argument("--max-batch", type=_positive, default=1000, help="most items in one batch request (default 1000)")
    s.add_argument("--key-type", type=_key_type, action="append", metavar="KEY=int|str|any",
                   help="type of a partition key's values in requests (default any: integer or string)")
    s.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    s.add_argument("--access-log", action="store_true", help="log every request (uvicorn access log)")
    s.set_defaults(func=cmd_serve)
