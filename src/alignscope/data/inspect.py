"""`alignscope data inspect`: what a data file holds and what is wrong with it, before any training."""

from __future__ import annotations

from typing import Any

import numpy as np

from alignscope.data import apply_mapping, canonical_format, detect_format, read_rows
from alignscope.data.records import PairExample, RankedExample, prompt_text
from alignscope.data.tokenize import encode_group
from alignscope.data.validate import convert_rows


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {"min": int(a.min()), "mean": round(float(a.mean()), 1), "p50": round(float(np.percentile(a, 50)), 1),
            "p95": round(float(np.percentile(a, 95)), 1), "max": int(a.max())}


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def inspect_data(source: Any, tokenizer=None, *, format: str | None = None, mapping: dict | None = None, limit: int | None = None) -> dict[str, Any]:
    rows, read_errors, name = read_rows(source)
    if limit:
        rows = rows[:limit]
    rows = apply_mapping(rows, mapping)
    fmt, why = (canonical_format(format), "given by --format") if format else detect_format(set(rows[0].data) if rows else set())
    conv = convert_rows(rows, fmt, name, "collect", read_errors)
    ex = conv.examples
    report: dict[str, Any] = {"source": name, "format": fmt, "detected_by": why, "rows": len(rows) + len(read_errors),
                              "valid": len(ex), "problems_total": len(conv.errors),
                              "problems": [str(e) for e, _ in sorted(conv.errors, key=lambda x: x[1].line)[:20]]}
    prompts = [prompt_text(e.prompt) for e in ex]
    report["duplicate_prompts"] = len(prompts) - len(set(prompts))
    responses: dict[str, list[str]] = {}
    for e in ex:
        if isinstance(e, PairExample):
            responses.setdefault("chosen", []).append(e.chosen)
            responses.setdefault("rejected", []).append(e.rejected)
        elif isinstance(e, RankedExample):
            responses.setdefault("best", []).append(e.completions[0])
            responses.setdefault("worst", []).append(e.completions[-1])
        elif hasattr(e, "completion"):
            responses.setdefault("completion", []).append(e.completion)
    pairs = [e for e in ex if isinstance(e, PairExample)]
    if pairs:
        keys = [(prompt_text(p.prompt), p.chosen, p.rejected) for p in pairs]
        report["duplicate_pairs"] = len(keys) - len(set(keys))
        report["identical_pairs"] = sum(_norm(p.chosen) == _norm(p.rejected) for p in pairs)
        report["length_bias_chars"] = float(np.mean([len(p.chosen) > len(p.rejected) for p in pairs]))
    if tokenizer is not None and ex:
        lengths: dict[str, list[int]] = {"prompt": []}
        chosen_longer = []
        for e in ex:
            group = [e.chosen, e.rejected] if isinstance(e, PairExample) else (
                [e.completions[0], e.completions[-1]] if isinstance(e, RankedExample) else ([e.completion] if hasattr(e, "completion") else []))
            encs = encode_group(tokenizer, e.prompt, group or [" "], add_eos=bool(group))
            lengths["prompt"].append(len(encs[0].prompt_ids))
            for key, enc in zip(list(responses), encs if group else []):
                lengths.setdefault(key, []).append(len(enc.response_ids))
            if isinstance(e, PairExample):
                chosen_longer.append(len(encs[0].response_ids) > len(encs[1].response_ids))
        report["tokenizer"] = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        report["token_lengths"] = {k: _stats(v) for k, v in lengths.items()}
        if chosen_longer:
            report["length_bias_tokens"] = float(np.mean(chosen_longer))
    return report


def format_report(r: dict[str, Any]) -> str:
    lines = [f"{r['source']}: format {r['format']} ({r['detected_by']})",
             f"rows: {r['rows']} ({r['valid']} valid, {r['problems_total']} with problems)"]
    if "token_lengths" in r:
        lines.append(f"token lengths ({r['tokenizer']}):")
        for k, s in r["token_lengths"].items():
            if s:
                lines.append(f"  {k:<10} min {s['min']:>5}  mean {s['mean']:>7}  p50 {s['p50']:>7}  p95 {s['p95']:>7}  max {s['max']:>6}")
    if "length_bias_chars" in r:
        bias = f"chosen longer in {r['length_bias_chars']:.1%} of pairs (characters)"
        if "length_bias_tokens" in r:
            bias += f", {r['length_bias_tokens']:.1%} (tokens)"
        lines.append("length bias: " + bias)
        lines.append(f"duplicates: {r['duplicate_pairs']} pairs, {r['duplicate_prompts']} repeated prompts; identical chosen/rejected: {r['identical_pairs']}")
    else:
        lines.append(f"duplicates: {r['duplicate_prompts']} repeated prompts")
    if r["problems"]:
        lines.append(f"problems ({r['problems_total']}, first {len(r['problems'])}):")
        lines.extend("  - " + p.replace("\n", "\n    ") for p in r["problems"])
    else:
        lines.append("problems: none found")
    return "\n".join(lines)
