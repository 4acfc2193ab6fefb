"""The `alignscope` command. Each subcommand lives in its own module under `alignscope.cli`
and exposes `register(subparsers)`; user errors become a message and exit code 2. The command
modules import torch and models only inside their `run`, so `--help` stays fast."""

from __future__ import annotations

import argparse
import errno
import re
import sys

from alignscope.cli import audit, compare_rm, data, demo, report, sampling, train
from alignscope.console import quiet_libraries
from alignscope.errors import AlignscopeError, closest, did_you_mean

COMMAND_MODULES = (data, train, audit, compare_rm, report, demo, sampling)


class Parser(argparse.ArgumentParser):
    """argparse with did-you-mean: a mistyped flag or choice is matched by edit distance.

    argparse reports a missing required flag before an unknown one, so `bon --polcy X` would say only
    that --policy is required; `hints` (set by `main` from the flags actually passed) adds the match."""

    hints: str = ""

    def error(self, message: str):
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            message += did_you_mean(m[1], re.findall(r"'([^']*)'", m[2]))
        super().error(message + Parser.hints)


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    out = set()
    for action in parser._actions:
        out.update(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _flags(sub)
    return out


def flag_hints(parser: argparse.ArgumentParser, argv: list[str]) -> str:
    """'; --polcy: did you mean --policy?' for every passed flag that no command has."""
    known = _flags(parser)
    hints = []
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and flag not in known:
            match = closest(flag, known)
            hints.append(f"{flag} is not an option" + (f" (did you mean '{match}'?)" if match else ""))
    return "; " + "; ".join(hints) if hints else ""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="alignscope",
        description="Align language models from preference data, and find the pitfalls that make alignment fail.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    parser = build_parser()
    Parser.hints = flag_hints(parser, sys.argv[1:] if argv is None else argv)
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
        fix = ("free disk space (nothing written so far was removed; a run resumes with --resume)" if e.errno in (errno.ENOSPC, errno.EDQUOT)
               else "check the paths given (output folders must be folders), their permissions and the free disk space")
        print(f"alignscope: error: {e}\n  fix: {fix}", file=sys.stderr)
        return AlignscopeError.exit_code
    except KeyboardInterrupt:
        print("alignscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
