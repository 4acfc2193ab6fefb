"""`alignscope data inspect FILE`."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect data files")
    s = p.add_subparsers(dest="data_command", metavar="WHAT", required=True)
    i = s.add_parser("inspect", help="detected format, counts, token lengths, length bias, duplicates, every problem",
                     description="Read a data file the way training would, and report what it holds and what is wrong with it.")
    i.add_argument("file", help="JSONL (.gz), JSON, Parquet, CSV, or a save_to_disk folder")
    i.add_argument("--format", help="override detection: pairwise, ranked, unpaired, sft, prompt")
    i.add_argument("--map", action="append", default=[], metavar="NEW=OLD", help="rename a column, e.g. --map chosen=response_a (repeatable)")
    i.add_argument("--tokenizer", help="tokenizer for lengths: folder, 'smollm2', a cached hub id (default: SmolLM2's if installed, else bytes)")
    i.add_argument("--limit", type=int, help="inspect only the first N rows")
    i.add_argument("--json", action="store_true", help="print machine-readable JSON")
    i.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from alignscope.cli.audit import _mapping
    from alignscope.data.inspect import format_report, inspect_data
    from alignscope.models.loading import load_tokenizer

    report = inspect_data(args.file, load_tokenizer(args.tokenizer), format=args.format, mapping=_mapping(args.map), limit=args.limit)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0
