"""Data: read any supported source, detect its format, validate every record, tokenize exactly.

`load_data` is the one entry point trainers and CLIs use: it turns a file or dataset with TRL's
column names (or renamed ones, via `mapping`) into normalised records, and refuses bad rows
with an error that names the file, line, field and fix, unless asked to skip them.

A Hugging Face Hub dataset is named where a path would go, as `hf:NAME[:SUBSET][@SPLIT]`
(`hf:trl-lib/ultrafeedback_binarized@test`, `hf:openai/gsm8k:main@train`): one string, so every
`data`/`eval_data`/`prompts` option and `--data`/`--prompts` flag takes it with no companion
option. It is read through `datasets.load_dataset`, so a dataset downloaded once is served from
the local `datasets` cache offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import re
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


HUB_PREFIX = "hf:"
HUB_SYNTAX = "hf:NAME[:SUBSET][@SPLIT], e.g. hf:trl-lib/ultrafeedback_binarized@test or hf:openai/gsm8k:main@train"
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


@dataclass(frozen=True)
class HubSpec:
    """A Hub dataset named in a data option: `name` (a repo id), `subset` (its config), `split`."""

    text: str
    name: str
    subset: str | None = None
    split: str | None = None


def is_hub_spec(source: Any) -> bool:
    """Whether a data option names a Hub dataset (`hf:...`) rather than a path."""
    return isinstance(source, str) and source.startswith(HUB_PREFIX)


def parse_hub_spec(text: str) -> HubSpec:
    """'hf:NAME[:SUBSET][@SPLIT]' -> HubSpec. The split comes after '@' first, so a sliced split
    such as `train[:100]` or `train[:10%]` keeps its colon; a Hub id holds neither ':' nor '@'."""
    body = text[len(HUB_PREFIX):]
    head, at, split = body.partition("@")
    name, colon, subset = head.partition(":")
    problem = None
    if not _HUB_NAME.fullmatch(name):
        problem = f"'{name}' is not a Hub dataset id" if name else "the Hub dataset has no name"
    elif colon and not subset.strip():
        problem = "the subset after ':' is empty"
    elif at and not split.strip():
        problem = "the split after '@' is empty"
    if problem:
        raise DataError(problem, f"write {HUB_SYNTAX}", source=text)
    return HubSpec(text, name, subset.strip() or None, split.strip() or None)


def _hub_call(spec: HubSpec, split: str) -> str:
    """The `datasets` call that downloads `spec`, written out for the user to run."""
    subset = f", {spec.subset!r}" if spec.subset else ""
    return f"python -c \"import datasets; datasets.load_dataset({spec.name!r}{subset}, split={split!r})\""


def _hub_error(spec: HubSpec, split: str, e: Exception) -> DataError:
    """`datasets`' failure as a DataError naming the dataset and the fix: chiefly, not cached while offline."""
    from datasets import config
    from datasets.exceptions import DatasetNotFoundError

    message = " ".join(str(e).split())[:400]
    what = f"'{spec.name}'" + (f" (subset '{spec.subset}')" if spec.subset else "")
    if isinstance(e, ConnectionError) or "Couldn't find cache for" in message:
        return DataError(
            f"the Hub dataset {what} is not in the local datasets cache ({config.HF_DATASETS_CACHE}) and the Hub "
            f"cannot be reached ({message})",
            f"download it once with network ({_hub_call(spec, split)}); later runs read it from the cache, also "
            "offline (HF_HUB_OFFLINE=1). Or, where it is available, save it with Dataset.save_to_disk('FOLDER') "
            "and pass the folder instead",
            source=spec.text)
    if isinstance(e, DatasetNotFoundError):
        return DataError(f"the Hub has no dataset {what} that can be read ({message})",
                         "check the name on https://huggingface.co/datasets; for a gated or private dataset, log in "
                         "(hf auth login) and accept its terms on its page", source=spec.text)
    if "Unknown split" in message or "Bad split" in message:
        return DataError(f"there is no split '{split}' ({message})",
                         f"name one of its splits after '@': hf:{spec.name}{':' + spec.subset if spec.subset else ''}@SPLIT",
                         source=spec.text)
    if any(m in message for m in ("Config name is missing", "configurations in the cache", "BuilderConfig")):
        return DataError(f"the subset is missing or unknown ({message})",
                         f"name one of the subsets listed after ':': hf:{spec.name}:SUBSET", source=spec.text)
    return DataError(f"datasets cannot load it: {type(e).__name__}: {message}",
                     f"check the name, subset and split ({HUB_SYNTAX}), or save the dataset with save_to_disk "
                     "and pass the folder", source=spec.text)


def read_hub(spec: HubSpec, split: str = "train") -> RawData:
    """The rows of one split of a Hub dataset, via `datasets.load_dataset` (which serves a dataset
    downloaded once from its cache when offline). The spec's own split wins over `split`."""
    try:
        import datasets
    except ImportError:
        raise DataError("reading a Hub dataset needs the `datasets` package", "pip install datasets",
                        source=spec.text) from None
    split = spec.split or split
    try:
        ds = datasets.load_dataset(spec.name, spec.subset, split=split)
    except Exception as e:  # datasets raises ConnectionError, ValueError, DatasetNotFoundError, ... by cause
        raise _hub_error(spec, split, e) from None
    raw = read_rows(ds, split)
    raw.source = spec.text
    return raw


def read_source(source: Any, split: str = "train") -> RawData:
    """`read_rows`, plus Hub datasets named `hf:NAME[:SUBSET][@SPLIT]`."""
    if is_hub_spec(source):
        return read_hub(parse_hub_spec(source), split)
    return read_rows(source, split)


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
    rename_columns(rows, mapping)
    return rows


def rename_columns(rows: list[RawRow], mapping: dict[str, str]) -> None:
    """The renaming alone, in place ({trl_name: your_name}); `apply_mapping` checks the columns exist first,
    and a streamed reader, whose chunk need not hold every column, checks once on the file's head."""
    for row in rows:
        d = row.data
        moved = {new: d[old] for new, old in mapping.items() if old in d}
        for old in set(mapping.values()) - set(mapping):
            d.pop(old, None)
        d.update(moved)


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
    if is_hub_spec(source):  # hf:org/name:subset@split -> name_subset_split.rejects.jsonl
        return Path.cwd() / (re.sub(r"[^A-Za-z0-9._-]+", "_", source[len(HUB_PREFIX):].rpartition("/")[2]) + ".rejects.jsonl")
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

    `source`: a path (JSONL[.gz], JSON, CSV, Parquet, a save_to_disk folder), a Hub dataset
    `hf:NAME[:SUBSET][@SPLIT]` (`split` when it names none), a list of dicts or a
    `datasets.Dataset`/`DatasetDict`. `format`: pairwise, ranked, unpaired, sft, prompt (or the
    aliases dpo, kto). `on_error="skip"` writes bad rows to `rejects_path` (default: next to the
    file) and reports their count through `log` (default: stderr). `as_chat=True` turns every
    plain-text prompt into one user message, so an instruct model is prompted through its
    chat template (plain questions such as GSM8K's otherwise reach it as raw text to continue).
    """
    if on_error not in ("fail", "skip"):
        raise ConfigError(f"unknown error policy on_error='{on_error}'" + did_you_mean(on_error, ("fail", "skip")),
                          "use on_error='fail' or on_error='skip'")
    raw = read_source(source, split)
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


__all__ = ["LoadedData", "load_data", "parse_mapping", "apply_mapping", "detect_format", "canonical_format", "read_rows",
           "read_source", "read_hub", "parse_hub_spec", "is_hub_spec", "HubSpec", "HUB_SYNTAX"]
