"""`alignscope audit rm`: which reward model is the better *teacher* for this policy (docs/science.md, "Reward variance").

Sample n responses per prompt from the policy; for each RM, standardise its rewards with its
global mean and std, take per-prompt variances, and measure off-policy accuracy on fixed pairs
and on-policy accuracy against a gold reward on all sample pairs. The teacher table ranks RMs
by accuracy and variance together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from alignscope import run_files as rf
from alignscope.atomic import write_text
from alignscope.data.records import PairExample, Prompt
from alignscope.diagnostics.intervals import (
    accuracy_with_interval,
    decisive_gold_pairs,
    wilson_interval,
)
from alignscope.diagnostics.variance import (
    low_variance_fraction,
    per_prompt_variance,
    standardize_global,
    teacher_table,
)
from alignscope.rewards.sources import call_reward
from alignscope.rollout.backend import generate_with
from alignscope.rollout.generation import GenerationConfig
from alignscope.rollout.vllm import VLLMGenerator

RewardFn = Callable[[list[Prompt], list[str]], Any]


def _rewards(fn: RewardFn, prompts: list[Prompt], responses: list[str]) -> np.ndarray:
    return call_reward(fn, prompts, responses).numpy()


def sample_and_reward(rms: dict[str, RewardFn], policy, tokenizer, prompts: list[Prompt], *, n: int, gold: RewardFn | None,
                      max_new_tokens: int, temperature: float, seed: int, progress: str | None,
                      backend: str | VLLMGenerator = "hf") -> dict[str, Any]:
    """The audit's expensive part for some prompts: `n` samples each and every reward of them (JSON-able, so a
    chunk of prompts can be saved, shared out between processes and resumed: `audits.chunks`)."""
    ro = generate_with(backend, policy, tokenizer, prompts,
                       GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, n=n, do_sample=True, seed=seed),
                       progress=progress)
    flat = [prompts[i] for i in ro.prompt_index]
    return {"prompts": len(prompts), "prompt_index": list(ro.prompt_index), "texts": list(ro.texts),
            "rewards": {name: _rewards(fn, flat, ro.texts).tolist() for name, fn in rms.items()},
            "gold": None if gold is None else _rewards(gold, flat, ro.texts).tolist()}


def audit_reward_models(
    rms: dict[str, RewardFn],
    policy,
    tokenizer,
    prompts: list[Prompt],
    *,
    n: int = 10,
    pairs: list[PairExample] | None = None,
    gold: RewardFn | None = None,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    threshold: float = 0.1,
    seed: int = 0,
    progress: str | None = None,
    backend: str | VLLMGenerator = "hf",
    sampled: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Sample `n` responses per prompt from `policy` (with `backend`: hf, vllm or an engine) and rank the RMs as teachers.

    `sampled`: `sample_and_reward`'s results for consecutive chunks of `prompts`, computed already (chunked runs);
    without it the prompts are sampled here as one chunk."""
    if sampled is None:
        sampled = [sample_and_reward(rms, policy, tokenizer, prompts, n=n, gold=gold, max_new_tokens=max_new_tokens,
                                     temperature=temperature, seed=seed, progress=progress, backend=backend)]
    prompt_index, texts, offset = [], [], 0
    for chunk in sampled:
        prompt_index += [offset + i for i in chunk["prompt_index"]]
        texts += chunk["texts"]
        offset += chunk["prompts"]
    flat_prompts = [prompts[i] for i in prompt_index]
    gold_r = np.concatenate([c["gold"] for c in sampled]).reshape(len(prompts), n) if gold is not None else None
    reward_of = {name: np.concatenate([c["rewards"][name] for c in sampled]) for name in rms}
    table_in, variances, per_rm, rewards = {}, {}, {}, {}
    for name, fn in rms.items():
        r = reward_of[name].reshape(len(prompts), n)
        rewards[name] = r
        off = None
        if pairs:
            pp = [p.prompt for p in pairs]
            off = accuracy_with_interval(_rewards(fn, pp, [p.chosen for p in pairs]), _rewards(fn, pp, [p.rejected for p in pairs]))
        var = per_prompt_variance(standardize_global(r))
        variances[name] = var.tolist()
        per_rm[name] = {"mean_variance": float(var.mean()), "low_variance_fraction": low_variance_fraction(var, threshold),
                        "offpolicy_accuracy": None if off is None else off["accuracy"]}
        table_in[name] = (r, None if off is None else off["accuracy"])
        per_rm[name]["offpolicy"] = off
    table = [row.to_dict() for row in teacher_table(table_in, gold_r, threshold=threshold)]
    n_gold = decisive_gold_pairs(gold_r) if gold_r is not None else None
    for row in table:
        off = per_rm[row["name"]]["offpolicy"]
        if off is not None:
            row.update(offpolicy_n=off["n"], offpolicy_interval=[off["low"], off["high"]])
        if n_gold is not None and row["onpolicy_accuracy"] is not None and np.isfinite(row["onpolicy_accuracy"]):
            # On-policy accuracy weights prompts equally; the interval treats its n gold-ordered pairs as independent.
            row.update(onpolicy_n=n_gold, onpolicy_interval=list(wilson_interval(row["onpolicy_accuracy"] * n_gold, n_gold)))
    samples = [{"row": prompt_index[k] + 1, "prompt": flat_prompts[k], "response": texts[k],
                "rewards": {name: float(r.reshape(-1)[k]) for name, r in rewards.items()},
                "gold": None if gold_r is None else float(gold_r.reshape(-1)[k])} for k in range(len(texts))]
    return {"prompts": len(prompts), "samples_per_prompt": n, "variances": variances, "per_rm": per_rm, "teacher_table": table,
            "gold_mean": None if gold_r is None else float(gold_r.mean()), "gold_decisive_pairs": n_gold, "samples": samples}


def write_outputs(result: dict[str, Any], out_dir: Path, command: str = "alignscope audit rm") -> None:
    """reward_variance.json, teacher_table.json, samples.jsonl and the manifest: what the report's
    reward-variance section reads."""
    out_dir = Path(out_dir)
    summary = {k: v for k, v in result.items() if k != "samples"}
    for name, obj in ((rf.REWARD_VARIANCE, result["variances"]), (rf.TEACHER_TABLE, result["teacher_table"]), (rf.RM_AUDIT, summary)):
        write_text(out_dir / name, json.dumps(obj, indent=1))
    write_text(out_dir / rf.SAMPLES, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in result["samples"]))
    rf.write_manifest(out_dir, "audit rm", command, {"reward_variance": rf.REWARD_VARIANCE, "teacher_table": rf.TEACHER_TABLE,
                                                     "samples": rf.SAMPLES, "summary": rf.RM_AUDIT})


def format_table(result: dict[str, Any]) -> str:
    def f(x):
        return "   -  " if x is None else f"{x:6.3f}"

    n_gold = result.get("gold_decisive_pairs")
    gold_note = f"; on-policy accuracy rests on {n_gold} sample pairs the gold reward does not tie" if n_gold is not None else ""
    lines = [f"teacher table ({result['prompts']} prompts x {result['samples_per_prompt']} samples; best teacher first{gold_note})",
             f"{'rank':<5}{'reward model':<28}{'variance':>9}{'low-var':>9}{'raw var':>10}{'off-acc':>9}{'on-acc':>9}  why"]
    for i, row in enumerate(result["teacher_table"], 1):
        lines.append(f"{i:<5}{row['name'][:27]:<28}{f(row['mean_variance']):>9}{f(row['low_variance_fraction']):>9}{row.get('raw_variance', float('nan')):>10.3g}"
                     f"{f(row['offpolicy_accuracy']):>9}{f(row['onpolicy_accuracy']):>9}  {row['reason']}")
    for row in result["teacher_table"]:
        for kind in ("offpolicy", "onpolicy"):
            if f"{kind}_interval" in row:
                lo, hi = row[f"{kind}_interval"]
                lines.append(f"  {row['name']}: {kind.replace('policy', '-policy')} accuracy {row[f'{kind}_accuracy']:.3f}, "
                             f"95% Wilson interval [{lo:.2f}, {hi:.2f}] over n = {row[f'{kind}_n']} pairs")
    from alignscope.diagnostics.intervals import within_noise

    table = result["teacher_table"]
    for a, b in zip(table, table[1:]):
        for kind in ("onpolicy", "offpolicy"):
            if f"{kind}_interval" in a and f"{kind}_interval" in b and within_noise(tuple(a[f"{kind}_interval"]), tuple(b[f"{kind}_interval"])):
                lines.append(f"  {a['name']} and {b['name']}: {kind.replace('policy', '-policy')} accuracies within noise (intervals overlap)")
    return "\n".join(lines)
