"""`alignscope data inspect FILE`: look at a data file the way training will read it."""

from __future__ import annotations

import argparse
import json
import sys

from alignscope.cli.args import number

EXIT_PROBLEMS = 1  # as linters do: 1 = the data has problems, 2 = the command itself was refused


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect preference/SFT/prompt data files",
                       description="Work with data files before training on them.")
    s = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    i = s.add_parser(
        "inspect",
        help="format, counts, token lengths, length bias, duplicates and every problem of a data file",
        description="Read a data file exactly as training would and report its detected format (and why), row count, "
        "token-length statistics, length bias, duplicate prompts and pairs, identical pairs, and every problem "
        "(the first 20 listed, with file, line, field and fix).",
    )
    i.add_argument("file", help="JSONL (.jsonl.gz), JSON, CSV, Parquet, or a folder written by datasets' save_to_disk")
    i.add_argument("--format", help="skip detection: pairwise (dpo), ranked, unpaired (kto), sft or prompt")
    i.add_argument("--map", action="append", default=[], metavar="NEW=OLD",
                   help="rename a column to TRL's name, e.g. --map chosen=response_a (repeatable)")
    i.add_argument("--tokenizer", metavar="PATH_OR_NAME",
                   help="tokenizer for token lengths: a folder, a .gguf file, 'smollm2' or a cached hub id "
                   "(default: SmolLM2's when installed, else byte-level)")
    i.add_argument("--limit", type=number(int, ge=1), metavar="N", help="inspect only the first N rows (>= 1)")
    i.add_argument("--split", default="train", help="split of a saved DatasetDict or of a JSON object of splits (default: train)")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.add_argument("--strict", action="store_true", help=f"exit {EXIT_PROBLEMS} when any row has a problem "
                   f"(without it: exit {EXIT_PROBLEMS} only when no row is valid)")
    i.add_argument("--no-progress", dest="progress", action="store_false", help="no progress messages on stderr")
    i.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from alignscope.data.inspect import StreamInspection, format_report
    from alignscope.data.loader import parse_mapping
    from alignscope.models.loading import load_tokenizer

    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.progress else (lambda msg: None)
    path = Path(args.file)
    if path.is_file():
        say(f"reading {path} ({path.stat().st_size / 1e6:.1f} MB)")
    # The file is read as it is inspected (bounded memory); problems of the whole file (its format, the columns
    # --map names) are reported from its head, before the (slower) tokenizer is loaded.
    ins = StreamInspection(args.file, format=args.format, mapping=parse_mapping(args.map), limit=args.limit, split=args.split)
    report = ins.run(load_tokenizer(args.tokenizer), progress=args.progress)
    say(f"read {report['rows']} rows: {report['valid']} valid, {report['problems_total']} with problems")
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_report(report))
    if not report["valid"]:
        print(f"alignscope: no row of {report['rows']} is valid\n  fix: see the problems above", file=sys.stderr)
        return EXIT_PROBLEMS
    if args.strict and report["problems_total"]:
        print(f"alignscope: --strict: {report['problems_total']} of {report['rows']} rows have problems", file=sys.stderr)
        return EXIT_PROBLEMS
    return 0
