"""`alignscope audit data`: per-pair CHES and its baselines, model log-probs, dataset findings.

One no-grad pass of the scoring engine over every chosen and rejected response gives the
log-probs, the hidden-state sums S(y) (CHES) and the final-position states; everything else is
arithmetic on those (science.md §3).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alignscope.atomic import atomic_path, write_text
from alignscope.data.records import PairExample, prompt_text
from alignscope.data.tokenize import TokenizeStats, encode_group
from alignscope.diagnostics.ches import ches, ches_filter, ln_ches
from alignscope.diagnostics.similarity import (
    final_embedding_inner_product,
    normalized_edit_distance,
)
from alignscope.errors import DataError, did_you_mean
from alignscope.models.scoring import pad_token_id, score_sequences

COLUMNS = [
    "index", "ches", "ln_ches", "edit_distance", "final_inner_product", "prompt_tokens", "chosen_tokens",
    "rejected_tokens", "logp_chosen", "logp_rejected", "model_ranks_correctly",
]


@dataclass
class DataAudit:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    tokenize: TokenizeStats


def audit_pairs(
    model, tokenizer, pairs: list[PairExample], *, batch_size: int = 16, max_length: int | None = 1024,
    max_prompt_length: int | None = 512, progress: bool = True,
) -> DataAudit:
    if not pairs:
        raise DataError("no pairs to audit", "check the data file and --limit")
    stats = TokenizeStats()
    p_ids, r_ids = [], []
    for ex in pairs:
        enc = encode_group(tokenizer, ex.prompt, [ex.chosen, ex.rejected], max_length=max_length, max_prompt_length=max_prompt_length)
        prompt = enc[0].prompt_ids or [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
        for e in enc:
            stats.add(e)
            p_ids.append(prompt)
            r_ids.append(e.response_ids)
    out = score_sequences(model, p_ids, r_ids, pad_id=pad_token_id(tokenizer), batch_size=batch_size,
                          return_hidden=True, progress="scoring responses" if progress else None)
    S = out.hidden_sum.double().view(len(pairs), 2, -1)
    n = out.n_tokens.view(len(pairs), 2)
    lp = out.logps.view(len(pairs), 2)
    last = out.last_hidden.double().view(len(pairs), 2, -1)
    c = ches(S[:, 0], S[:, 1])
    lc = ln_ches(S[:, 0], S[:, 1], n[:, 0], n[:, 1])
    ip = final_embedding_inner_product(last[:, 0], last[:, 1])
    rows = []
    for i in range(len(pairs)):
        rows.append({
            "index": i,
            "ches": float(c[i]),
            "ln_ches": float(lc[i]),
            "edit_distance": normalized_edit_distance(r_ids[2 * i], r_ids[2 * i + 1]),
            "final_inner_product": float(ip[i]),
            "prompt_tokens": len(p_ids[2 * i]),
            "chosen_tokens": int(n[i, 0]),
            "rejected_tokens": int(n[i, 1]),
            "logp_chosen": float(lp[i, 0]),
            "logp_rejected": float(lp[i, 1]),
            "model_ranks_correctly": bool(lp[i, 0] > lp[i, 1]),
        })
    return DataAudit(rows, dataset_findings(pairs, rows), stats)


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def dataset_findings(pairs: list[PairExample], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Length bias, duplicates, identical and near-identical pairs, and CHES quantiles."""
    keys = [(prompt_text(p.prompt), p.chosen, p.rejected) for p in pairs]
    lc = np.array([r["ln_ches"] for r in rows])
    chosen_longer = np.array([r["chosen_tokens"] > r["rejected_tokens"] for r in rows])
    return {
        "pairs": len(pairs),
        "length_bias_chosen_longer": float(chosen_longer.mean()),
        "duplicate_pairs": len(keys) - len(set(keys)),
        "duplicate_prompts": len(keys) - len({k[0] for k in keys}),
        "identical_pairs": sum(_norm(p.chosen) == _norm(p.rejected) for p in pairs),
        "near_identical_pairs": sum(r["edit_distance"] < 0.1 for r in rows),
        "model_ranking_accuracy": float(np.mean([r["model_ranks_correctly"] for r in rows])),
        "mean_logp_chosen": float(np.mean([r["logp_chosen"] for r in rows])),
        "ln_ches_quantiles": {q: float(np.quantile(lc, q)) for q in (0.1, 0.5, 0.9)},
    }


def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    """CSV or Parquet (by extension), written atomically."""
    with atomic_path(path) as tmp:
        if Path(path).suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), tmp)
        else:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
                w.writeheader()
                w.writerows(rows)


def pair_record(ex: PairExample) -> dict[str, Any]:
    rec = {"prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected}
    if ex.margin is not None:
        rec["margin"] = ex.margin
    return rec


def write_jsonl(records: list[dict[str, Any]], path: Path) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def parse_filter(spec: str) -> dict[str, float]:
    """'drop:0.1' -> {'drop_fraction': 0.1}: the `ches_filter` rule, checked before any pair is scored."""
    kind, _, value = spec.partition(":")
    try:
        v = float(value)
    except ValueError:
        raise DataError(f"--filter '{spec}' has no number", "write drop:0.1, threshold:0.5 or keep-lowest:0.05") from None
    options = {"drop": "drop_fraction", "threshold": "threshold", "keep-lowest": "keep_lowest_fraction"}
    if kind not in options:
        raise DataError(f"--filter kind '{kind}' is unknown" + did_you_mean(kind, options),
                        "write drop:0.1, threshold:0.5 or keep-lowest:0.05")
    if not math.isfinite(v):
        raise DataError(f"--filter '{spec}': the value must be a finite number", "write e.g. threshold:0.5")
    if kind != "threshold" and not 0.0 <= v <= 1.0:
        raise DataError(f"--filter '{spec}': {kind} needs a fraction in [0, 1], got {value}",
                        "write e.g. drop:0.1 (the top 10%) or keep-lowest:0.05")
    return {options[kind]: v}


def apply_filter(audit: DataAudit, pairs: list[PairExample], spec: str, out_path: Path) -> tuple[Path, Path, int]:
    """Drop high-LN-CHES pairs. spec: 'drop:0.1' (top fraction), 'threshold:0.5', or 'keep-lowest:0.05'."""
    scores = [r["ln_ches"] for r in audit.rows]
    keep, drop = ches_filter(scores, **parse_filter(spec))
    dropped_path = Path(out_path).with_name(Path(out_path).stem + ".dropped.jsonl")
    write_jsonl([pair_record(pairs[i]) for i in keep], out_path)
    write_jsonl([{**pair_record(pairs[i]), "ln_ches": scores[i]} for i in drop], dropped_path)
    for i in drop:
        audit.rows[i]["flagged"] = True
    return Path(out_path), dropped_path, len(drop)


def format_summary(audit: DataAudit) -> str:
    s = audit.summary
    q = s["ln_ches_quantiles"]
    top = sorted(audit.rows, key=lambda r: -r["ln_ches"])[:5]
    lines = [
        f"pairs audited: {s['pairs']}",
        f"length bias: chosen longer in {s['length_bias_chosen_longer']:.1%} of pairs",
        f"duplicates: {s['duplicate_pairs']} pairs, {s['duplicate_prompts']} repeated prompts; identical pairs: "
        f"{s['identical_pairs']}; near-identical (edit distance < 0.1): {s['near_identical_pairs']}",
        f"model already ranks {s['model_ranking_accuracy']:.1%} of pairs correctly (log p(chosen) > log p(rejected))",
        f"length-normalised CHES: p10 {q[0.1]:.3f}, median {q[0.5]:.3f}, p90 {q[0.9]:.3f}",
        "highest LN-CHES pairs (most likely to cause likelihood displacement): "
        + ", ".join(f"#{r['index']} ({r['ln_ches']:.3f})" for r in top),
        f"tokenization: {audit.tokenize.summary()}",
    ]
    return "\n".join(lines)
