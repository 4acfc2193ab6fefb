"""Where the audits write, checked before the first model call: an output that cannot be written
must fail in a second, not after an hour of scoring. Also the command line a manifest records."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from alignscope.errors import ConfigError


def _writable_parent(path: Path) -> bool:
    """Whether `path` could be created: its nearest existing ancestor is a writable folder."""
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)
    return False


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """An output folder: not an existing file, and creatable or writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{option} {p} is a file, but a folder is needed", f"pass a folder for {option} (it is created if missing)")
    if not _writable_parent(p):
        raise ConfigError(f"{option} {p} cannot be written (no permission, or a parent is a file)", f"pass a writable folder for {option}")
    return p


def check_output_file(path: str | os.PathLike, option: str, suffixes: tuple[str, ...] = ()) -> Path:
    """An output file: not an existing folder, in a creatable or writable folder, with one of `suffixes`."""
    p = Path(path)
    if p.is_dir() or str(path).endswith(os.sep):
        raise ConfigError(f"{option} {p} is a folder, but a file is needed", f"pass a file name for {option}, e.g. {p / ('out' + (suffixes[0] if suffixes else '.json'))}")
    if suffixes and p.suffix not in suffixes:
        raise ConfigError(f"{option} {p} must end in {' or '.join(suffixes)}", f"e.g. {p.with_suffix(suffixes[0])}")
    if not _writable_parent(p.parent):
        raise ConfigError(f"{option} {p} cannot be written (no permission, or a parent is a file)", f"pass a writable path for {option}")
    return p


def check_number(value: float | int | None, option: str, *, minimum: float, why: str = "") -> None:
    """A finite number at least `minimum` (None passes: the option was not given)."""
    if value is None:
        return
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{option} must be at least {minimum:g}, got {value}" + (f" ({why})" if why else ""),
                          f"pass {option} {max(minimum, 1) if minimum >= 1 else minimum:g} or more")


def command_line(args: argparse.Namespace, words: str) -> str:
    """`alignscope WORDS --opt value ...` from the parsed options (defaults included), for a manifest."""
    parts = [f"alignscope {words}"]
    for key, value in vars(args).items():
        if key in ("func", "command", "audit_command") or value is None or value is False or value == []:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts.append(flag + " " + " ".join(str(v) for v in value))
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)
