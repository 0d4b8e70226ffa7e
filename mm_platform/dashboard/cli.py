"""``mm-platform dashboard``: serve the web dashboard over the warehouse views."""

from __future__ import annotations

import argparse
import ipaddress
import os

from mm_platform.cli import add_dataset_options, load_dataset_config
from mm_platform.core.errors import UserError


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost; a name or a wildcard (0.0.0.0, ::) is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_dashboard(args) -> int:
    import uvicorn

    from mm_platform.dashboard.app import TOKEN_ENV, create_app

    token = os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(args.host):
        # Bound beyond loopback, the dashboard shows every series' forecasts to the network.
        raise UserError(f"--host {args.host} is not a loopback address: set {TOKEN_ENV} to the token browsers and "
                        "clients must give, or use --host 127.0.0.1")
    cfg = load_dataset_config(args)
    app = create_app(cfg, token=token)
    print(f"mm_platform dashboard for dataset {cfg.name} on http://{args.host}:{args.port}/"
          f"{' (token required: sign in at /login)' if token else ''}", flush=True)
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
    add_dataset_options(d)
    d.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1); beyond loopback "
                   "$MM_API_TOKEN must be set (the scoring service's bearer token option)")
    d.add_argument("--port", type=_port, default=8050, help="port (default 8050)")
    d.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level (default warning)")
    d.set_defaults(func=cmd_dashboard)
