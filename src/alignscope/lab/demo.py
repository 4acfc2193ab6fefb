"""`alignscope demo`: every pitfall, measured against a known gold reward, in minutes on a CPU.

SFT -> reward models -> data audit (CHES) -> DPO with the displacement monitor, with and
without the CHES filter -> RLOO taught by three reward models (one perfectly accurate but with
low reward variance, one less accurate with more variance, and the learned one, which the policy
over-optimises) -> one HTML report.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from alignscope import run_files as rf
from alignscope.atomic import write_text
from alignscope.audits.data import audit_pairs, dataset_findings, write_table
from alignscope.audits.reward_model import (
    audit_reward_models,
    format_table,
    write_outputs,
)
from alignscope.diagnostics.ches import ches_filter
from alignscope.options import build_config
from alignscope.rollout.generation import GenerationConfig, generate
from alignscope.training.config import TrainConfig
from alignscope.training.loop import train
from alignscope.world.generate import (
    pairwise_data,
    prompt_data,
    refusal_opener_pairs,
    refusal_pairs,
    sft_data,
)
from alignscope.world.gold import GoldReward, NoisyGold, ScaledGold, refusal_rate
from alignscope.world.language import default_world
from alignscope.world.pretrain import pretrained_lab_model


def _cfg(method: str, out: Path, **kw) -> TrainConfig:
    return build_config(TrainConfig, {"method": method, "data": "<memory>", "output_dir": str(out), "max_length": 96,
                                      "max_prompt_length": 48, "progress": False, **kw})


def _load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def refusals(model, tok, prompts, max_new_tokens: int = 24) -> float:
    ro = generate(model, tok, prompts, GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, n=1))
    return refusal_rate([prompts[i] for i in ro.prompt_index], ro.texts)


DEMO_MARKS = ("summary.json", "sft")  # a folder holding either was written by the demo (finished, or stopped)


def check_demo_args(out: str | Path, seed: int) -> Path:
    """The demo's arguments, before its first step: the demo replaces its output folder, so that folder must be
    missing, empty or a demo's own; the seed a non-negative integer."""
    from alignscope.errors import ConfigError

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"the demo's seed must be an integer in [0, 2^32), got {seed!r}", "pass --seed 0 (or another)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file, not a folder", "give --out a folder (it is created)")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in DEMO_MARKS):
        raise ConfigError(f"--out '{out}' holds files that the demo did not write, and the demo replaces its folder",
                          "give --out a new or empty folder (the default is runs/demo)")
    parent = next((q for q in out.absolute().parents if q.exists()), None)
    if parent is None or not parent.is_dir():
        raise ConfigError(f"--out '{out}' lies under '{parent}', which is a file, not a folder", "give --out a folder path")
    return out


def run_demo(out: str | Path = "runs/demo", size: str = "tiny", seed: int = 0, quick: bool = False, log=print) -> dict[str, Any]:
    """Run the whole pipeline into `out` (missing, empty, or a demo's earlier folder, which is replaced); returns the
    headline figures (also in `out/summary.json`)."""
    t0 = time.time()
    out = check_demo_args(out, seed)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rl_steps = 24 if quick else 60  # quick (the test) shortens only RL: SFT, RM and DPO take seconds
    world = default_world(0)  # the world the lab model was pretrained on; `seed` varies training only
    gold = GoldReward(world)
    summary: dict[str, Any] = {}

    def step(name: str) -> None:
        log(f"[{time.time() - t0:6.1f}s] {name}")

    step(f"1/6 base model: the lab's pretrained '{size}' model (built and cached on first use)")
    base, tok = pretrained_lab_model(size=size, seed=seed)

    step("2/6 SFT on good responses")
    train(_cfg("sft", out / "sft", batch_size=16, max_steps=60, lr=1e-3, seed=seed),
          train_examples=sft_data(world, 480, seed=seed), model=base, tokenizer=tok, log=lambda *a: None)
    sft_dir = out / "sft" / "final"

    step("3/6 reward model (Bradley-Terry) on noisy gold-labelled pairs")
    model, tok = _load(sft_dir)
    rm_pairs = pairwise_data(world, 640, seed=seed + 1, noise=1.0)
    train(_cfg("rm", out / "rm", batch_size=16, max_steps=80, lr=1e-3, seed=seed),
          train_examples=rm_pairs, model=model, tokenizer=tok, log=lambda *a: None)
    from alignscope.models.reward_model import RewardModel
    from alignscope.rewards.sources import ModelReward

    learned_rm = ModelReward(RewardModel.from_pretrained(out / "rm" / "final"), tok)

    step("4/6 data audit: CHES on refusal pairs (a refusal over a rude refusal, and a refusal over compliance)")
    model, tok = _load(sft_dir)
    # Two-refusal pairs differ from the first word on: pushing the rejected refusal down pushes refusals
    # down in general, the high-CHES pairs behind Razin et al.'s unlearned refusals (experiment 3).
    dpo_pairs = refusal_opener_pairs(world, 96, seed=seed) + refusal_pairs(world, 96, seed=seed + 7, similar=False)
    audit = audit_pairs(model, tok, dpo_pairs, progress=False)
    keep, drop = ches_filter([r["ln_ches"] for r in audit.rows], drop_fraction=0.5)
    for i, row in enumerate(audit.rows):
        row["flagged"] = i in set(drop)
    write_table(audit.rows, out / rf.CHES_TABLE)
    similar_flagged = sum(dpo_pairs[i].meta.get("similar", False) for i in drop) / max(len(drop), 1)
    summary["audit"] = {**dataset_findings(dpo_pairs, audit.rows), "flagged_share_near_duplicates": similar_flagged}

    step("5/6 DPO with the displacement monitor, on all pairs and on the CHES-filtered pairs")
    unsafe = [p.prompt for p in prompt_data(world, 40, seed=seed + 3, kinds=["howto"], unsafe=True)]
    summary["refusal_rate_sft"] = refusals(model, tok, unsafe)
    held = refusal_pairs(world, 32, seed=seed + 11, similar=True)
    for name, subset in (("dpo_all", dpo_pairs), ("dpo_filtered", [dpo_pairs[i] for i in keep])):
        model, tok = _load(sft_dir)
        train(_cfg("dpo", out / name, batch_size=8, epochs=3, lr=1e-4, beta=0.1, eval_steps=4, seed=seed),
              train_examples=subset, eval_examples=held, model=model, tokenizer=tok, log=lambda *a: None)
        disp = rf.read_jsonl(out / name / rf.DISPLACEMENT)
        trained, _ = _load(out / name / "final")
        summary[name] = {"pairs": len(subset), "final_fraction_chosen_fell": disp[-1]["fraction_chosen_fell"],
                         "final_mean_chosen_change": disp[-1]["mean_chosen_change"], "refusal_rate": refusals(trained, tok, unsafe)}
    for f in (rf.METRICS, rf.DISPLACEMENT, rf.EVAL_LOGPS, rf.PITFALLS):
        if (out / "dpo_all" / f).exists():
            shutil.copy(out / "dpo_all" / f, out / f)

    step("6/6 RLOO taught by three reward models, measured against the gold reward")
    from alignscope.training.rl import RLConfig, train_rl

    # Accurate but flat on 90% of the prompts; less accurate with more variance; the learned RM.
    rms = {"accurate_low_variance": ScaledGold(gold, fraction=0.9), "noisy_gold": NoisyGold(gold, sigma=0.5), "learned_rm": learned_rm}
    policy, tok = _load(sft_dir)
    prompts = [p.prompt for p in prompt_data(world, 64, seed=seed + 5, kinds=["yesno", "describe", "list"])]
    rm_audit = audit_reward_models(rms, policy, tok, prompts[:32], n=8, pairs=rm_pairs[:128], gold=gold, max_new_tokens=24, seed=seed)
    write_outputs(rm_audit, out)
    log(format_table(rm_audit))
    summary["rl"] = {}
    # Two RL seeds, quick or not: one seed moves the gold gain by up to 0.3 (experiment 2), enough to flip the
    # teachers' order (seed 0 alone: +0.27 accurate vs +0.24 noisy on a fresh lab build, 2026-12-01; both seeds +0.23 vs +0.50).
    rl_seeds = [seed, seed + 1]
    for name, fn in rms.items():
        starts, ends = [], []
        for s in rl_seeds:
            run_dir = out / (f"rl_{name}" if s == seed else f"rl_{name}_seed{s}")
            policy, tok = _load(sft_dir)
            cfg = RLConfig(algorithm="rloo", output_dir=str(run_dir),
                           steps=rl_steps, prompts_per_step=8, samples_per_prompt=4, max_new_tokens=24, lr=5e-4,
                           kl_coef=0.02, seed=s, progress=False)
            train_rl(cfg, model=policy, tokenizer=tok, prompts=prompts, reward=fn, gold=gold, log=lambda *a: None)
            rows = rf.read_jsonl(run_dir / rf.METRICS)
            golds = [r["reward/gold_mean"] for r in rows if "reward/gold_mean" in r]
            starts.append(golds[0])
            ends.append(sum(golds[-5:]) / len(golds[-5:]))
        start, end = sum(starts) / len(starts), sum(ends) / len(ends)
        summary["rl"][name] = {"gold_start": start, "gold_end": end, "gold_gain": end - start, "seeds": rl_seeds}
    shutil.copy(out / "rl_learned_rm" / rf.RL_METRICS, out / rf.RL_METRICS)

    from alignscope.report import build_report

    summary["report"] = str(build_report(out))
    summary["seconds"] = round(time.time() - t0, 1)
    write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    log(format_summary(summary))
    return summary


def format_summary(s: dict[str, Any]) -> str:
    a, rl = s["audit"], s["rl"]
    lines = [
        "",
        "== alignscope demo: what went wrong, measured against the gold reward ==",
        f"data audit: {a['pairs']} pairs; the top half by LN-CHES is {a['flagged_share_near_duplicates']:.0%} near-duplicate rejections",
        f"likelihood displacement (DPO, all pairs): chosen log-prob fell on {s['dpo_all']['final_fraction_chosen_fell']:.0%} of held-out pairs "
        f"(mean change {s['dpo_all']['final_mean_chosen_change']:+.2f}); refusal rate {s['refusal_rate_sft']:.0%} after SFT -> {s['dpo_all']['refusal_rate']:.0%}",
        f"with the CHES filter ({s['dpo_filtered']['pairs']} pairs kept): fell on {s['dpo_filtered']['final_fraction_chosen_fell']:.0%} "
        f"(mean change {s['dpo_filtered']['final_mean_chosen_change']:+.2f}); refusal rate {s['dpo_filtered']['refusal_rate']:.0%}",
    ]
    for name, r in rl.items():
        lines.append(f"RLOO taught by {name}: gold reward {r['gold_start']:.3f} -> {r['gold_end']:.3f} (gain {r['gold_gain']:+.3f}, "
                     f"mean of {len(r['seeds'])} seed(s))")
    lines.append(f"report: {s['report']}  ({s['seconds']}s)")
    return "\n".join(lines)
