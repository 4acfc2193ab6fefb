"""The `alignscope` command. Each subcommand lives in its own module under `alignscope.cli`
and exposes `register(subparsers)`; user errors become a message and exit code 2. The command
modules import torch and models only inside their `run`, so `--help` stays fast."""

from __future__ import annotations

import argparse
import sys

from alignscope.cli import audit, compare_rm, data, demo, report, sampling, train
from alignscope.errors import AlignscopeError

COMMAND_MODULES = (data, train, audit, compare_rm, report, demo, sampling)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignscope",
        description="Align language models from preference data, and find the pitfalls that make alignment fail.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # key=value overrides may sit on either side of flags such as --resume.
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except AlignscopeError as e:
        print(f"alignscope: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the file system refused: a path that is a file, no permission, a full disk
        print(f"alignscope: error: {e}\n  fix: check the paths given (output folders must be folders), "
              "their permissions and the free disk space", file=sys.stderr)
        return AlignscopeError.exit_code
    except KeyboardInterrupt:
        print("alignscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
