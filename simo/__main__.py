"""Command line: ``python -m simo figures --profile tiny [--only 01] [-p key value]``."""
from __future__ import annotations

import argparse
import sys

from simo.errors import SimoError


def main(argv: list[str] | None = None) -> int:
    from simo import runner
    from simo.config import available_profiles

    ap = argparse.ArgumentParser(prog="python -m simo", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    fig = sub.add_parser("figures", help="regenerate figures by running the notebooks")
    fig.add_argument("--profile", default="tiny", help=f"one of {available_profiles()}")
    fig.add_argument("--only", nargs="*", help="notebook names or prefixes, e.g. 00 01")
    fig.add_argument("--jobs", type=int, default=None, metavar="N",
                     help="run up to N independent notebooks at once, each with N job workers")
    fig.add_argument("--force", action="store_true", help="recompute every cached artifact once")
    fig.add_argument("-p", "--param", nargs=2, action="append", default=[],
                     metavar=("NAME", "VALUE"), help="notebook parameter (repeatable)")
    sub.add_parser("list", help="list the notebooks in pipeline order")
    args = ap.parse_args(argv)
    try:
        if args.command == "list":
            for name, what in runner.NOTEBOOKS.items():
                print(f"{name:<28} {what}")
            return 0
        params = {k: runner.parse_value(v) for k, v in args.param}
        records = runner.run_all(args.profile, args.only, params, jobs=args.jobs, force=args.force)
    except SimoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(runner.summary(records))
    return 0 if all(r.status == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
