"""Apply a format to raw rows under an error policy: `fail` on the first bad row, or `skip` bad rows
into a rejects file (written atomically) and count them. `collect` (for inspect) keeps every error."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignscope.data.formats import CONVERTERS
from alignscope.data.sources import RawRow
from alignscope.errors import DataError


@dataclass
class Converted:
    examples: list[Any] = field(default_factory=list)
    errors: list[tuple[DataError, RawRow]] = field(default_factory=list)


def located(e: DataError, source: str, line: int) -> DataError:
    """The same error with the file and line filled in."""
    if e.source is not None and e.line is not None:
        return e
    return DataError(e.problem, e.fix, source=source, line=line, field=e.field)


def convert_rows(rows: list[RawRow], fmt: str, source: str, policy: str, read_errors=()) -> Converted:
    if policy not in ("fail", "skip", "collect"):
        raise DataError(f"unknown error policy '{policy}'", "use on_error=fail or on_error=skip")
    out = Converted(errors=list(read_errors))
    if out.errors and policy == "fail":
        e = out.errors[0][0]
        raise DataError(e.problem, (e.fix or "") + f" ({len(out.errors)} unreadable line(s); on_error=skip drops them)", source=e.source, line=e.line, field=e.field)
    convert = CONVERTERS[fmt]
    for row in rows:
        try:
            out.examples.append(convert(row.data))
        except DataError as e:
            err = located(e, source, row.line)
            if policy == "fail":
                raise DataError(err.problem, (err.fix + "; " if err.fix else "") + "or set on_error=skip to drop bad rows",
                                source=err.source, line=err.line, field=err.field) from None
            out.errors.append((err, row))
    return out


def write_rejects(errors: list[tuple[DataError, RawRow]], path: Path) -> Path:
    """Each rejected row with its error, as JSONL, written to a temp file then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for err, row in sorted(errors, key=lambda x: x[1].line):
            rec = {"line": row.line, "field": err.field, "error": err.problem, "fix": err.fix}
            rec["row"] = row.data if row.data else row.text
            f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)
    return path
