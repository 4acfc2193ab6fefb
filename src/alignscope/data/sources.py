"""Raw rows from files and objects, each with its 1-based line/row number for error messages."""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignscope.errors import DataError

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv", ".csv.gz")


@dataclass
class RawRow:
    data: dict[str, Any]
    line: int
    text: str | None = None  # the raw line, for rejects files


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"cannot decompress: {e}", "check that the file is a complete gzip file", source=str(path)) from None
    return raw


def _decode(line: bytes, path: Path, lineno: int) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"invalid UTF-8 at byte {e.start} of the line", "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
            source=str(path), line=lineno,
        ) from None


def read_jsonl(path: Path) -> tuple[list[RawRow], list[tuple[DataError, RawRow]]]:
    rows, errors = [], []
    for lineno, line in enumerate(_read_bytes(path).split(b"\n"), 1):
        if not line.strip():
            continue
        raw = RawRow({}, lineno, line[:10000].decode("utf-8", errors="replace"))
        try:
            text = _decode(line, path, lineno)
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON ({e.msg} at column {e.colno})", "fix or remove the line", source=str(path), line=lineno) from None
            if not isinstance(obj, dict):
                raise DataError(f"each line must be a JSON object, got {type(obj).__name__}", "write one {...} object per line", source=str(path), line=lineno)
        except DataError as e:
            errors.append((e, raw))
            continue
        raw.data = obj
        rows.append(raw)
    return rows, errors


def read_json(path: Path, split: str) -> list[RawRow]:
    text = _decode(_read_bytes(path), path, 1)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})", "fix the JSON syntax", source=str(path), line=e.lineno) from None
    if isinstance(obj, dict):
        for key in (split, "data", "train", "rows", "examples"):
            if isinstance(obj.get(key), list):
                obj = obj[key]
                break
        else:
            raise DataError(f"the JSON object has no list of records under '{split}', 'data' or 'train'", "store a list of records", source=str(path))
    if not isinstance(obj, list):
        raise DataError(f"expected a list of records, got {type(obj).__name__}", source=str(path))
    rows = []
    for i, rec in enumerate(obj, 1):
        if not isinstance(rec, dict):
            raise DataError(f"record {i} is {type(rec).__name__}, not an object", "every record must be a {...} object", source=str(path), line=i)
        rows.append(RawRow(rec, i))
    return rows


def _cell(value: str) -> Any:
    v = value.strip()
    if v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return value
    return value


def read_csv(path: Path) -> list[RawRow]:
    text = _decode(_read_bytes(path), path, 1) if not path.name.endswith(".gz") else _read_bytes(path).decode("utf-8")
    reader = csv.DictReader(io.StringIO(text))
    return [RawRow({k: _cell(v) if isinstance(v, str) else v for k, v in row.items() if k is not None}, reader.line_num) for row in reader]


def read_parquet(path: Path) -> list[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for broken files
        raise DataError(f"cannot read Parquet: {e}", "check that the file is a complete Parquet file", source=str(path)) from None
    return [RawRow(r, i) for i, r in enumerate(table.to_pylist(), 1)]


def read_rows(source: Any, split: str = "train") -> tuple[list[RawRow], list[tuple[DataError, RawRow]], str]:
    """(rows, read errors, source name). Read errors are kept apart so a `skip` policy can reject them."""
    if isinstance(source, list):
        for i, r in enumerate(source, 1):
            if not isinstance(r, dict):
                raise DataError(f"record {i} is {type(r).__name__}, not a dict", source="<list>", line=i)
        return [RawRow(r, i) for i, r in enumerate(source, 1)], [], "<list>"
    if hasattr(source, "column_names") and hasattr(source, "__iter__") and not isinstance(source, (str, Path)):
        if hasattr(source, "keys") and not hasattr(source, "features"):
            source = source[split]
        return [RawRow(dict(r), i) for i, r in enumerate(source, 1)], [], "<dataset>"
    path = Path(source)
    name = str(path)
    if not path.exists():
        raise DataError(f"data file '{path}' does not exist", "check the path", source=None)
    if path.is_dir():
        try:
            from datasets import load_from_disk

            ds = load_from_disk(str(path))
        except Exception as e:  # not a saved dataset
            raise DataError(f"'{path}' is a folder but not a dataset saved with save_to_disk ({e})", "give a file or a saved dataset folder") from None
        if hasattr(ds, "keys") and not hasattr(ds, "features"):
            if split not in ds:
                raise DataError(f"the saved DatasetDict has no split '{split}' (it has {list(ds.keys())})", "pass split=...", source=name)
            ds = ds[split]
        return [RawRow(dict(r), i) for i, r in enumerate(ds, 1)], [], name
    if path.stat().st_size == 0:
        raise DataError("the file is empty", "give a file with records", source=name)
    suffix = _suffix(path)
    if suffix in (".jsonl", ".jsonl.gz"):
        rows, errors = read_jsonl(path)
        return rows, errors, name
    if suffix in (".json", ".json.gz"):
        return read_json(path, split), [], name
    if suffix in (".csv", ".csv.gz"):
        return read_csv(path), [], name
    if suffix == ".parquet":
        return read_parquet(path), [], name
    raise DataError(f"unknown file type '{suffix}'", f"use one of {', '.join(SUFFIXES)} or a save_to_disk folder", source=name)
