"""``mm-platform dashboard``: serve the web dashboard over the warehouse views."""

from __future__ import annotations

import argparse


def cmd_dashboard(args) -> int:
    import uvicorn

    from mm_platform.config import load_config
    from mm_platform.dashboard.app import create_app

    cfg = load_config(args.config)
    app = create_app(cfg)
    print(f"mm_platform dashboard for dataset {cfg.name} on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _port(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {v!r}") from None
    if not 0 < n < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {v!r}")
    return n


def add_commands(subparsers) -> None:
    d = subparsers.add_parser("dashboard", help="serve the web dashboard (overview, series explorer, promotion log)")
    d.add_argument("--config", help="dataset config YAML (default: $MM_CONFIG or the packaged retail example)")
    d.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    d.add_argument("--port", type=_port, default=8050, help="port (default 8050)")
    d.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level (default warning)")
    d.set_defaults(func=cmd_dashboard)
