"""User-facing errors. The CLI turns every `AlignscopeError` into a message and exit code 2."""

from __future__ import annotations

import difflib
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


class ModelError(AlignscopeError):
    """A model or tokenizer cannot be loaded or used as asked."""


class TrainingError(AlignscopeError):
    """Training cannot continue (NaN loss, corrupt checkpoint, ...)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
