"""`alignscope demo`: the lab's end-to-end pipeline, offline, with one HTML report."""

from __future__ import annotations

import argparse

from alignscope.cli.args import number


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="SFT -> RMs -> CHES audit -> DPO (+/- filter) -> RLOO with two RMs -> report, on the lab's world",
                       description="Runs offline on a laptop CPU: the lab pretrains (and caches) its tiny model, then every pitfall is shown against the gold reward.")
    p.add_argument("--out", default="runs/demo", help="output folder (report.html, summary.json, every sub-run)")
    p.add_argument("--size", default="tiny", choices=["tiny", "small"], help="lab model size")
    p.add_argument("--seed", type=number(int, ge=0), default=0, help="training seed (>= 0)")
    p.add_argument("--quick", action="store_true", help="fewer steps and pairs (the test suite's version)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alignscope.lab.demo import check_demo_args, run_demo

    check_demo_args(args.out, args.seed)  # before the lab model is built (tens of seconds on first use)
    run_demo(args.out, size=args.size, seed=args.seed, quick=args.quick)
    return 0
