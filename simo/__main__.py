"""Command line of the study.

  python -m simo figures --profile tiny [--only 01] [-p NAME VALUE] [-o KEY VALUE]
  python -m simo params 02          # a notebook's parameters, types, defaults and docs
  python -m simo site [--check]     # render executed/ as a static site (and check it in Chromium)
  python -m simo foundation --profile tiny
"""
from __future__ import annotations

import argparse
import re
import sys

from simo.errors import ConfigError, SimoError


def main(argv: list[str] | None = None) -> int:
    from simo import params, runner
    from simo.config import available_profiles

    ap = argparse.ArgumentParser(prog="python -m simo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    fig = sub.add_parser("figures", help="regenerate figures by running the notebooks")
    fig.add_argument("--profile", default="tiny", help=f"one of {available_profiles()} "
                     "(default: tiny, the embedded default that writes the gallery)")
    fig.add_argument("--only", nargs="*", help="notebook names or prefixes, e.g. 00 01")
    fig.add_argument("--jobs", type=int, default=None, metavar="N",
                     help="run up to N independent notebooks at once, each with N job workers")
    fig.add_argument("--force", action="store_true", help="recompute every cached artifact once")
    fig.add_argument("-p", "--param", nargs="+", action="append", default=[],
                     metavar=("NAME", "VALUE"), help="notebook parameter, e.g. -p seed 1 or "
                     "-p methods task_arithmetic,ties (lists: comma-separated; repeatable; "
                     "see `python -m simo params NB`)")
    fig.add_argument("-o", "--override", nargs="+", action="append", default=[],
                     metavar=("KEY", "VALUE"), help="dotted profile setting for every notebook, e.g. "
                     "-o finetune.steps 750 (repeatable; merged into the overrides parameter)")
    fnd = sub.add_parser("foundation", help="pretrain (or resume) the foundation encoder and "
                                            "write its release: weights + model card")
    fnd.add_argument("--profile", default="tiny", help=f"one of {available_profiles()}")
    fnd.add_argument("--out", default=None, help="weights file (default: the profile's "
                                                 "foundation.out)")
    fnd.add_argument("-o", "--override", nargs="+", action="append", default=[],
                     metavar=("KEY", "VALUE"), help="dotted profile setting, e.g. "
                                               "-o foundation.steps 500 (repeatable)")
    sub.add_parser("list", help="list the notebooks in pipeline order (their parameters: "
                                "python -m simo params NB)")
    prm = sub.add_parser("params", help="list a notebook's parameters: type, default, what it does")
    prm.add_argument("notebook", help="a notebook name or prefix, e.g. 02")
    site = sub.add_parser("site", help="render executed/ into build/site/ (make site)")
    site.add_argument("--check", action="store_true", help="then open every page in headless "
                      "Chromium: every image must render; screenshots in build/site/screenshots")
    args = ap.parse_args(argv)
    try:
        if args.command == "list":
            for name, what in runner.NOTEBOOKS.items():
                print(f"{name:<28} {what}")
            return 0
        if args.command == "params":
            for nb in runner.select([args.notebook]):
                print(params.describe(nb))
            return 0
        if args.command == "site":
            return _site(args.check)
        if args.command == "foundation":
            return _foundation(args)
        values = dict(pairs(args.param, "-p", "NAME"))
        overrides = {k: runner.parse_value(v) for k, v in pairs(args.override, "-o", "KEY")}
        if overrides:
            given = values.get("overrides") or "{}"
            values["overrides"] = {**runner.parse_value(given), **overrides}
        records = runner.run_all(args.profile, args.only, values, jobs=args.jobs, force=args.force,
                                 text=True)
    except SimoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(runner.summary(records))
    return 0 if all(r.status == "ok" for r in records) else 1


def pairs(given: list[list[str]], flag: str, what: str) -> list[tuple[str, str]]:
    """``-p NAME VALUE`` pairs, with a one-line error for ``-p seed:1`` or ``-p seed``."""
    out = []
    for item in given:
        if len(item) == 2:
            out.append((item[0], item[1]))
            continue
        glued = re.match(r"^([\w.]+)[:=](.+)$", item[0]) if len(item) == 1 else None
        if glued:
            raise ConfigError(f"{flag} {item[0]}: write the {what.lower()} and the value apart, "
                              f"with a space: {flag} {glued.group(1)} {glued.group(2)}")
        raise ConfigError(f"{flag} takes {what} and VALUE, got {' '.join(item)!r}: e.g. "
                          f"{flag} {'seed 1' if flag == '-p' else 'finetune.steps 750'}")
    return out


def _site(check: bool) -> int:
    from simo import site

    index = site.build()
    print(f"wrote {index}")
    if not check:
        return 0
    pages = site.check(index.parent)
    bad = {p: v for p, v in pages.items() if v[1] < 0 or v[0] != v[1]}
    for page, (ok, total) in pages.items():
        print(f"{page:<32} images rendered {ok}/{total}")
    print(f"screenshots in {index.parent / 'screenshots'}")
    if bad:
        print(f"error: images missing or page not loaded: {sorted(bad)}", file=sys.stderr)
        return 1
    return 0


def _foundation(args: argparse.Namespace) -> int:
    import torch

    from simo import foundation, runner
    from simo.config import load_profile
    from simo.models.encoder import file_sha256

    profile = load_profile(args.profile, {k: runner.parse_value(v)
                                          for k, v in pairs(args.override, "-o", "KEY")})
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
