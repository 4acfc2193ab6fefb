"""Raw rows from files and in-memory objects, each with its 1-based line (or row) number.

Every reader keeps the position of each record so that a validation error can point at the
exact line a user has to open. Rows that cannot be read at all (malformed JSON, invalid UTF-8)
are returned apart from the good ones, so a `skip` policy can reject them like any other row.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import gzip
import json
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from alignscope.errors import DataError, did_you_mean

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv", ".csv.gz")
UTF8_FIX = "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8)"


@dataclass
class RawRow:
    """One record as read, before any format is applied."""

    data: dict[str, Any]
    line: int
    text: str | None = None  # the raw line when the record could not be parsed, for the rejects file


@dataclass
class RawData:
    """Everything read from one source: good rows, unreadable rows with their errors, and the name."""

    rows: list[RawRow]
    errors: list[tuple[DataError, RawRow]] = field(default_factory=list)
    source: str = "<list>"

    @property
    def n_rows(self) -> int:
        return len(self.rows) + len(self.errors)


Item = Union[RawRow, "tuple[DataError, RawRow]"]  # a row, or a row that could not be read and its error


class RowStream:
    """The rows of one source in file order, read as they are consumed: JSON Lines and CSV (gzipped or not) and
    Parquet are read a line or a batch at a time, so memory does not grow with the file. Each item is a `RawRow`,
    or `(DataError, RawRow)` for a row that cannot be read; an error that stops the whole read (a corrupt gzip
    stream, a CSV quote never closed) is raised when it is reached. `size` and `position()` are bytes of the file
    as stored (compressed for .gz), for progress."""

    def __init__(self, source: str, items: Iterable[Item], size: int = 0, position: Callable[[], int] | None = None):
        self.source, self.size = source, size
        self._items = iter(items)
        self.position = position or (lambda: size)

    def __iter__(self) -> Iterator[Item]:
        return self._items


def collect_rows(stream: RowStream) -> RawData:
    """Everything a stream holds, as `RawData`."""
    out = RawData([], [], stream.source)
    for item in stream:
        if isinstance(item, RawRow):
            out.rows.append(item)
        else:
            out.errors.append(item)
    return out


def _in_line_order(data: RawData) -> list[Item]:
    return sorted([*data.rows, *data.errors], key=lambda x: x.line if isinstance(x, RawRow) else x[1].line)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook refusing a key given twice: json would silently keep only the last value."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


DUPLICATE_FIX = "keep one value per key: JSON readers silently keep only the last one"


def loads(text: str) -> Any:
    """json.loads that refuses duplicated keys (raises _DuplicateKey, a ValueError)."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def _error(kind: str, problem: str, fix: str | None, source: str, line: int | None = None) -> DataError:
    e = DataError(problem, fix, source=source, line=line)
    e.kind = kind
    return e


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _decompress_error(e: Exception, path: Path) -> DataError:
    return DataError(f"cannot decompress: {e}", "check that the file is a complete gzip file", source=str(path))


GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)  # bad header or trailing garbage, truncated, corrupt stream


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except GZIP_ERRORS as e:
            raise _decompress_error(e, path) from None
    return raw[len(codecs.BOM_UTF8):] if raw.startswith(codecs.BOM_UTF8) else raw


def _lines(path: Path) -> tuple[Iterator[bytes], Callable[[], int]]:
    """The file's lines, split on b"\\n" only and each with its b"\\n", decompressed as they are read for .gz (a
    corrupt stream is a `DataError` where it is reached); the UTF-8 BOM of the first line dropped. Also a function
    giving how many bytes of the stored file have been read."""
    f = open(path, "rb")  # noqa: SIM115 (closed by the generator, when it ends or is discarded)
    gz = path.name.lower().endswith(".gz")

    def gen() -> Iterator[bytes]:
        try:
            stream = gzip.GzipFile(fileobj=f) if gz else f
            first = True
            try:
                for line in stream:
                    if first:
                        first = False
                        if line.startswith(codecs.BOM_UTF8):
                            line = line[len(codecs.BOM_UTF8):]
                    yield line
            except GZIP_ERRORS as e:
                if not gz:
                    raise
                raise _decompress_error(e, path) from None
        finally:
            f.close()

    size = path.stat().st_size
    return gen(), lambda: size if f.closed else f.tell()


def _utf8_error(line_bytes: bytes, offset: int, source: str, line: int) -> DataError:
    bad = line_bytes[offset : offset + 1].hex()
    return _error("utf8", f"invalid UTF-8 (byte 0x{bad} at byte offset {offset} of the line)", UTF8_FIX, source, line)


def _decode_all(raw: bytes, source: str) -> str:
    """Decode a whole file; on failure name the line and the byte offset within it."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        start = raw.rfind(b"\n", 0, e.start) + 1
        raise _utf8_error(raw[start:], e.start - start, source, raw.count(b"\n", 0, e.start) + 1) from None


def _jsonl_items(name: str, lines: Iterable[bytes]) -> Iterator[Item]:
    """One JSON object per line; each line is decoded on its own so one bad line costs one row."""
    for lineno, line in enumerate(lines, 1):
        if line.endswith(b"\n"):
            line = line[:-1]
        if not line.strip():
            continue
        raw = RawRow({}, lineno, line[:10000].decode("utf-8", errors="replace"))
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield _utf8_error(line, e.start, name, lineno), raw
            continue
        try:
            obj = loads(text)
        except json.JSONDecodeError as e:
            yield _error("json", f"malformed JSON ({e.msg} at column {e.colno})",
                         "fix or remove the line: each line must be one complete JSON object", name, lineno), raw
            continue
        except _DuplicateKey as e:
            yield _error("json", f"the key '{e}' appears twice in the object", DUPLICATE_FIX, name, lineno), raw
            continue
        except (ValueError, RecursionError) as e:  # a number too long to convert, nesting too deep
            yield _error("json", f"unreadable JSON ({str(e)[:120]})",
                         "fix or remove the line: numbers of at most 4300 digits, nesting of at most ~1000 levels",
                         name, lineno), raw
            continue
        if not isinstance(obj, dict):
            yield _error("json", f"the line is a JSON {type(obj).__name__}, not an object",
                         "write one {...} object per line", name, lineno), raw
            continue
        raw.data, raw.text = obj, None
        yield raw


def stream_jsonl(path: Path) -> RowStream:
    lines, position = _lines(path)
    return RowStream(str(path), _jsonl_items(str(path), lines), path.stat().st_size, position)


def read_jsonl(path: Path) -> RawData:
    """One JSON object per line; each line is decoded on its own so one bad line costs one row."""
    return collect_rows(stream_jsonl(path))


class _Lines:
    """Character offset -> 1-based line number."""

    def __init__(self, text: str):
        self.newlines, i = [], text.find("\n")
        while i != -1:
            self.newlines.append(i)
            i = text.find("\n", i + 1)

    def line(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _array_offsets(text: str, pos: int) -> list[int]:
    """Start offsets of the items of the JSON array opening at `pos` (the text is known to be valid)."""
    dec, offsets = json.JSONDecoder(), []
    pos = _skip_ws(text, pos + 1)
    while text[pos] != "]":
        offsets.append(pos)
        _, pos = dec.raw_decode(text, pos)
        pos = _skip_ws(text, pos)
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
    return offsets


def _member_offset(text: str, key: str) -> int:
    """Offset of the value of top-level `key` in a valid JSON object."""
    dec = json.JSONDecoder()
    pos = _skip_ws(text, _skip_ws(text, 0) + 1)
    while text[pos] != "}":
        k, pos = dec.raw_decode(text, pos)
        pos = _skip_ws(text, _skip_ws(text, pos) + 1)  # past ':'
        if k == key:
            return pos
        _, pos = dec.raw_decode(text, pos)
        pos = _skip_ws(text, pos)
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
    raise KeyError(key)


def read_json(path: Path, split: str = "train") -> RawData:
    """A JSON list of records, or an object holding one under the split name, 'data' or 'train'.

    Records are numbered by the file line they start on, found by re-scanning the (valid) text.
    A `.json` file that is really JSON Lines is read as such.
    """
    name = str(path)
    text = _decode_all(_read_bytes(path), name)
    try:
        obj = loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            return read_jsonl(path)
        raise _error("json", f"malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})", "fix the JSON syntax", name, e.lineno) from None
    except _DuplicateKey as e:  # find the records holding one (each is rejected on its own), else it is the top level
        obj, duplicated = json.loads(text), str(e)
    except (ValueError, RecursionError) as e:  # a number too long to convert, nesting too deep
        raise _error("json", f"unreadable JSON ({str(e)[:120]})", "fix the JSON: numbers of at most 4300 digits, "
                     "nesting of at most ~1000 levels", name) from None
    else:
        duplicated = None
    key = None
    if isinstance(obj, dict):
        key = next((k for k in dict.fromkeys((split, "data", "train", "rows", "examples")) if isinstance(obj.get(k), list)), None)
        if key is None:
            lists = [k for k, v in obj.items() if isinstance(v, list)]
            raise DataError(
                f"the JSON object has no list of records under {' or '.join(repr(k) for k in dict.fromkeys((split, 'data', 'train')))}"
                + (f" (it has lists under {lists})" if lists else ""),
                "store a list of records, or {\"data\": [...]}" + (f", or pass split='{lists[0]}'" if lists else ""),
                source=name,
            )
        records = obj[key]
    elif isinstance(obj, list):
        records = obj
    else:
        raise DataError(f"expected a list of records, got a JSON {type(obj).__name__}", "store a list of {...} records", source=name)
    lines = _Lines(text)
    start = _member_offset(text, key) if key is not None else _skip_ws(text, 0)
    out = RawData([], [], name)
    strict = json.JSONDecoder(object_pairs_hook=_unique_keys)
    for rec, off in zip(records, _array_offsets(text, start)):
        lineno = lines.line(off)
        if duplicated is not None and isinstance(rec, dict):
            try:
                strict.raw_decode(text, off)
            except _DuplicateKey as e:
                out.errors.append((_error("json", f"the key '{e}' appears twice in the record", DUPLICATE_FIX, name, lineno),
                                   RawRow({}, lineno, json.dumps(rec)[:10000])))
                continue
        if isinstance(rec, dict):
            out.rows.append(RawRow(rec, lineno))
        else:
            out.errors.append((_error("json", f"the record is a JSON {type(rec).__name__}, not an object",
                                      "every record must be a {...} object", name, lineno), RawRow({}, lineno, json.dumps(rec)[:10000])))
    if duplicated is not None and not out.errors:
        raise _error("json", f"the key '{duplicated}' appears twice in the top-level object", DUPLICATE_FIX, name)
    return out


class CellList(list):
    """A CSV cell that held a JSON list, with the cell's own text in `csv_text`: a field that wants text (a
    response such as '[1, 2, 3]') gets the text back instead of a list (see `formats.cell_text`)."""

    csv_text: str = ""


class CellDict(dict):
    """A CSV cell that held a JSON object, with the cell's own text in `csv_text` (see `CellList`)."""

    csv_text: str = ""


def _cell(value: str) -> Any:
    """CSV cells holding JSON lists/objects (chat messages, score lists) are parsed, keeping their text; text stays text."""
    v = value.strip()
    if v[:1] in "[{" and v[-1:] in "]}":
        try:
            obj = loads(v)
        except (ValueError, RecursionError):
            return value
        cell = CellList(obj) if isinstance(obj, list) else CellDict(obj)
        cell.csv_text = value
        return cell
    return value


CSV_FIELD_LIMIT = 2**31 - 1  # Python's default (131,072 characters) refuses long responses
_LONE_CR = re.compile(r"(?<=\r)(?!\n)")  # a line ending of its own (old Mac files); \r\n is one ending


def _csv_items(name: str, lines: Iterable[bytes]) -> Iterator[Item]:
    """A header row and one record per row; the row's number is the file line it starts on.

    A row with more or fewer cells than the header is rejected (never padded or cut); a quote that is never
    closed (which would merge every later line into one cell), a header naming a column twice (one of the two
    would be lost) and invalid UTF-8 stop the read.
    """

    def texts() -> Iterator[str]:  # lines as the csv module wants them: \r, \n and \r\n each end one
        for lineno, line in enumerate(lines, 1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _utf8_error(line, e.start, name, lineno) from None
            if "\r" in text:
                yield from (part for part in _LONE_CR.split(text) if part)
            else:
                yield text

    old_limit = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        reader = csv.reader(texts(), strict=True)
        prev_end, header = 0, None
        while True:
            start = prev_end + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                unclosed = "unexpected end of data" in str(e)
                raise _error(
                    "csv",
                    "a quoted cell opens on this row and is never closed, so every later line would merge into it"
                    if unclosed else f"malformed CSV ({e})",
                    "close the quote; a quote inside a quoted cell is written twice (\"\")", name, start,
                ) from None
            prev_end = reader.line_num
            if not cells:
                continue
            if header is None:
                twice = [c for i, c in enumerate(cells) if c in cells[:i]]
                if twice:
                    at = [i + 1 for i, c in enumerate(cells) if c == twice[0]]
                    raise _error("csv", f"the header names the column '{twice[0]}' twice (columns {at[0]} and {at[1]}), so the "
                                 "cells of one of them would be lost", "give every column its own name", name, start)
                header = cells
                continue
            if len(cells) != len(header):
                yield (_error("csv", f"the row has {len(cells)} cells, the header has {len(header)}",
                              "quote cells that contain commas, and give every row one cell per column", name, start),
                       RawRow({}, start, ",".join(cells)[:10000]))
                continue
            yield RawRow({k: _cell(v) for k, v in zip(header, cells)}, start)
    finally:
        csv.field_size_limit(old_limit)


def stream_csv(path: Path) -> RowStream:
    lines, position = _lines(path)
    return RowStream(str(path), _csv_items(str(path), lines), path.stat().st_size, position)


def read_csv(path: Path) -> RawData:
    """A header row and one record per row (see `_csv_items`)."""
    return collect_rows(stream_csv(path))


def _parquet_error(e: Exception, path: Path) -> DataError:
    return DataError(f"cannot read Parquet: {e}", "check that the file is a complete Parquet file", source=str(path))


def stream_parquet(path: Path, batch_rows: int = 1024) -> RowStream:
    """Parquet rows, a batch at a time."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        total = pf.metadata.num_rows
    except Exception as e:  # pyarrow raises several exception types for broken files
        raise _parquet_error(e, path) from None
    size, done = path.stat().st_size, [0]

    def gen() -> Iterator[Item]:
        try:
            batches = pf.iter_batches(batch_size=batch_rows)
            for batch in batches:
                for r in batch.to_pylist():
                    done[0] += 1
                    yield RawRow(r, done[0])
        except Exception as e:  # noqa: BLE001 (a broken row group)
            raise _parquet_error(e, path) from None

    return RowStream(str(path), gen(), size, lambda: int(size * done[0] / max(1, total)))


def read_parquet(path: Path) -> RawData:
    return collect_rows(stream_parquet(path))


def _pick_split(obj: Mapping, split: str, source: str) -> Any:
    if split not in obj:
        names = list(obj.keys())
        raise DataError(f"there is no split '{split}'" + did_you_mean(split, names) + f" (splits: {names})",
                        f"pass split='{names[0]}'" if names else "give a dataset with records", source=source)
    return obj[split]


def _from_records(records: Any, source: str) -> RawData:
    out = RawData([], [], source)
    for i, r in enumerate(records, 1):
        if isinstance(r, Mapping):
            out.rows.append(RawRow(dict(r), i))
        else:
            out.errors.append((_error("type", f"the record is a {type(r).__name__}, not a dict", "give a list of dicts", source, i),
                               RawRow({}, i, repr(r)[:10000])))
    return out


def _is_dataset(obj: Any) -> bool:
    return hasattr(obj, "column_names") and hasattr(obj, "to_list")


def read_rows(source: Any, split: str = "train") -> RawData:
    """Read any supported source: a path (JSONL[.gz], JSON[.gz], CSV[.gz], Parquet, save_to_disk folder),
    a list of dicts, a `datasets.Dataset`, or a `DatasetDict` / dict of splits (`split` picks one)."""
    return collect_rows(stream_rows(source, split))


def _whole(data: RawData, size: int = 0) -> RowStream:
    return RowStream(data.source, _in_line_order(data), size)


def stream_rows(source: Any, split: str = "train") -> RowStream:
    """`read_rows` as a `RowStream`: JSON Lines, CSV and Parquet files are read as the rows are consumed; other
    sources (a .json file, a saved or in-memory dataset) are read whole first."""
    if isinstance(source, (list, tuple)):
        return _whole(_from_records(source, "<list>"))
    if _is_dataset(source):
        return _whole(_from_records(source.to_list(), "<dataset>"))
    if isinstance(source, Mapping):
        return stream_rows(_pick_split(source, split, "<dataset>"), split)
    if not isinstance(source, (str, Path)):
        raise DataError(f"cannot read data from a {type(source).__name__}",
                        "give a file path, a list of dicts, or a datasets.Dataset")
    path = Path(source).expanduser()
    name = str(path)
    if not path.exists():
        siblings = [p.name for p in path.parent.iterdir()] if path.parent.is_dir() else []
        raise DataError("the file does not exist" + did_you_mean(path.name, siblings), "check the path", source=name)
    if path.is_dir():
        return _whole(_read_saved(path, split))
    if path.stat().st_size == 0:
        raise DataError("the file is empty", "give a file with at least one record", source=name)
    suffix = _suffix(path)
    if suffix in (".jsonl", ".jsonl.gz"):
        return stream_jsonl(path)
    if suffix in (".json", ".json.gz"):
        return _whole(read_json(path, split), path.stat().st_size)
    if suffix in (".csv", ".csv.gz"):
        return stream_csv(path)
    if suffix == ".parquet":
        return stream_parquet(path)
    raise DataError(f"unknown file type '{suffix or path.name}'",
                    f"use one of {', '.join(SUFFIXES)}, or a folder written by datasets' save_to_disk", source=name)


def _read_saved(path: Path, split: str) -> RawData:
    if not any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
        raise DataError("the folder is not a dataset saved with save_to_disk",
                        "give a data file, or a folder written by Dataset.save_to_disk", source=str(path))
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, ... for broken folders
        raise DataError(f"cannot load the saved dataset: {e}", "re-save it with save_to_disk", source=str(path)) from None
    if not _is_dataset(ds):
        ds = _pick_split(ds, split, str(path))
    return _from_records(ds.to_list(), str(path))
