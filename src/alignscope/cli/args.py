"""Checked command-line values: numbers with a declared range (shown in `--help`, refused by argparse
before any work), and output paths that must be writable files, checked before the first model call."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from alignscope.errors import ConfigError


def number(kind: type, *, ge: float | None = None, gt: float | None = None, le: float | None = None):
    """An argparse `type=` for an int or float in a range; NaN and inf are refused."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if (ge is not None and value < ge) or (gt is not None and value <= gt) or (le is not None and value > le):
            raise argparse.ArgumentTypeError(f"must be {range_text(ge=ge, gt=gt, le=le)}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_chunk_arguments(parser: argparse.ArgumentParser, unit: str, default: int, *, sampled: bool) -> None:
    """`--chunk-UNIT` and `--resume` for a command that works in chunks (`audits.chunks`)."""
    done = "sampled, rewarded and saved" if sampled else "scored and saved"
    seeds = "; each chunk has its own seed, so N processes give the numbers of one" if sampled else ""
    parser.add_argument(f"--chunk-{unit}", type=number(int, ge=1), default=default,
                        help=f"{unit} {done} at a time: what a kill can lose, and what the processes of `torchrun`/"
                             f"`accelerate launch` share out{seeds} (>= 1)")
    parser.add_argument("--resume", action="store_true",
                        help=f"continue a run that was killed: the chunks already {'sampled' if sampled else 'scored'} are kept")


def add_reward_timeout(parser: argparse.ArgumentParser) -> None:
    """`--reward-timeout`: the same bound on user reward code as RL's `reward_timeout`."""
    parser.add_argument("--reward-timeout", type=number(float, gt=0),
                        help="seconds one call of a reward function may take before the command stops with an error naming it "
                             "(default: no limit)")


def range_text(*, ge: float | None = None, gt: float | None = None, le: float | None = None) -> str:
    low = f">= {ge:g}" if ge is not None else f"> {gt:g}" if gt is not None else ""
    if le is None:
        return low
    return f"in {'[' if ge is not None else '('}{ge if ge is not None else gt:g}, {le:g}]" if low else f"<= {le:g}"


def check_output(path: str | os.PathLike, flag: str) -> Path:
    """Refuse an output path that is a folder, lies under a file, or in a folder that cannot be written; creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} '{path}' is a folder, not a file", f"give {flag} a file path, e.g. {path / 'out.jsonl'}")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise ConfigError(f"{flag} '{path}' lies under '{parent}', which is a file, not a folder", f"give {flag} a path in a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{flag} '{path}' cannot be written (no permission in '{parent}')",
                          f"give {flag} a path in a folder you can write")
    return path
