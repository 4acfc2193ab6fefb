"""`alignscope data inspect`: what a data file holds and what is wrong with it, before any training.

Reads the data exactly as `load_data` would, but collects every problem instead of stopping at
the first, then reports the figures that predict trouble: token lengths (truncation), length bias
(a reward for verbosity), duplicates, and identical pairs (no preference signal).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alignscope.data.loader import apply_mapping, resolve_format
from alignscope.data.records import (
    Example,
    PairExample,
    PromptExample,
    RankedExample,
    UnpairedExample,
    prompt_text,
)
from alignscope.data.sources import read_rows
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


def _stats(values: list[int]) -> dict[str, float]:
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


def _longer(pairs: list[tuple[Any, Any]]) -> float:
    return round(float(np.mean([a > b for a, b in pairs])), 4)


def summarize(ins: Inspection, tokenizer: Any = None, progress: bool = False) -> dict[str, Any]:
    """The report of an inspection; token statistics only when a tokenizer is given (with a progress bar
    on stderr when `progress`: tokenizing long rows is the slow part)."""
    ex = ins.examples
    kinds = Counter(kind_of(e) for e, _ in ins.errors)
    report: dict[str, Any] = {
        "source": ins.source, "format": ins.format, "detected_by": ins.detected_by, "rows": ins.n_rows,
        "valid": len(ex), "problems_total": len(ins.errors), "problems_by_kind": dict(kinds.most_common()),
        "problems": [{"line": e.line, "field": e.field, "kind": kind_of(e), "problem": e.problem, "fix": e.fix}
                     for e, _ in ins.errors[:MAX_LISTED]],
    }
    prompts = [prompt_text(e.prompt) for e in ex]
    report["duplicate_prompts"] = len(prompts) - len(set(prompts))
    # Pairs whose lengths are compared: chosen vs rejected, or best vs worst of a ranking.
    pairs = [(e.chosen, e.rejected) for e in ex if isinstance(e, PairExample)]
    pairs += [(e.completions[0], e.completions[-1]) for e in ex if isinstance(e, RankedExample)]
    if ins.format == "pairwise":
        keys = [(p, e.chosen, e.rejected) for p, e in zip(prompts, ex)]
        report["duplicate_pairs"] = len(keys) - len(set(keys))
        report["identical_pairs"] = kinds["identical"]
        report["near_identical_pairs"] = kinds["near-identical"]
    if pairs:
        report["length_bias_chars"] = _longer([(len(a), len(b)) for a, b in pairs])
    if ins.format == "unpaired" and ex:
        report["desirable_fraction"] = round(float(np.mean([e.label for e in ex if isinstance(e, UnpairedExample)])), 4)
    if tokenizer is not None and ex:
        lengths: dict[str, list[int]] = {"prompt": []}
        token_pairs = []
        from tqdm.auto import tqdm

        for e in tqdm(ex, desc="tokenizing", unit="row", disable=not progress, leave=False):
            named = _responses(e)
            flat = [r for rs in named.values() for r in rs]
            encs = encode_group(tokenizer, e.prompt, flat or [""], add_eos=False)
            lengths["prompt"].append(len(encs[0].prompt_ids))
            i = 0
            for name, rs in named.items():
                for _ in rs:
                    lengths.setdefault(name, []).append(len(encs[i].response_ids))
                    i += 1
            if isinstance(e, (PairExample, RankedExample)):
                token_pairs.append((len(encs[0].response_ids), len(encs[len(flat) - 1].response_ids)))
        report["tokenizer"] = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        report["token_lengths"] = {k: _stats(v) for k, v in lengths.items() if v}
        if token_pairs:
            report["length_bias_tokens"] = _longer(token_pairs)
    return report


def inspect_data(
    source: str | Path | Any,
    tokenizer: Any = None,
    *,
    format: str | None = None,
    mapping: dict[str, str] | None = None,
    limit: int | None = None,
    split: str = "train",
) -> dict[str, Any]:
    """Inspect `source` (see `collect`) and summarize it (see `summarize`) in one call."""
    return summarize(collect(source, format=format, mapping=mapping, limit=limit, split=split), tokenizer)


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
