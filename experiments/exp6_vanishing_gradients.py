"""Experiment 6: vanishing gradients. Prompts with near-zero reward std stall under RL; SFT fits them.

Razin et al. (2024): the expected policy gradient for a prompt is bounded by a multiple of
std(r)^(2/3) under the current model, so prompts on which the model's reward barely varies barely
move under reinforcement finetuning, however low their reward, while SFT on the same prompts fits
them; a short SFT phase on a small fraction of the inputs first removes most low-std prompts
(docs/science.md, "Vanishing gradients").

The lab version. The initial policy has a confident bad habit: it was fine-tuned on good responses
for every prompt kind except `describe`, which it was taught to refuse ("i cannot help with
that."): over-refusal. Every sample it gives a describe prompt is the same refusal, so the gold
reward's std there is ~0 although the reward is low. The training prompts are describe, yes/no and
list prompts (no how-to prompts, where RL penalises refusing a safe request directly: that would teach
the policy to stop refusing through other prompts, a path this experiment is not about). On this fixed
set we measure the per-prompt gold mean and std (n samples each) of:
- the initial policy;
- RLOO on the gold reward;
- SFT on good responses to the same prompts;
- a short SFT warm-up on a few of the low-std prompts (a small fraction of the set), then the same RLOO run.
Gains are reported per group of prompts (initial std near zero or not), at the end and, for the RL
runs, step by step from the rewards of the training samples.

    .venv/bin/python experiments/exp6_vanishing_gradients.py --out runs/experiments/exp6 --seed 0
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch

from alignscope.data.records import SFTExample
from alignscope.lab.experiment import finish, fresh_dir, parse_args, pyplot, save_figure
from alignscope.options import build_config
from alignscope.rollout.generation import GenerationConfig, generate
from alignscope.training.config import TrainConfig
from alignscope.training.loop import train
from alignscope.training.rl import RLConfig, train_rl
from alignscope.world import (
    GoldReward,
    default_world,
    good_response,
    pretrained_lab_model,
    prompt_data,
    sft_data,
)
from alignscope.world.pretrain import load_lab_model

REFUSAL = "i cannot help with that."


def train_cfg(method: str, out: Path, **kw) -> TrainConfig:
    return build_config(TrainConfig, {"method": method, "data": "<memory>", "output_dir": str(out), "max_length": 96,
                                      "max_prompt_length": 48, "progress": False, **kw})


def gold_stats(model, tok, prompts: list, gold, n: int, max_new_tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt mean and std (unbiased) of the gold reward over n samples at temperature 1."""
    ro = generate(model, tok, prompts, GenerationConfig(max_new_tokens=max_new_tokens, n=n, seed=seed))
    r = np.asarray(gold([prompts[i] for i in ro.prompt_index], ro.texts), dtype=np.float64).reshape(len(prompts), n)
    return r.mean(1), r.std(1, ddof=1)


def windowed(rewards_by_step: list[list[float]], k: int) -> list[float | None]:
    """Mean over the samples of the last k steps (a step holds few prompts of one group)."""
    out = []
    for i in range(len(rewards_by_step)):
        pooled = [v for st in rewards_by_step[max(0, i + 1 - k) : i + 1] for v in st]
        out.append(float(np.mean(pooled)) if pooled else None)
    return out


def first_gain(curve: list[float | None], bar: float) -> int | None:
    """The first RL step whose windowed gain reaches `bar` (None: never)."""
    return next((i + 1 for i, v in enumerate(curve) if v is not None and v >= bar), None)


def run(out: str | Path, seed: int = 0, quick: bool = False, log=print) -> dict:
    t0 = time.time()
    out = fresh_dir(out)
    torch.manual_seed(seed)
    world = default_world(0)
    gold = GoldReward(world)
    s = {
        "habit_sft_steps": 640, "habit_lr": 1e-3, "habit_batch": 8 if quick else 16, "prompts": 32 if quick else 64, "eval_n": 6 if quick else 8,
        "max_new_tokens": 32, "rl_steps": 24 if quick else 60, "rl_prompts_per_step": 8, "rl_samples": 4, "rl_lr": 3e-4,
        "kl_coef": 0.01, "sft_steps": 24 if quick else 40, "warmup_prompts": 2 if quick else 3, "warmup_steps": 6,
        "low_std": 0.1, "window": 5, "gain_bar": 1.0,
    }

    def step(msg: str) -> None:
        log(f"[{time.time() - t0:6.1f}s] {msg}")

    step("initial policy: the lab tiny model fine-tuned to answer well, except that it refuses every describe prompt")
    base, tok = pretrained_lab_model(size="tiny", seed=0, progress=False)
    habit = [SFTExample(ex.prompt, REFUSAL, ex.meta) if ex.meta["kind"] == "describe" else ex
             for ex in sft_data(world, 640, seed=seed + 100)]
    train(train_cfg("sft", out / "init", batch_size=s["habit_batch"], max_steps=s["habit_sft_steps"], lr=s["habit_lr"], seed=seed),
          train_examples=habit, model=base, tokenizer=tok, log=lambda *a: None)
    init_dir = out / "init" / "final"

    examples = prompt_data(world, s["prompts"], seed=seed + 1, kinds=["describe", "yesno", "list"])
    prompts, kinds = [p.prompt for p in examples], [p.meta["kind"] for p in examples]

    def stats(model) -> tuple[np.ndarray, np.ndarray]:
        return gold_stats(model, tok, prompts, gold, s["eval_n"], s["max_new_tokens"], seed + 1000)

    policy, tok = load_lab_model(init_dir)
    mean0, std0 = stats(policy)
    low = std0 <= s["low_std"]
    if not low.any():
        raise RuntimeError(f"no prompt has reward std <= {s['low_std']} under the initial policy: the habit did not form")
    step(f"initial policy on {len(prompts)} prompts: gold {mean0.mean():+.3f}; {low.mean():.0%} have reward std <= {s['low_std']} "
         f"(gold {mean0[low].mean():+.3f} there vs {mean0[~low].mean():+.3f} elsewhere)")

    index = {}
    for i, p in enumerate(prompts):
        index.setdefault(p[0]["content"], i)

    def rl(tag: str, start_dir: Path) -> tuple[Path, dict]:
        """RLOO on the gold reward; the reward callable also records, for every sample, its gold gain
        over its prompt's initial mean, by group (so the curve does not depend on which prompts a step drew)."""
        per_step: list[dict[str, list[float]]] = []

        def reward(ps: list, responses: list[str]) -> list[float]:
            r = gold(ps, responses)
            idx = [index[p[0]["content"]] for p in ps]
            per_step.append({"low": [v - mean0[i] for i, v in zip(idx, r) if low[i]],
                             "other": [v - mean0[i] for i, v in zip(idx, r) if not low[i]]})
            return r

        policy, tok = load_lab_model(start_dir)
        cfg = RLConfig(algorithm="rloo", output_dir=str(out / tag), steps=s["rl_steps"],
                       prompts_per_step=s["rl_prompts_per_step"], samples_per_prompt=s["rl_samples"],
                       max_new_tokens=s["max_new_tokens"], lr=s["rl_lr"], kl_coef=s["kl_coef"], seed=seed, progress=False)
        train_rl(cfg, model=policy, tokenizer=tok, prompts=prompts, reward=reward, log=lambda *a: None)
        curves = {g: windowed([st[g] for st in per_step], s["window"]) for g in ("low", "other")}
        return out / tag / "final", curves

    results: dict = {}

    def record(name: str, folder: Path, curves: dict | None = None) -> None:
        model, _ = load_lab_model(folder)
        m, sd = stats(model)
        gain = m - mean0
        results[name] = {"mean": m.tolist(), "std": sd.tolist(), "gain_low_std": float(gain[low].mean()),
                         "gain_other": float(gain[~low].mean()), "low_std_fraction": float((sd <= s["low_std"]).mean()),
                         "initially_low_still_low": float((sd[low] <= s["low_std"]).mean()),
                         "initially_low_not_moved": int(((gain < 0.5) & low).sum())}
        r = results[name]
        msg = ""
        if curves is not None:
            r["training_reward"] = curves
            r["steps_to_gain_low_std"] = first_gain(curves["low"], s["gain_bar"])
            msg = f"; RL steps until the low-std prompts' samples gained {s['gain_bar']}: {r['steps_to_gain_low_std']}"
        step(f"{name}: gold gain {r['gain_low_std']:+.3f} on initially low-std prompts, {r['gain_other']:+.3f} on the others; "
             f"low-std fraction now {r['low_std_fraction']:.0%}{msg}")

    step(f"RLOO on the gold reward, {s['rl_steps']} steps")
    record("rl", *rl("rl", init_dir))

    step(f"SFT on good responses to the same prompts, {s['sft_steps']} steps")
    rng = random.Random(f"exp6-{seed}")
    good = [SFTExample(p, good_response(world, p, rng), {"kind": k}) for p, k in zip(prompts, kinds)]
    policy, tok = load_lab_model(init_dir)
    train(train_cfg("sft", out / "sft", batch_size=16, max_steps=s["sft_steps"], lr=1e-3, seed=seed),
          train_examples=good * 2, model=policy, tokenizer=tok, log=lambda *a: None)
    record("sft", out / "sft" / "final")

    # The warm-up labels a few of the prompts the reward-std diagnostic flags (a random draw from the
    # whole set could miss the habit entirely at this scale).
    flagged = [i for i in range(len(prompts)) if low[i]]
    warm = sorted(random.Random(f"warm-{seed}").sample(flagged, min(s["warmup_prompts"], len(flagged))))
    step(f"SFT warm-up on {len(warm)} of the low-std prompts ({len(warm) / len(prompts):.0%} of all; kinds {[kinds[i] for i in warm]}), "
         f"{s['warmup_steps']} steps, then the same RLOO run")
    policy, tok = load_lab_model(init_dir)
    warm_data = [good[i] for i in warm] * 16
    train(train_cfg("sft", out / "warmup", batch_size=len(warm), max_steps=s["warmup_steps"], lr=1e-3, seed=seed),
          train_examples=warm_data, model=policy, tokenizer=tok, log=lambda *a: None)
    record("warmup_only", out / "warmup" / "final")
    record("warmup_then_rl", *rl("warmup_rl", out / "warmup" / "final"))

    summary = {"seed": seed, "quick": quick, "settings": s, "prompts": [p[0]["content"] for p in prompts], "kinds": kinds,
               "initial": {"mean": mean0.tolist(), "std": std0.tolist(), "low_std": low.tolist(),
                           "low_std_fraction": float(low.mean())},
               "warmup_prompts": warm, "runs": results, "seconds": round(time.time() - t0, 1)}
    return finish(out, summary, plot, "vanishing_gradients.png", table, log)


def plot(r: dict, path: Path) -> None:
    plt = pyplot()

    std0, mean0 = np.array(r["initial"]["std"]), np.array(r["initial"]["mean"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    ax = axes[0]
    for name, marker in (("rl", "o"), ("sft", "s"), ("warmup_then_rl", "^")):
        ax.scatter(std0, np.array(r["runs"][name]["mean"]) - mean0, s=14, marker=marker, label=name.replace("_", " "), alpha=0.7)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("reward std under the initial policy (per prompt)")
    ax.set_ylabel("gold gain (per prompt)")
    ax.set_title("gain against initial reward std")
    ax.legend(fontsize=8)
    ax = axes[1]
    names = ["rl", "sft", "warmup_only", "warmup_then_rl"]
    x = np.arange(len(names))
    ax.bar(x - 0.2, [r["runs"][n]["gain_low_std"] for n in names], 0.4, label="initially low-std prompts")
    ax.bar(x + 0.2, [r["runs"][n]["gain_other"] for n in names], 0.4, label="other prompts")
    ax.set_xticks(x, [n.replace("_", " ") for n in names], fontsize=8)
    ax.set_ylabel("mean gold gain")
    ax.legend(fontsize=8)
    ax = axes[2]
    for name, ls in (("rl", "-"), ("warmup_then_rl", "--")):
        for g, colour in (("low", "C3"), ("other", "C0")):
            curve = [np.nan if v is None else v for v in r["runs"][name]["training_reward"][g]]
            ax.plot(np.arange(1, len(curve) + 1), curve, ls=ls, color=colour, label=f"{name.replace('_', ' ')}: {g}-std prompts")
    ax.set_xlabel("RL step")
    ax.set_ylabel(f"gold gain of the samples ({r['settings']['window']}-step window)")
    ax.set_title("RL: gain over the initial policy, by group")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def table(r: dict) -> str:
    n_low = sum(r["initial"]["low_std"])
    lines = [f"initial: {n_low} of {len(r['prompts'])} prompts with reward std <= {r['settings']['low_std']} "
             f"('still low': the share of those still there; 'not moved': how many gained < 0.5)",
             f"{'run':<18}{'gain low-std':>13}{'gain other':>12}{'low-std now':>13}{'still low':>11}{'not moved':>11}"
             f"{'RL steps to +' + str(r['settings']['gain_bar']):>18}"]
    for name, v in r["runs"].items():
        steps = str(v.get("steps_to_gain_low_std", "-")) if "training_reward" in v else "-"
        lines.append(f"{name:<18}{v['gain_low_std']:>+13.3f}{v['gain_other']:>+12.3f}{v['low_std_fraction']:>13.0%}"
                     f"{v['initially_low_still_low']:>11.0%}{v['initially_low_not_moved']:>11}{steps:>18}")
    lines.append(f"({r['seconds']}s)")
    return "\n".join(lines)


def main() -> None:
    args = parse_args(__doc__, "exp6")
    run(args.out, args.seed, args.quick)


if __name__ == "__main__":
    main()
