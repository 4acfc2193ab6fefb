"""`alignscope compare-rm`: implicit reward (a DPO policy against its reference) versus an explicit RM.

Razin et al. (2025) find the implicit RM β·log(π/π_ref) leans on surface tokens and loses
accuracy under token-level shift (paraphrases), where an explicit RM keeps it (science.md §4).
Both are scored on the same pairs, in distribution and on a shifted set; ties count ½.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from alignscope.data.records import PairExample
from alignscope.diagnostics.accuracy import tie_aware_accuracy
from alignscope.models.scoring import sequence_logps
from alignscope.rewards.sources import call_reward


def implicit_rewards(policy, reference, tokenizer, prompts: list, responses: list[str], beta: float, batch_size: int = 16) -> np.ndarray:
    lp = sequence_logps(policy, tokenizer, prompts, responses, batch_size=batch_size)
    lr = sequence_logps(reference, tokenizer, prompts, responses, batch_size=batch_size)
    return (beta * (lp - lr)).double().numpy()


def _evaluate(reward: Callable[[list, list[str]], Any], pairs: list[PairExample]) -> dict[str, float]:
    prompts = [p.prompt for p in pairs]
    c = call_reward(reward, prompts, [p.chosen for p in pairs]).numpy()
    r = call_reward(reward, prompts, [p.rejected for p in pairs]).numpy()
    scale = np.std(np.concatenate([c, r])) or 1.0
    return {"accuracy": tie_aware_accuracy(c, r), "normalized_margin": float(np.mean(c - r) / scale)}


def compare_reward_models(
    rewards: dict[str, Callable[[list, list[str]], Any]], sets: dict[str, list[PairExample]]
) -> list[dict[str, Any]]:
    """One row per (reward, evaluation set): accuracy (ties ½) and margin over the rewards' std."""
    return [{"reward": name, "set": set_name, "pairs": len(pairs), **_evaluate(fn, pairs)}
            for name, fn in rewards.items() for set_name, pairs in sets.items()]


def format_comparison(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'reward':<34}{'set':<16}{'pairs':>6}{'accuracy':>10}{'norm. margin':>14}"]
    for r in rows:
        lines.append(f"{r['reward'][:33]:<34}{r['set'][:15]:<16}{r['pairs']:>6}{r['accuracy']:>10.3f}{r['normalized_margin']:>14.3f}")
    return "\n".join(lines)
