"""``python -m benchmarks train|score|serve …`` (from the repository root, with the ``bench`` extra installed)."""

from __future__ import annotations

import argparse
import sys

from benchmarks import serve, train_score


def main(argv: list[str] | None = None) -> int:
    from mm_platform.cli import _quiet

    _quiet()
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="mm_platform benchmarks (numbers, not tests)")
    sub = p.add_subparsers(dest="task", required=True)
    for task, what in (("train", "training: ours versus applyInPandas + Prophet"), ("score", "batch scoring: ours versus applyInPandas")):
        b = sub.add_parser(task, help=what)
        train_score.add_arguments(b)
        b.set_defaults(func=train_score.cmd_bench)
    s = sub.add_parser("serve", help="the real-time service under load, on generated production models (127.0.0.1 only)")
    serve.add_arguments(s)
    s.set_defaults(func=serve.cmd_bench_serve)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
