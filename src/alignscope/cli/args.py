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
