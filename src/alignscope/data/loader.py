"""Data: read any supported source, detect its format, validate every record, tokenize exactly.

`load_data` is the one entry point trainers and CLIs use: it turns a file or dataset with TRL's
column names (or renamed ones, via `mapping`) into normalised records, and refuses bad rows
with an error that names the file, line, field and fix, unless asked to skip them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignscope.data.formats import (
    canonical_format,
    check_columns,
    check_mapping,
    common_columns,
    detect_format,
)
from alignscope.data.records import Example
from alignscope.data.sources import RawData, RawRow, read_rows
from alignscope.data.validate import convert_rows, first_error, write_rejects
from alignscope.errors import ConfigError, DataError, did_you_mean


@dataclass
class LoadedData:
    """The records of one source, and how they were obtained."""

    format: str
    examples: list[Example]
    source: str
    n_rows: int
    n_rejected: int = 0
    rejects_path: Path | None = None
    detected_by: str = ""


def parse_mapping(items: Iterable[str] | None) -> dict[str, str] | None:
    """CLI `--map NEW=OLD` items -> {new: old}."""
    out = {}
    for item in items or ():
        new, sep, old = item.partition("=")
        if not sep or not new.strip() or not old.strip():
            raise ConfigError(f"--map '{item}' is not NEW=OLD", "write e.g. --map chosen=response_a (TRL's name first)")
        out[new.strip()] = old.strip()
    return out or None


def apply_mapping(rows: list[RawRow], mapping: dict[str, str] | None, source: str = "<data>") -> list[RawRow]:
    """Rename columns in place: `mapping` is {trl_name: your_name}, e.g. {"chosen": "response_a"}."""
    if not mapping:
        return rows
    check_mapping(mapping, source)
    present = set().union(*(r.data.keys() for r in rows)) if rows else set()
    for new, old in mapping.items():
        if old not in present:
            reverse = f"; write TRL's name first: --map {old}={new}" if new in present else ""
            raise DataError(f"--map {new}={old}: the data has no column '{old}'" + did_you_mean(old, present),
                            f"columns are: {sorted(present)}{reverse}", source=source)
    for row in rows:
        d = row.data
        moved = {new: d[old] for new, old in mapping.items() if old in d}
        for old in set(mapping.values()) - set(mapping):
            d.pop(old, None)
        d.update(moved)
    return rows


def resolve_format(raw: RawData, format: str | None) -> tuple[str, str]:
    """(format, why): `format` (a name or alias) checked against the columns, or detected from them."""
    try:
        if format:
            fmt = canonical_format(format)
            if raw.rows:
                check_columns(fmt, set().union(*(r.data.keys() for r in raw.rows)))
            return fmt, f"given as '{format}'"
        if not raw.rows:
            return "prompt", "no readable rows"
        fmt, why = detect_format(common_columns(r.data for r in raw.rows))
        check_columns(fmt, set().union(*(r.data.keys() for r in raw.rows)))
        return fmt, why
    except DataError as e:
        raise DataError(e.problem, e.fix, source=raw.source) from None


def default_rejects_path(source: str) -> Path:
    """In the working directory: a shared or read-only data folder is never written to."""
    if source.startswith("<"):
        return Path.cwd() / "rejects.jsonl"
    return Path.cwd() / f"{Path(source).name}.rejects.jsonl"


def load_data(
    source: Any,
    *,
    format: str | None = None,
    mapping: dict[str, str] | None = None,
    on_error: str = "fail",
    rejects_path: str | Path | None = None,
    split: str = "train",
    log: Callable[[str], None] | None = None,
    as_chat: bool = False,
) -> LoadedData:
    """Read `source`, detect (or take) its format, validate and convert every row into records.

    `source`: a path (JSONL[.gz], JSON, CSV, Parquet, a save_to_disk folder), a list of dicts or a
    `datasets.Dataset`/`DatasetDict`. `format`: pairwise, ranked, unpaired, sft, prompt (or the
    aliases dpo, kto). `on_error="skip"` writes bad rows to `rejects_path` (default: next to the
    file) and reports their count through `log` (default: stderr). `as_chat=True` turns every
    plain-text prompt into one user message, so an instruct model is prompted through its
    chat template (plain questions such as GSM8K's otherwise reach it as raw text to continue).
    """
    if on_error not in ("fail", "skip"):
        raise ConfigError(f"unknown error policy on_error='{on_error}'" + did_you_mean(on_error, ("fail", "skip")),
                          "use on_error='fail' or on_error='skip'")
    raw = read_rows(source, split)
    if not raw.rows and not raw.errors:
        raise DataError("the dataset has no records", "give a source with at least one record", source=raw.source)
    apply_mapping(raw.rows, mapping, raw.source)
    fmt, why = resolve_format(raw, format)
    converted = convert_rows(raw.rows, fmt, raw.source, on_error, raw.errors)
    if as_chat:
        for ex in converted.examples:
            if isinstance(ex.prompt, str):
                ex.prompt = [{"role": "user", "content": ex.prompt}]
    out = LoadedData(fmt, converted.examples, raw.source, raw.n_rows, len(converted.errors), None, why)
    if converted.errors:
        out.rejects_path = write_rejects(converted.errors, rejects_path or default_rejects_path(raw.source))
        if not out.examples:
            e = first_error(converted.errors, raw.n_rows, raw.source)
            raise DataError(f"no valid records: all {raw.n_rows} rows were rejected (written to {out.rejects_path}); "
                            f"the first, line {e.line}: {e.problem}", "fix the data, or check --format/--map", source=raw.source)
        (log or (lambda m: print(m, file=sys.stderr)))(
            f"alignscope: skipped {out.n_rejected} of {out.n_rows} rows with problems; they are in {out.rejects_path}")
    return out


__all__ = ["LoadedData", "load_data", "parse_mapping", "apply_mapping", "detect_format", "canonical_format", "read_rows"]
