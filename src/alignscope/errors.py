"""User-facing errors. The CLI turns every `AlignscopeError` into a message and exit code 2."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable


class AlignscopeError(Exception):
    """An error caused by the user's input or environment, with a fix to suggest."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}\n  fix: {fix}")


class ConfigError(AlignscopeError):
    """A config key or value is wrong."""


class DataError(AlignscopeError):
    """A data record or file is wrong. Names the file, the line or row, and the field."""

    def __init__(
        self,
        problem: str,
        fix: str | None = None,
        *,
        source: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ):
        self.source, self.line, self.field = source, line, field
        where = [str(source)] if source else []
        if line is not None:
            where.append(f"line {line}")
        if field:
            where.append(f"field '{field}'")
        prefix = ", ".join(where) + ": " if where else ""
        super().__init__(prefix + problem, fix)
        self.problem = problem  # without the location, so the error can be re-located


class RewardError(ConfigError):
    """User reward code failed: it raised, took too long, or returned something other than one finite number per
    response. Names the function, the prompt it failed on where one is to blame, and the fix."""


class ModelError(AlignscopeError):
    """A model or tokenizer cannot be loaded or used as asked."""


class TrainingError(AlignscopeError):
    """Training cannot continue (NaN loss, corrupt checkpoint, ...)."""


class OutputError(AlignscopeError):
    """An output file could not be written (full disk, permissions, a writer's own failure); the old file is kept."""


def edit_distance(a: str, b: str) -> int:
    """Edit distance counting an insertion, deletion, substitution or swap of two neighbours as one edit
    (optimal string alignment), so 'bata' is one edit from 'beta' and 'dorp' one from 'drop'."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice nearest to `name` by edit distance (ties: the one sharing the longest prefix, then difflib's
    ratio), if it is within a third of the longer length (at least 1 edit); else None."""
    best = None
    for c in dict.fromkeys(choices):
        d = edit_distance(name.lower(), c.lower())
        if d > max(1, max(len(name), len(c)) // 3):
            continue
        prefix = len(os.path.commonprefix([name.lower(), c.lower()]))
        key = (d, -prefix, -difflib.SequenceMatcher(None, name, c).ratio())
        if best is None or key < best[0]:
            best = (key, c)
    return best[1] if best else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix, or '' when nothing is close."""
    close = closest(name, choices)
    return f" (did you mean '{close}'?)" if close else ""
