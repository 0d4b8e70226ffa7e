"""``python -m benchmarks train|score|driver-rss|cluster|serve …`` (from the repository root, with the ``bench`` extra installed)."""

from __future__ import annotations

import argparse
import sys

from benchmarks import cluster, serve, train_score


def main(argv: list[str] | None = None) -> int:
    from mm_platform.cli import _quiet

    _quiet()
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="mm_platform benchmarks (numbers, not tests)")
    sub = p.add_subparsers(dest="task", required=True)
    for task, what in (("train", "training: ours versus applyInPandas + Prophet"), ("score", "batch scoring: ours versus applyInPandas")):
        b = sub.add_parser(task, help=what)
        train_score.add_arguments(b)
        b.set_defaults(func=train_score.cmd_bench)
    d = sub.add_parser("driver-rss", help="the driver's peak RSS over whole mm-platform runs at several data sizes")
    cluster.add_driver_rss_arguments(d)
    d.set_defaults(func=cluster.cmd_driver_rss)
    c = sub.add_parser("cluster", help="training and scoring on a standalone cluster and a lake: local vs 1 vs 2 workers")
    cluster.add_cluster_arguments(c)
    c.set_defaults(func=cluster.cmd_cluster)
    s = sub.add_parser("serve", help="the real-time service under load, on generated production models (127.0.0.1 only)")
    serve.add_arguments(s)
    s.set_defaults(func=serve.cmd_bench_serve)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
