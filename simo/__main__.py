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
    fnd = sub.add_parser("foundation", help="pretrain (or resume) the foundation encoder and "
                                            "write its release: weights + model card")
    fnd.add_argument("--profile", default="tiny", help=f"one of {available_profiles()}")
    fnd.add_argument("--out", default=None, help="weights file (default: the profile's "
                                                 "foundation.out)")
    fnd.add_argument("-o", "--override", nargs=2, action="append", default=[],
                     metavar=("KEY", "VALUE"), help="dotted profile setting, e.g. "
                                                    "foundation.steps 500 (repeatable)")
    sub.add_parser("list", help="list the notebooks in pipeline order")
    args = ap.parse_args(argv)
    try:
        if args.command == "list":
            for name, what in runner.NOTEBOOKS.items():
                print(f"{name:<28} {what}")
            return 0
        if args.command == "foundation":
            return _foundation(args)
        params = {k: runner.parse_value(v) for k, v in args.param}
        records = runner.run_all(args.profile, args.only, params, jobs=args.jobs, force=args.force)
    except SimoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(runner.summary(records))
    return 0 if all(r.status == "ok" for r in records) else 1


def _foundation(args: argparse.Namespace) -> int:
    import torch

    from simo import foundation, runner
    from simo.config import load_profile
    from simo.models.encoder import file_sha256

    profile = load_profile(args.profile, {k: runner.parse_value(v) for k, v in args.override})
    torch.set_num_threads(profile.num_threads)
    out = foundation.release(profile, args.out)
    sha = file_sha256(out)
    print(f"wrote {out} (sha256 {sha}) and its model card {out.with_suffix('.md')}")
    if profile.model.weights_sha256 not in (None, sha):
        print(f"note: profiles/{args.profile}.yaml pins model.weights_sha256 "
              f"{profile.model.weights_sha256}; set it to {sha} to use this release")
    return 0


if __name__ == "__main__":
    sys.exit(main())
