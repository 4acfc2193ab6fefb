"""`alignscope audit data`: per-pair CHES and its baselines, model log-probs, dataset findings.

One no-grad pass of the scoring engine over every chosen and rejected response gives the
log-probs, the hidden-state sums S(y) (CHES) and the final-position states; everything else is
arithmetic on those (docs/science.md, "Likelihood displacement").
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignscope import run_files as rf
from alignscope.atomic import atomic_path, write_text
from alignscope.audits.chunks import run_in_chunks
from alignscope.data.records import PairExample, prompt_text
from alignscope.data.tokenize import TokenizeStats, encode_group
from alignscope.diagnostics.ches import ches, ches_filter, ln_ches
from alignscope.diagnostics.confounds import ches_confounds, describe_confounds
from alignscope.diagnostics.similarity import (
    final_embedding_inner_product,
    normalized_edit_distance,
)
from alignscope.errors import DataError, did_you_mean
from alignscope.models.scoring import ScoreOutput, pad_token_id, score_sequences, scoring_batches
from alignscope.models.fsdp import sharded_forwards

COLUMNS = [
    "row", "ches", "ln_ches", "edit_distance", "final_inner_product", "prompt_tokens", "chosen_tokens",
    "rejected_tokens", "logp_chosen", "logp_rejected", "model_ranks_correctly",
]


@dataclass
class DataAudit:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    tokenize: TokenizeStats


def audit_pairs(
    model, tokenizer, pairs: list[PairExample], *, batch_size: int = 16, max_length: int | None = 1024,
    max_prompt_length: int | None = 512, progress: bool = True, forwards: int = 0,
) -> DataAudit:
    """CHES, LN-CHES and the other per-pair scores of `pairs`, from one scoring pass. `forwards`: make at least
    this many forwards (processes scoring a sharded model in step)."""
    if not pairs:
        raise DataError("no pairs to audit", "check the data file and --limit")
    p_ids, r_ids, stats = encode_pairs(tokenizer, pairs, max_length=max_length, max_prompt_length=max_prompt_length)
    out = score_with_token_progress(model, p_ids, r_ids, pad_id=pad_token_id(tokenizer), batch_size=batch_size,
                                    desc="scoring responses" if progress else None, forwards=forwards)
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
            "row": i + 1,
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


def encode_pairs(tokenizer, pairs: list[PairExample], *, max_length: int | None, max_prompt_length: int | None
                 ) -> tuple[list[list[int]], list[list[int]], TokenizeStats]:
    """Each pair as two sequences (prompt, chosen) and (prompt, rejected), with the exact boundary; an empty prompt
    becomes one BOS (or EOS) token so the first response token has a position that predicts it."""
    stats = TokenizeStats()
    p_ids, r_ids = [], []
    for ex in pairs:
        enc = encode_group(tokenizer, ex.prompt, [ex.chosen, ex.rejected], max_length=max_length, max_prompt_length=max_prompt_length)
        prompt = enc[0].prompt_ids or [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
        for e in enc:
            stats.add(e)
            p_ids.append(prompt)
            r_ids.append(e.response_ids)
    return p_ids, r_ids, stats


def audit_in_chunks(
    model, tokenizer, pairs: list[PairExample], *, chunk_dir: Path, settings: dict[str, Any], resume: bool = False,
    rank: int = 0, world: int = 1, barrier: Callable[[], None] = lambda: None, chunk_pairs: int = 256,
    log: Callable[[str], Any] = print, sharded: bool = False, batch_size: int = 16, max_length: int | None = 1024,
    max_prompt_length: int | None = 512,
) -> DataAudit | None:
    """`audit_pairs` over chunks of `chunk_pairs` pairs through `audits.chunks.run_in_chunks` (saved as they
    finish, shared out between processes, resumable); the whole audit in input order on the main process.

    `sharded` (the model is sharded by FSDP over the processes): every process takes part in every chunk, scoring a
    contiguous share of its pairs in step with the others (the same number of forwards, each gathering the weights
    block by block), and the main process joins the shares and saves the chunk."""
    if not pairs:
        raise DataError("no pairs to audit", "check the data file and --limit")

    def compute_part(start: int, stop: int, forwards: int = 0) -> dict[str, Any]:
        part = audit_pairs(model, tokenizer, pairs[start:stop], progress=rank == 0, forwards=forwards, batch_size=batch_size,
                           max_length=max_length, max_prompt_length=max_prompt_length)
        for row in part.rows:
            row["row"] += start
        return {"rows": part.rows, "tokenize": dict(part.tokenize.counts)}

    def compute_together(k: int, start: int, stop: int) -> dict[str, Any] | None:
        import torch.distributed as dist

        cuts = [start + round(j * (stop - start) / world) for j in range(world + 1)]
        forwards = max(forwards_of(*encode_pairs(tokenizer, pairs[a:b], max_length=max_length, max_prompt_length=max_prompt_length)[:2],
                                   batch_size=batch_size) for a, b in zip(cuts, cuts[1:]))
        with sharded_forwards(model):
            if cuts[rank + 1] > cuts[rank]:
                mine = compute_part(cuts[rank], cuts[rank + 1], forwards)
            else:  # more processes than pairs in this chunk: stand-in forwards only
                score_sequences(model, [], [], pad_id=pad_token_id(tokenizer), forwards=forwards)
                mine = {"rows": [], "tokenize": {}}
        shares = [None] * world if rank == 0 else None
        dist.gather_object(mine, shares, dst=0)
        if rank != 0:
            return None
        counts: Counter = Counter()
        for share in shares:
            counts.update(share["tokenize"])
        return {"rows": [row for share in shares for row in share["rows"]], "tokenize": dict(counts)}

    compute = compute_together if sharded else (lambda k, start, stop: compute_part(start, stop))
    chunks = run_in_chunks(len(pairs), chunk_pairs, chunk_dir, settings, compute, resume=resume, rank=rank, world=world,
                           barrier=barrier, log=log, together=sharded)
    if chunks is None:
        return None
    rows = [row for c in chunks for row in c["rows"]]
    counts: Counter = Counter()
    for c in chunks:
        counts.update(c["tokenize"])
    return DataAudit(rows, dataset_findings(pairs, rows), TokenizeStats(counts))


def pair_costs(p_ids: list[list[int]], r_ids: list[list[int]]) -> list[int]:
    """Tokens each pair (sequences 2i, 2i+1) puts through the model: its prompt once, both responses."""
    return [len(p_ids[2 * i]) + len(r_ids[2 * i]) + len(r_ids[2 * i + 1]) for i in range(len(p_ids) // 2)]


def scoring_plan(p_ids: list[list[int]], r_ids: list[list[int]], *, batch_size: int, chunk_pairs: int | None = None) -> list[list[int]]:
    """The pieces (sequence indices) `score_with_token_progress` scores, longest pairs first."""
    n_pairs = len(p_ids) // 2
    cost = pair_costs(p_ids, r_ids)
    order = sorted(range(n_pairs), key=lambda i: -cost[i])
    step = chunk_pairs or max(1, 4 * batch_size)
    return [[2 * i + k for i in order[start:start + step] for k in (0, 1)] for start in range(0, n_pairs, step)]


def forwards_of(p_ids: list[list[int]], r_ids: list[list[int]], *, batch_size: int, chunk_pairs: int | None = None) -> int:
    """How many forwards `score_with_token_progress` makes on these sequences (processes scoring a sharded model in
    step pad to the largest count)."""
    return sum(len(scoring_batches([p_ids[j] for j in seq], [r_ids[j] for j in seq], batch_size))
               for seq in scoring_plan(p_ids, r_ids, batch_size=batch_size, chunk_pairs=chunk_pairs))


def score_with_token_progress(model, p_ids: list[list[int]], r_ids: list[list[int]], *, pad_id: int, batch_size: int,
                              desc: str | None, chunk_pairs: int | None = None, forwards: int = 0) -> ScoreOutput:
    """`score_sequences` over pairs (sequences 2i, 2i+1), longest pairs first, in chunks, with a
    progress bar counted in tokens: cost grows with length, so a bar counted in batches of sorted
    lengths gives an ETA that starts far too optimistic. Longest first also meets an out-of-memory
    batch at once, not at the end. `forwards`: at least this many forwards (see `score_sequences`)."""
    cost = pair_costs(p_ids, r_ids)
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(cost), desc=desc, disable=desc is None, unit="tok", unit_scale=True)
    parts: list[tuple[list[int], ScoreOutput]] = []
    try:
        for seq in scoring_plan(p_ids, r_ids, batch_size=batch_size, chunk_pairs=chunk_pairs):
            parts.append((seq, score_sequences(model, [p_ids[j] for j in seq], [r_ids[j] for j in seq], pad_id=pad_id,
                                               batch_size=batch_size, return_hidden=True)))
            bar.update(sum(cost[j // 2] for j in seq[::2]))
        if forwards:  # stand-ins up to the count the other processes make
            score_sequences(model, [], [], pad_id=pad_id,
                            forwards=forwards - forwards_of(p_ids, r_ids, batch_size=batch_size, chunk_pairs=chunk_pairs))
    finally:
        bar.close()
    if not parts:
        return ScoreOutput(logps=torch.zeros(0), n_tokens=torch.zeros(0, dtype=torch.long))
    d = parts[0][1].hidden_sum.shape[-1]
    n = len(p_ids)
    logps, hidden, last = torch.zeros(n), torch.zeros(n, d), torch.zeros(n, d)
    for seq, o in parts:
        idx = torch.tensor(seq)
        logps[idx], hidden[idx], last[idx] = o.logps, o.hidden_sum, o.last_hidden
    return ScoreOutput(logps=logps, n_tokens=torch.tensor([len(r) for r in r_ids]), hidden_sum=hidden, last_hidden=last)


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def dataset_findings(pairs: list[PairExample], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Length bias, duplicates, identical and near-identical pairs, and CHES quantiles."""
    keys = [(prompt_text(p.prompt), p.chosen, p.rejected) for p in pairs]
    lc = np.array([r["ln_ches"] for r in rows])
    chosen_longer = np.array([r["chosen_tokens"] > r["rejected_tokens"] for r in rows])
    prompt_counts: dict[str, int] = {}
    for k in keys:
        prompt_counts[k[0]] = prompt_counts.get(k[0], 0) + 1
    return {
        "pairs": len(pairs),
        "length_bias_chosen_longer": float(chosen_longer.mean()),
        "duplicate_pairs": len(keys) - len(set(keys)),
        "repeated_prompts": sum(c > 1 for c in prompt_counts.values()),
        "extra_prompt_copies": len(keys) - len(prompt_counts),
        "confounds": ches_confounds(lc, [r["chosen_tokens"] for r in rows], [r["rejected_tokens"] for r in rows],
                                    [r["edit_distance"] for r in rows]),
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
    """A pair in TRL's preference columns, so the file loads with `load_dataset("json", ...)` into a
    DPOTrainer. A chat prompt takes its responses as one assistant message each: TRL reads a row as
    conversational or plain as a whole, and a chat prompt beside text responses fits neither."""
    if isinstance(ex.prompt, str):
        rec: dict[str, Any] = {"prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected}
    else:
        rec = {"prompt": ex.prompt, "chosen": [{"role": "assistant", "content": ex.chosen}],
               "rejected": [{"role": "assistant", "content": ex.rejected}]}
    if ex.margin is not None:
        rec["margin"] = ex.margin
    return rec


def write_jsonl(records: list[dict[str, Any]], path: Path) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))


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


def table_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """Where `audit data --out OUT` writes (folder, table, manifest): OUT as a folder holds ches.csv
    and alignscope.json; OUT ending in .csv/.parquet is the table itself (kept for compatibility),
    with its manifest beside it as NAME.alignscope.json."""
    out = Path(out)
    if out.suffix in (".csv", ".parquet"):
        return out.parent, out, out.with_name(out.stem + rf.MANIFEST_SUFFIX)
    return out, out / rf.CHES_TABLE, out / rf.MANIFEST


def format_summary(audit: DataAudit) -> str:
    s = audit.summary
    q = s["ln_ches_quantiles"]
    top = sorted(audit.rows, key=lambda r: -r["ln_ches"])[:5]
    lines = [
        f"pairs audited: {s['pairs']}",
        f"length bias: chosen longer in {s['length_bias_chosen_longer']:.1%} of pairs",
        f"duplicates: {s['duplicate_pairs']} duplicate pairs; {s['repeated_prompts']} prompts appear more than once "
        f"({s['extra_prompt_copies']} extra copies); identical pairs: "
        f"{s['identical_pairs']}; near-identical (edit distance < 0.1): {s['near_identical_pairs']}",
        f"model already ranks {s['model_ranking_accuracy']:.1%} of pairs correctly (log p(chosen) > log p(rejected))",
        f"length-normalised CHES: p10 {q[0.1]:.3f}, median {q[0.5]:.3f}, p90 {q[0.9]:.3f}",
        "highest LN-CHES pairs (most likely to cause likelihood displacement; row = 1-based record number): "
        + ", ".join(f"row {r['row']} ({r['ln_ches']:.3f})" for r in top),
        *("confound: " + t for t in describe_confounds(s["confounds"])),
        f"tokenization: {audit.tokenize.summary()}",
    ]
    return "\n".join(lines)
