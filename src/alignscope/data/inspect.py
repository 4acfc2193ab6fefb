"""`alignscope data inspect`: what a data file holds and what is wrong with it, before any training.

Reads the data exactly as `load_data` would, but collects every problem instead of stopping at
the first, then reports the figures that predict trouble: token lengths (truncation), length bias
(a reward for verbosity), duplicates, and identical pairs (no preference signal).
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from alignscope.data.loader import apply_mapping, rename_columns, resolve_format
from alignscope.data.records import (
    Example,
    PairExample,
    PromptExample,
    RankedExample,
    UnpairedExample,
    prompt_text,
)
from alignscope.data.sources import Item, RawData, RawRow, RowStream, read_rows, stream_rows
from alignscope.data.tokenize import encode_group
from alignscope.data.validate import Rejected, convert_rows, kind_of
from alignscope.errors import DataError

MAX_LISTED = 20


@dataclass
class Inspection:
    """Records and every problem of one source (policy `collect`)."""

    source: str
    format: str
    detected_by: str
    n_rows: int
    examples: list[Example]
    errors: list[Rejected]


def collect(
    source: str | Path | Any,
    *,
    format: str | None = None,
    mapping: dict[str, str] | None = None,
    limit: int | None = None,
    split: str = "train",
) -> Inspection:
    """Read and convert `source` keeping every error; `limit` keeps the first N rows (good or not)."""
    raw = read_rows(source, split)
    if limit is not None:
        lines = sorted([r.line for r in raw.rows] + [row.line for _, row in raw.errors])[:limit]
        last = lines[-1] if lines else 0
        raw.rows = [r for r in raw.rows if r.line <= last]
        raw.errors = [x for x in raw.errors if x[1].line <= last]
    if not raw.rows and not raw.errors:
        raise DataError("the dataset has no records", "give a source with at least one record", source=raw.source)
    apply_mapping(raw.rows, mapping, raw.source)
    fmt, why = resolve_format(raw, format)
    conv = convert_rows(raw.rows, fmt, raw.source, "collect", raw.errors)
    return Inspection(raw.source, fmt, why, raw.n_rows, conv.examples, conv.errors)


def _stats(values) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"min": int(a.min()), "mean": round(float(a.mean()), 1), "p50": round(float(np.percentile(a, 50)), 1),
            "p95": round(float(np.percentile(a, 95)), 1), "max": int(a.max())}


def _responses(e: Example) -> dict[str, list[str]]:
    """The responses of a record by the name their length statistics go under."""
    if isinstance(e, PairExample):
        return {"chosen": [e.chosen], "rejected": [e.rejected]}
    if isinstance(e, RankedExample):
        return {"completions": list(e.completions)}
    if isinstance(e, PromptExample):
        return {}
    return {"completion": [e.completion]}


def _repeats(hashes: array) -> int:
    return len(hashes) - len(np.unique(np.frombuffer(hashes, dtype=np.int64))) if len(hashes) else 0


class _Tally:
    """The report's figures, added up chunk by chunk: per row only a few integers (token lengths) and 8-byte hashes
    (duplicates) are kept, never the text, so memory stays small however large the file."""

    def __init__(self, fmt: str, tokenizer: Any = None):
        self.fmt, self.tokenizer = fmt, tokenizer
        self.n_rows = self.valid = self.n_problems = 0
        self.kinds: Counter = Counter()
        self.problems: list[DataError] = []
        self.prompts, self.pairs = array("q"), array("q")
        self.longer_chars = [0, 0]  # (pairs whose first response is longer, pairs)
        self.longer_tokens = [0, 0]
        self.desirable = [0, 0]
        self.lengths: dict[str, array] = {"prompt": array("l")}

    def add(self, n_rows: int, examples: list[Example], errors: list[Rejected]) -> None:
        """One chunk: `n_rows` rows read, their records and their problems (in line order)."""
        self.n_rows += n_rows
        self.valid += len(examples)
        self.n_problems += len(errors)
        for e, _ in errors:
            self.kinds[kind_of(e)] += 1
            if len(self.problems) < MAX_LISTED:
                self.problems.append(e)
        for e in examples:
            p = prompt_text(e.prompt)
            self.prompts.append(hash(p))
            if isinstance(e, PairExample):
                self.pairs.append(hash((p, e.chosen, e.rejected)))
                self.longer_chars[0] += len(e.chosen) > len(e.rejected)
                self.longer_chars[1] += 1
            elif isinstance(e, RankedExample):
                self.longer_chars[0] += len(e.completions[0]) > len(e.completions[-1])
                self.longer_chars[1] += 1
            elif isinstance(e, UnpairedExample):
                self.desirable[0] += bool(e.label)
                self.desirable[1] += 1
            if self.tokenizer is not None:
                self._tokenize(e)

    def _tokenize(self, e: Example) -> None:
        named = _responses(e)
        flat = [r for rs in named.values() for r in rs]
        encs = encode_group(self.tokenizer, e.prompt, flat or [""], add_eos=False)
        self.lengths["prompt"].append(len(encs[0].prompt_ids))
        i = 0
        for name, rs in named.items():
            for _ in rs:
                self.lengths.setdefault(name, array("l")).append(len(encs[i].response_ids))
                i += 1
        if isinstance(e, (PairExample, RankedExample)):
            self.longer_tokens[0] += len(encs[0].response_ids) > len(encs[len(flat) - 1].response_ids)
            self.longer_tokens[1] += 1

    def report(self, source: str, detected_by: str) -> dict[str, Any]:
        report: dict[str, Any] = {
            "source": source, "format": self.fmt, "detected_by": detected_by, "rows": self.n_rows,
            "valid": self.valid, "problems_total": self.n_problems, "problems_by_kind": dict(self.kinds.most_common()),
            "problems": [{"line": e.line, "field": e.field, "kind": kind_of(e), "problem": e.problem, "fix": e.fix}
                         for e in self.problems],
        }
        report["duplicate_prompts"] = _repeats(self.prompts)
        if self.fmt == "pairwise":
            report["duplicate_pairs"] = _repeats(self.pairs)
            report["identical_pairs"] = self.kinds["identical"]
            report["near_identical_pairs"] = self.kinds["near-identical"]
        if self.longer_chars[1]:
            report["length_bias_chars"] = round(self.longer_chars[0] / self.longer_chars[1], 4)
        if self.fmt == "unpaired" and self.valid:
            report["desirable_fraction"] = round(self.desirable[0] / max(1, self.desirable[1]), 4)
        if self.tokenizer is not None and self.valid:
            report["tokenizer"] = getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__
            report["token_lengths"] = {k: _stats(v) for k, v in self.lengths.items() if len(v)}
            if self.longer_tokens[1]:
                report["length_bias_tokens"] = round(self.longer_tokens[0] / self.longer_tokens[1], 4)
        return report


def summarize(ins: Inspection, tokenizer: Any = None, progress: bool = False) -> dict[str, Any]:
    """The report of an inspection; token statistics only when a tokenizer is given (with a progress bar
    on stderr when `progress`: tokenizing long rows is the slow part)."""
    from tqdm.auto import tqdm

    tally = _Tally(ins.format, tokenizer)
    examples = tqdm(ins.examples, desc="tokenizing", unit="row", disable=not (progress and tokenizer is not None), leave=False)
    tally.add(ins.n_rows, list(examples), ins.errors)
    return tally.report(ins.source, ins.detected_by)


HEAD_ROWS = 1000  # the rows the format is detected from (`formats.common_columns`' sample)
HEAD_ITEMS = 20_000  # at most this many lines are held while looking for them (a file of unreadable lines)
CHUNK_ROWS = 256


class StreamInspection:
    """`data inspect` over a file of any size: the file is read as it is inspected, in chunks of 256 rows, so memory
    holds one chunk plus a few numbers per row (`_Tally`), and `--limit N` reads only the first N rows.

    Opening it reads the head of the file (up to its first 1000 readable rows) and settles the format and the column
    mapping exactly as `load_data` would (its columns are checked against the whole file when the head alone does
    not settle them), so an error that concerns the whole file comes before any tokenizer is loaded."""

    def __init__(self, source: str | Path | Any, *, format: str | None = None, mapping: dict[str, str] | None = None,
                 limit: int | None = None, split: str = "train"):
        self.spec, self.format, self.mapping, self.limit, self.split = source, format, mapping, limit, split
        self.stream = stream_rows(source, split)
        self.source = self.stream.source
        self._items = self._limited(self.stream)
        self.head: list[Item] = []
        n_rows, more = 0, False
        for item in self._items:
            self.head.append(item)
            n_rows += isinstance(item, RawRow)
            if n_rows >= HEAD_ROWS or len(self.head) >= HEAD_ITEMS:
                more = True  # perhaps: the rest is read by `run`
                break
        if not self.head:
            raise DataError("the dataset has no records", "give a source with at least one record", source=self.source)
        rows = [x for x in self.head if isinstance(x, RawRow)]
        try:
            self.fmt, self.detected_by = self._settle(rows)
        except DataError:
            if not more:
                raise
            self.fmt, self.detected_by = self._settle(rows + self._other_columns())

    def _limited(self, stream: RowStream) -> Iterator[Item]:
        return islice(iter(stream), self.limit) if self.limit else iter(stream)

    def _settle(self, rows: list[RawRow]) -> tuple[str, str]:
        copies = [RawRow(dict(r.data), r.line) for r in rows]
        apply_mapping(copies, self.mapping, self.source)
        return resolve_format(RawData(copies, [], self.source), self.format)

    def _other_columns(self) -> list[RawRow]:
        """One row (of None values) per distinct set of columns in the rest of the file: what the whole-file checks need."""
        seen = {frozenset(x.data) for x in self._limited(stream_rows(self.spec, self.split)) if isinstance(x, RawRow)}
        return [RawRow(dict.fromkeys(cols), 0) for cols in seen]

    def _chunks(self) -> Iterator[list[Item]]:
        head, self.head = self.head, []
        yield head
        del head  # one chunk in memory at a time
        while chunk := list(islice(self._items, CHUNK_ROWS)):
            yield chunk

    def run(self, tokenizer: Any = None, progress: bool = False) -> dict[str, Any]:
        """Read the rest of the file and return the report (see `inspect_data`); `progress` shows a bar on stderr in
        bytes of the file."""
        from tqdm.auto import tqdm

        tally = _Tally(self.fmt, tokenizer)
        size = self.stream.size
        bar = tqdm(total=size or None, desc="inspecting", unit="B", unit_scale=True, disable=not progress, leave=False)
        for chunk in self._chunks():
            rows = [x for x in chunk if isinstance(x, RawRow)]
            if self.mapping:
                rename_columns(rows, self.mapping)
            conv = convert_rows(rows, self.fmt, self.source, "collect", [x for x in chunk if not isinstance(x, RawRow)])
            tally.add(len(chunk), conv.examples, conv.errors)
            bar.update(max(0, min(self.stream.position(), size) - bar.n))
            del chunk, rows, conv  # before the next chunk is read
        bar.close()
        return tally.report(self.source, self.detected_by)


def inspect_data(
    source: str | Path | Any,
    tokenizer: Any = None,
    *,
    format: str | None = None,
    mapping: dict[str, str] | None = None,
    limit: int | None = None,
    split: str = "train",
    progress: bool = False,
) -> dict[str, Any]:
    """Inspect `source` and return the report: format, counts, problems (the first 20 listed), duplicates, length
    bias and, with a tokenizer, token lengths. Read as a stream (`StreamInspection`); `limit` keeps the first N rows
    (good or not)."""
    return StreamInspection(source, format=format, mapping=mapping, limit=limit, split=split).run(tokenizer, progress)


def format_report(r: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    lines = [r["source"], f"  format: {r['format']} ({r['detected_by']})",
             f"  rows: {r['rows']} ({r['valid']} valid, {r['problems_total']} with problems)"]
    if r.get("token_lengths"):
        lines.append(f"  token lengths (tokenizer {r['tokenizer']}):")
        lines.append(f"    {'':<12}{'min':>7}{'mean':>9}{'p50':>9}{'p95':>9}{'max':>9}")
        for k, s in r["token_lengths"].items():
            lines.append(f"    {k:<12}{s['min']:>7}{s['mean']:>9}{s['p50']:>9}{s['p95']:>9}{s['max']:>9}")
    if "length_bias_chars" in r:
        what = "chosen is longer than rejected" if r["format"] == "pairwise" else "the best completion is longer than the worst"
        bias = f"  length bias: {what} in {r['length_bias_chars']:.1%} of pairs by characters"
        if "length_bias_tokens" in r:
            bias += f", {r['length_bias_tokens']:.1%} by tokens"
        lines.append(bias + " (50% = no bias)")
    if "desirable_fraction" in r:
        lines.append(f"  labels: {r['desirable_fraction']:.1%} desirable")
    dup = f"  duplicates: {r['duplicate_prompts']} repeated prompts"
    if "duplicate_pairs" in r:
        dup += f", {r['duplicate_pairs']} repeated pairs; identical pairs: {r['identical_pairs']} exact, " \
               f"{r['near_identical_pairs']} differing only in whitespace"
    lines.append(dup)
    if not r["problems_total"]:
        lines.append("  problems: none found")
        return "\n".join(lines)
    by_kind = ", ".join(f"{k} {n}" for k, n in r["problems_by_kind"].items())
    shown = len(r["problems"])
    lines.append(f"  problems: {r['problems_total']} ({by_kind})" + (f"; the first {shown}:" if shown < r["problems_total"] else ":"))
    for p in r["problems"]:
        where = f"line {p['line']}" + (f", field '{p['field']}'" if p["field"] else "")
        lines.append(f"    {where}: {p['problem']}")
        if p["fix"]:
            lines.append(f"      fix: {p['fix']}")
    return "\n".join(lines)
