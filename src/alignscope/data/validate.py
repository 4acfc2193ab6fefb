"""Check every row under an error policy.

`fail` (the default) raises the first problem, with how many rows have problems, so a user fixes
the data before spending compute on it. `skip` sets bad rows aside in a rejects JSONL file (written
to a temporary name and renamed, so it is complete or absent) and goes on. `collect` keeps every
error for `data inspect`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from alignscope.atomic import write_text
from alignscope.data.formats import CONVERTERS
from alignscope.data.records import Example
from alignscope.data.sources import RawRow
from alignscope.errors import ConfigError, DataError, did_you_mean

POLICIES = ("fail", "skip", "collect")
Rejected = tuple[DataError, RawRow]


@dataclass
class Converted:
    examples: list[Example] = field(default_factory=list)
    errors: list[Rejected] = field(default_factory=list)  # sorted by line


def kind_of(e: DataError) -> str:
    return getattr(e, "kind", "invalid")


def located(e: DataError, source: str, line: int) -> DataError:
    """The same error with the file and line filled in (converters only know the field)."""
    out = DataError(e.problem, e.fix, source=e.source or source, line=line if e.line is None else e.line, field=e.field)
    out.kind = kind_of(e)
    return out


def convert_rows(rows: list[RawRow], fmt: str, source: str, policy: str = "fail", read_errors: list[Rejected] = ()) -> Converted:
    """Convert every row with the `fmt` converter; unreadable rows (`read_errors`) count as rejected."""
    if policy not in POLICIES:
        raise ConfigError(f"unknown error policy '{policy}'" + did_you_mean(policy, POLICIES[:2]), "use on_error='fail' or 'skip'")
    convert = CONVERTERS[fmt]
    out = Converted([], list(read_errors))
    for row in rows:
        try:
            out.examples.append(convert(row.data))
        except DataError as e:
            out.errors.append((located(e, source, row.line), row))
    out.errors.sort(key=lambda x: x[1].line)
    if policy == "fail" and out.errors:
        raise first_error(out.errors, len(rows) + len(read_errors), source)
    return out


def first_error(errors: list[Rejected], n_rows: int, source: str) -> DataError:
    """The first problem, with a hint saying how many rows have one and what to do about them."""
    e = errors[0][0]
    n = len(errors)
    rows = "1 row has a problem" if n == 1 else f"{n} of {n_rows} rows have problems"
    where = f"alignscope data inspect {source}" if not source.startswith("<") else "alignscope data inspect FILE"
    hint = f"{rows}: `{where}` lists them; on_error='skip' sets them aside in a rejects file and goes on"
    out = DataError(e.problem, f"{e.fix}\n  ({hint})" if e.fix else hint, source=e.source, line=e.line, field=e.field)
    out.kind = kind_of(e)
    return out


def write_rejects(errors: list[Rejected], path: str | Path) -> Path:
    """Each rejected row and its error as one JSON line, written atomically (temp file, then rename)."""
    lines = []
    for err, row in errors:
        rec = {"line": row.line, "field": err.field, "kind": kind_of(err), "error": err.problem, "fix": err.fix,
               "row": row.data if row.data else row.text}
        lines.append(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    return write_text(path, "".join(lines), errors="backslashreplace")  # a rejected row may hold lone surrogates
