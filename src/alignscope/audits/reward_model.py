"""`alignscope audit rm`: which reward model is the better *teacher* for this policy (science.md §2).

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
from alignscope.diagnostics.accuracy import tie_aware_accuracy
from alignscope.diagnostics.variance import (
    low_variance_fraction,
    per_prompt_variance,
    standardize_global,
    teacher_table,
)
from alignscope.rewards.sources import call_reward
from alignscope.rollout.generation import GenerationConfig, generate

RewardFn = Callable[[list[Prompt], list[str]], Any]


def _rewards(fn: RewardFn, prompts: list[Prompt], responses: list[str]) -> np.ndarray:
    return call_reward(fn, prompts, responses).numpy()


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
) -> dict[str, Any]:
    ro = generate(policy, tokenizer, prompts, GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, n=n, do_sample=True, seed=seed),
                  progress=progress)
    flat_prompts = [prompts[i] for i in ro.prompt_index]
    gold_r = _rewards(gold, flat_prompts, ro.texts).reshape(len(prompts), n) if gold is not None else None
    table_in, variances, per_rm = {}, {}, {}
    for name, fn in rms.items():
        r = _rewards(fn, flat_prompts, ro.texts).reshape(len(prompts), n)
        off = None
        if pairs:
            pp = [p.prompt for p in pairs]
            off = tie_aware_accuracy(_rewards(fn, pp, [p.chosen for p in pairs]), _rewards(fn, pp, [p.rejected for p in pairs]))
        var = per_prompt_variance(standardize_global(r))
        variances[name] = var.tolist()
        per_rm[name] = {"mean_variance": float(var.mean()), "low_variance_fraction": low_variance_fraction(var, threshold), "offpolicy_accuracy": off}
        table_in[name] = (r, off)
    table = [row.to_dict() for row in teacher_table(table_in, gold_r, threshold=threshold)]
    return {"prompts": len(prompts), "samples_per_prompt": n, "variances": variances, "per_rm": per_rm, "teacher_table": table,
            "gold_mean": None if gold_r is None else float(gold_r.mean())}


def write_outputs(result: dict[str, Any], out_dir: Path) -> None:
    """reward_variance.json and teacher_table.json: the inputs of the report's reward-variance section."""
    for name, obj in ((rf.REWARD_VARIANCE, result["variances"]), (rf.TEACHER_TABLE, result["teacher_table"]), (rf.RM_AUDIT, result)):
        write_text(Path(out_dir) / name, json.dumps(obj, indent=1))


def format_table(result: dict[str, Any]) -> str:
    def f(x):
        return "   -  " if x is None else f"{x:6.3f}"

    lines = [f"teacher table ({result['prompts']} prompts x {result['samples_per_prompt']} samples; best teacher first)",
             f"{'rank':<5}{'reward model':<28}{'variance':>9}{'low-var':>9}{'off-acc':>9}{'on-acc':>9}  why"]
    for i, row in enumerate(result["teacher_table"], 1):
        lines.append(f"{i:<5}{row['name'][:27]:<28}{f(row['mean_variance']):>9}{f(row['low_variance_fraction']):>9}"
                     f"{f(row['offpolicy_accuracy']):>9}{f(row['onpolicy_accuracy']):>9}  {row['reason']}")
    return "\n".join(lines)
