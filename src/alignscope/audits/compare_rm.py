"""`alignscope compare-rm`: implicit reward (a DPO policy against its reference) versus an explicit RM.

Razin et al. (2025) find the implicit RM β·log(π/π_ref) leans on surface tokens and loses
accuracy under token-level shift (paraphrases), where an explicit RM keeps it (docs/science.md, "Implicit reward models").
Both are scored on the same pairs, in distribution and on a shifted set; ties count ½. Each
accuracy carries the pairs it rests on and a Wilson interval, and each set its length bias: on a
set where the chosen response is mostly the shorter one, a scorer that likes short answers looks
accurate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from alignscope import run_files as rf
from alignscope.data.records import PairExample
from alignscope.diagnostics.confounds import length_bias
from alignscope.diagnostics.intervals import accuracy_with_interval, within_noise
from alignscope.models.scoring import pad_token_id, score_sequences
from alignscope.rewards.sources import call_reward


def implicit_rewards(policy, reference, tokenizer, prompts: list, responses: list[str], beta: float, batch_size: int = 16,
                     progress: str | None = None) -> np.ndarray:
    """β·(log π(y|x) − log π_ref(y|x)) per response, both models scored by the one scoring engine."""
    from alignscope.data.tokenize import encode_response

    encs = [encode_response(tokenizer, p, r) for p, r in zip(prompts, responses)]
    p_ids, r_ids, pad = [e.prompt_ids for e in encs], [e.response_ids for e in encs], pad_token_id(tokenizer)
    lp = score_sequences(policy, p_ids, r_ids, pad_id=pad, batch_size=batch_size,
                         progress=None if progress is None else f"{progress}: policy").logps
    lr = score_sequences(reference, p_ids, r_ids, pad_id=pad, batch_size=batch_size,
                         progress=None if progress is None else f"{progress}: reference").logps
    return (beta * (lp - lr)).double().numpy()


def reward_pairs(reward: Callable[[list, list[str]], Any], pairs: list[PairExample]) -> tuple[np.ndarray, np.ndarray]:
    """The reward of each pair's chosen and rejected response: the expensive part, done per chunk of pairs."""
    prompts = [p.prompt for p in pairs]
    return call_reward(reward, prompts, [p.chosen for p in pairs]).numpy(), call_reward(reward, prompts, [p.rejected for p in pairs]).numpy()


def _evaluate(c: np.ndarray, r: np.ndarray) -> dict[str, Any]:
    scale = np.std(np.concatenate([c, r])) or 1.0
    acc = accuracy_with_interval(c, r)
    return {"accuracy": acc["accuracy"], "n_decisive": acc["n_decisive"], "interval": [acc["low"], acc["high"]],
            "normalized_margin": float(np.mean(c - r) / scale)}


def set_length_bias(pairs: list[PairExample]) -> dict[str, Any]:
    """Length bias of a pair set, lengths in characters of the responses."""
    return length_bias([len(p.chosen) for p in pairs], [len(p.rejected) for p in pairs])


def compare_reward_models(
    rewards: dict[str, Callable[[list, list[str]], Any]], sets: dict[str, list[PairExample]], log: Callable[[str], None] | None = None,
    scores: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[dict[str, Any]]:
    """One row per (reward, evaluation set): accuracy (ties ½) with n and interval, margin over the rewards' std.
    `scores[(reward, set)]`: the (chosen, rejected) rewards, computed already (chunked runs); else scored here."""
    rows = []
    for name, fn in rewards.items():
        for set_name, pairs in sets.items():
            if scores is None and log is not None:
                log(f"compare-rm: scoring {name} on {set_name} ({len(pairs)} pairs)")
            c, r = scores[(name, set_name)] if scores is not None else reward_pairs(fn, pairs)
            rows.append({"reward": name, "set": set_name, "pairs": len(pairs), **_evaluate(c, r)})
    return rows


def comparison_doc(rows: list[dict[str, Any]], sets: dict[str, list[PairExample]], **extra: Any) -> dict[str, Any]:
    """What compare-rm writes (`compare_rm.json`): the rows, each set's length bias, and how beta and the reference were found."""
    return {"rows": rows, "length_bias": {name: set_length_bias(pairs) for name, pairs in sets.items()}, **extra}


def format_comparison(doc: dict[str, Any]) -> str:
    rows = doc["rows"]
    lines = [f"{'reward':<34}{'set':<16}{'pairs':>6}{'accuracy':>10}{'95% interval':>16}{'non-tied':>9}{'norm. margin':>14}"]
    for r in rows:
        lo, hi = r["interval"]
        lines.append(f"{r['reward'][:33]:<34}{r['set'][:15]:<16}{r['pairs']:>6}{r['accuracy']:>10.3f}"
                     f"{f'[{lo:.2f}, {hi:.2f}]':>16}{r['n_decisive']:>9}{r['normalized_margin']:>14.3f}")
    for name, b in doc["length_bias"].items():
        line = f"length bias of {name}: chosen longer in {b['chosen_longer']:.0%}, shorter in {b['chosen_shorter']:.0%} of {b['n']} pairs"
        if max(b["chosen_longer"], b["chosen_shorter"]) >= 0.65:
            line += " (length confound: accuracies on this set partly measure a preference for length)"
        lines.append(line)
    by_set: dict[str, list[dict]] = {}
    for r in rows:
        by_set.setdefault(r["set"], []).append(r)
    for s, rs in by_set.items():
        if len(rs) == 2 and within_noise(tuple(rs[0]["interval"]), tuple(rs[1]["interval"])):
            lines.append(f"{s}: the two rewards are within noise (95% intervals overlap)")
    return "\n".join(lines)


def policy_run_settings(policy: str) -> dict[str, Any]:
    """beta and the reference of the run that trained `policy`, when it is an alignscope run
    (config.json with `beta` in the policy folder or up to two folders above: RUN/final,
    RUN/checkpoint-N) or a PEFT/TRL output (adapter_config.json's base model); {} when unknown."""
    from alignscope.run_files import read_json

    p = Path(policy)
    if not p.is_dir():
        return {}
    for folder in (p, p.parent, p.parent.parent):
        cfg = folder / rf.CONFIG
        if cfg.is_file():
            doc = read_json(cfg)
            if isinstance(doc, dict) and "beta" in doc and "method" in doc:
                return {"beta": doc["beta"], "ref": doc.get("ref_model") or doc.get("model"), "from": str(cfg)}
    adapter = p / "adapter_config.json"
    if adapter.is_file():
        doc = read_json(adapter)
        if isinstance(doc, dict) and doc.get("base_model_name_or_path"):
            return {"ref": doc["base_model_name_or_path"], "from": str(adapter)}
    return {}
