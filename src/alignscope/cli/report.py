"""`alignscope report RUN_DIR`: one self-contained HTML file with every measured pitfall."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write RUN_DIR/report.html (plots inline, viewable offline)",
                       description="Build one self-contained HTML report from the files a run or audit wrote.")
    p.add_argument("run_dir", help="a training, RL or audit output folder (or the demo's folder)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from alignscope.errors import AlignscopeError
    from alignscope.report import build_report

    if not Path(args.run_dir).is_dir():
        raise AlignscopeError(f"run directory '{args.run_dir}' does not exist", "pass the output_dir of a run or audit")
    print(f"report: {build_report(args.run_dir)}")
    return 0
