"""Data: read any supported source, detect its format, validate every record, tokenize exactly."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignscope.data.formats import canonical_format, detect_format
from alignscope.data.sources import read_rows
from alignscope.data.validate import convert_rows, write_rejects
from alignscope.errors import DataError, did_you_mean


@dataclass
class LoadedData:
    format: str
    examples: list[Any]
    source: str
    n_rows: int
    n_rejected: int = 0
    rejects_path: Path | None = None
    detected_by: str = ""


def apply_mapping(rows, mapping: dict[str, str] | None):
    """Rename columns: mapping {new_name: old_name} (CLI --map chosen=response_a)."""
    if not mapping:
        return rows
    for row in rows:
        for new, old in mapping.items():
            if old in row.data:
                row.data[new] = row.data.pop(old)
    return rows


def load_data(
    source: Any,
    *,
    format: str | None = None,
    mapping: dict[str, str] | None = None,
    on_error: str = "fail",
    rejects_path: str | Path | None = None,
    split: str = "train",
    log=None,
) -> LoadedData:
    """Read, detect (or take `format`), validate and convert every row into records."""
    rows, read_errors, name = read_rows(source, split)
    if not rows and not read_errors:
        raise DataError("the dataset has no records", "give a file with at least one record", source=name)
    if mapping and rows:
        missing = [old for old in mapping.values() if old not in rows[0].data]
        if missing:
            raise DataError(f"--map names column(s) {missing} that the data does not have" + did_you_mean(missing[0], rows[0].data),
                            f"columns are: {sorted(rows[0].data)}", source=name)
    rows = apply_mapping(rows, mapping)
    if format:
        fmt, why = canonical_format(format), "given by --format"
    else:
        fmt, why = detect_format(set(rows[0].data) if rows else set())
    converted = convert_rows(rows, fmt, name, "skip" if on_error == "skip" else on_error, read_errors)
    if not converted.examples:
        first = converted.errors[0][0] if converted.errors else None
        raise DataError(
            f"no valid records ({len(converted.errors)} rejected" + (f"; first: {first}" if first else "") + ")",
            "fix the data or check --format/--map", source=name,
        )
    out = LoadedData(fmt, converted.examples, name, len(rows) + len(read_errors), len(converted.errors), None, why)
    if converted.errors:
        target = Path(rejects_path) if rejects_path else Path(name + ".rejects.jsonl" if name[0] != "<" else "rejects.jsonl")
        out.rejects_path = write_rejects(converted.errors, target)
        (log or (lambda m: print(m, file=sys.stderr)))(f"alignscope: skipped {len(converted.errors)} invalid rows; written to {out.rejects_path}")
    return out


__all__ = ["LoadedData", "load_data", "detect_format"]
