"""Experiment 2: which reward model is the better teacher? Accuracy is not enough (docs/science.md, "Reward variance").

Razin et al. (2025): across reward models used to train the same policy with RLOO, the reward
variance an RM induces under the policy predicts how fast the proxy reward rises (Pearson 0.98),
and variance together with accuracy predicts the gold-reward rise (0.94), while accuracy alone does
not; a perfectly accurate RM (the gold reward with half the prompts scaled by 0.001) is the slowest
teacher. Here the lab's SFT model is taught by RMs of varying accuracy and variance, for the same
number of RLOO steps (60; 40 in --quick) on the RMs' raw rewards (the theorem's variance is the raw
one), averaged over RL seeds (3; 2 in --quick), and the gold-reward gain is measured on held-out prompts:

  - gold: perfectly accurate, the most variance it can have;
  - gold x 0.001 on 50%, 90% or all of the prompts: perfectly accurate, low variance on those prompts;
  - gold + noise: a fixed random perturbation per (prompt, response), sd 0.5, 1 or 3: less accurate;
  - learned RMs: Bradley-Terry RMs trained from the SFT model on 1024 or 256 gold-labelled pairs.

--quick keeps two: gold x 0.001 on 90% of the prompts and gold + noise (sd 0.5).
Accuracy and the standardised variance come from `audits.reward_model.audit_reward_models` on the
SFT policy; the raw variance (`diagnostics.variance.per_prompt_variance`) from the same kind of samples.

Run: .venv/bin/python experiments/exp2_teachers.py --out runs/experiments/exp2 --seed 0
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from alignscope.audits.reward_model import audit_reward_models, format_table
from alignscope.diagnostics.variance import per_prompt_variance
from alignscope.lab.experiment import parse_args, pyplot, save_figure
from alignscope.models.reward_model import RewardModel
from alignscope.options import build_config
from alignscope.rewards.sources import ModelReward
from alignscope.rollout.generation import GenerationConfig, generate
from alignscope.training.config import TrainConfig
from alignscope.training.loop import train
from alignscope.training.rl import RLConfig, train_rl
from alignscope.world.generate import pairwise_data, prompt_data, sft_data
from alignscope.world.gold import GoldReward, NoisyGold, ScaledGold
from alignscope.world.language import default_world
from alignscope.world.pretrain import pretrained_lab_model

KINDS = ["yesno", "describe", "list"]


def quiet(*_a, **_k) -> None:
    pass


def train_cfg(method: str, out: Path, **kw) -> TrainConfig:
    return build_config(TrainConfig, {"method": method, "data": "<memory>", "output_dir": str(out), "max_length": 96,
                                      "max_prompt_length": 48, "progress": False, **kw})


def sample(policy, tok, prompts, n: int, seed: int):
    ro = generate(policy, tok, prompts, GenerationConfig(max_new_tokens=24, do_sample=True, n=n, seed=seed))
    return [prompts[i] for i in ro.prompt_index], ro.texts


def learned_rm(sft, tok, world, pairs: int, noise: float, out: Path, seed: int):
    """A Bradley-Terry RM trained from the SFT model on `pairs` gold-labelled pairs (BT label noise `noise`)."""
    model = copy.deepcopy(sft)
    train(train_cfg("rm", out, batch_size=16, epochs=2, lr=5e-4, scheduler="constant", seed=seed),
          train_examples=pairwise_data(world, pairs, seed=seed + 1, noise=noise, kinds=KINDS), model=model, tokenizer=tok, log=quiet)
    return ModelReward(RewardModel.from_pretrained(out / "final"), tok)


def mean_reward(fn, prompts, responses) -> float:
    return float(torch.as_tensor(fn(prompts, responses), dtype=torch.float64).mean())


def pearson(x, y) -> float:
    return float(np.corrcoef(x, y)[0, 1])


def multiple_r(y, *xs) -> float:
    """Correlation of y with its least-squares fit on the xs (the paper's 'variance and accuracy together')."""
    a = np.column_stack([*xs, np.ones(len(y))])
    fit = a @ np.linalg.lstsq(a, y, rcond=None)[0]
    return pearson(fit, y)


def run(out: str | Path, seed: int = 0, quick: bool = False, log=print) -> dict:
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)  # the RL runs append to their metrics files
    world = default_world(0)
    gold = GoldReward(world)
    base, tok = pretrained_lab_model(size="tiny", seed=0, progress=False)

    def stamp(msg: str) -> None:
        log(f"[{time.time() - t0:5.0f}s] {msg}")

    stamp("SFT of the lab's tiny model")
    sft = copy.deepcopy(base)
    train(train_cfg("sft", work / "sft", batch_size=16, max_steps=60, lr=1e-3, seed=seed), train_examples=sft_data(world, 480, seed=seed),
          model=sft, tokenizer=tok, log=quiet)
    train_prompts = [p.prompt for p in prompt_data(world, 96, seed=seed + 5, kinds=KINDS)]
    eval_prompts = [p.prompt for p in prompt_data(world, 48 if quick else 96, seed=seed + 500, kinds=KINDS)]

    stamp("reward models")
    raw = {"gold x0.001 on 90% of prompts": ScaledGold(gold, 0.9), "gold + noise (sd 0.5)": NoisyGold(gold, 0.5)}
    if not quick:
        raw.update({"gold": gold, "gold x0.001 on 50% of prompts": ScaledGold(gold, 0.5), "gold x0.001 on all prompts": ScaledGold(gold, 1.0),
                    "gold + noise (sd 1)": NoisyGold(gold, 1.0), "gold + noise (sd 3)": NoisyGold(gold, 3.0)})
        raw["learned RM (1024 pairs)"] = learned_rm(sft, tok, world, 1024, 0.5, work / "rm_1024", seed)
        raw["learned RM (256 pairs)"] = learned_rm(sft, tok, world, 256, 1.0, work / "rm_256", seed)
    rms = raw
    sp, st = sample(sft, tok, train_prompts[:32], 8, seed)
    raw_var = {name: float(per_prompt_variance(np.asarray(fn(sp, st), dtype=np.float64).reshape(32, 8)).mean()) for name, fn in rms.items()}

    stamp("RM audit on the SFT policy: variance and accuracy")
    audit_pairs_ = pairwise_data(world, 128, seed=seed + 9, noise=0.0, kinds=KINDS)
    audit = audit_reward_models(rms, sft, tok, train_prompts[:32], n=8, pairs=audit_pairs_, gold=gold, max_new_tokens=24, seed=seed)
    log(format_table(audit))
    table = {row["name"]: row for row in audit["teacher_table"]}

    steps = 40 if quick else 60
    rl_seeds = [seed, seed + 1] if quick else [seed, seed + 1, seed + 2]
    ep, et = sample(sft, tok, eval_prompts, 8, seed + 1)
    gold_start = mean_reward(gold, ep, et)
    rows = []
    for name, fn in rms.items():
        gains, proxy_gains, curves = [], [], []
        proxy_start = mean_reward(fn, ep, et)
        for s in rl_seeds:
            stamp(f"RLOO with {name}, seed {s}")
            policy = copy.deepcopy(sft)
            run_dir = work / f"rl_{len(rows)}_{s}"
            cfg = RLConfig(algorithm="rloo", output_dir=str(run_dir),
                           steps=steps, prompts_per_step=8, samples_per_prompt=4, max_new_tokens=24, lr=5e-4, kl_coef=0.02,
                           seed=s, progress=False)
            train_rl(cfg, model=policy, tokenizer=tok, prompts=train_prompts, reward=fn, gold=gold, log=quiet)
            p2, t2 = sample(policy, tok, eval_prompts, 8, seed + 1)
            gains.append(mean_reward(gold, p2, t2) - gold_start)
            proxy_gains.append(mean_reward(fn, p2, t2) - proxy_start)
            curves.append([json.loads(line)["gold_reward"] for line in (run_dir / "rl_metrics.jsonl").read_text().splitlines()])
        row = {"rm": name, "raw_variance": raw_var[name], "variance": table[name]["mean_variance"], "onpolicy_accuracy": table[name]["onpolicy_accuracy"],
               "offpolicy_accuracy": table[name]["offpolicy_accuracy"], "gold_gain": float(np.mean(gains)), "gold_gain_per_seed": gains,
               "proxy_gain": float(np.mean(proxy_gains)),
               "train_gold_curve": np.mean(curves, 0).tolist()}
        rows.append(row)
        log(f"   gold gain {row['gold_gain']:+.3f}  proxy gain {row['proxy_gain']:+.3f}  (raw variance {row['raw_variance']:.4f}, on-policy accuracy {row['onpolicy_accuracy']:.3f})")

    var = np.array([r["raw_variance"] for r in rows])
    std_var = np.array([r["variance"] for r in rows])
    acc = np.array([r["onpolicy_accuracy"] for r in rows])
    g = np.array([r["gold_gain"] for r in rows])
    pg = np.array([r["proxy_gain"] for r in rows])
    corr = {"variance_vs_gold_gain": pearson(var, g), "standardised_variance_vs_gold_gain": pearson(std_var, g), "accuracy_vs_gold_gain": pearson(acc, g),
            "variance_vs_proxy_gain": pearson(var, pg), "variance_and_accuracy_vs_gold_gain": multiple_r(g, var, acc)}
    by = {r["rm"]: r for r in rows}
    results = {"seed": seed, "quick": quick, "rl": {"algorithm": "rloo", "steps": steps, "prompts_per_step": 8, "samples_per_prompt": 4,
               "lr": 5e-4, "kl_coef": 0.02, "seeds": rl_seeds}, "gold_start": gold_start, "rows": rows, "pearson": corr,
               "accurate_low_variance_slower_than_noisy": by["gold x0.001 on 90% of prompts"]["gold_gain"] < by["gold + noise (sd 0.5)"]["gold_gain"],
               "seconds": round(time.time() - t0, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out)
    log(format_results(results))
    return results


def scatter_gains(ax, rows: list[dict], key: str, xlabel: str, ylabel: str) -> None:
    """Each teacher's gold gain against one of its measures (`key`), labelled with the teacher's name."""
    ax.scatter([x[key] for x in rows], [x["gold_gain"] for x in rows])
    for x in rows:
        ax.annotate(x["rm"], (x[key], x["gold_gain"]), fontsize=7)
    ax.set(xlabel=xlabel, ylabel=ylabel)


def plot(r: dict, out: Path) -> None:
    plt = pyplot()

    rows = r["rows"]
    fig, ax = plt.subplots(1, 4, figsize=(20, 4.2))
    for a, key, label in ((ax[0], "raw_variance", "reward variance under the SFT policy (raw)"),
                          (ax[1], "onpolicy_accuracy", "on-policy accuracy")):
        scatter_gains(a, rows, key, label, f"gold-reward gain after {r['rl']['steps']} RLOO steps")
    ax[0].set_xscale("log")
    ax[0].set_title(f"Pearson {r['pearson']['variance_vs_gold_gain']:+.2f}")
    ax[1].set_title(f"Pearson {r['pearson']['accuracy_vs_gold_gain']:+.2f}")
    ax[2].scatter([x["raw_variance"] for x in rows], [x["proxy_gain"] for x in rows])
    ax[2].set(xscale="log", xlabel="reward variance (raw)", ylabel="proxy-reward gain (RM units)",
              title=f"Pearson {r['pearson']['variance_vs_proxy_gain']:+.2f}")
    k = 5  # a trailing 5-step mean: one step's batch is 32 samples
    for x in rows:
        c = np.asarray(x["train_gold_curve"])
        ax[3].plot(np.arange(1, len(c) + 1), [c[max(0, i - k + 1) : i + 1].mean() for i in range(len(c))], label=x["rm"])
    ax[3].set(xlabel="RLOO step", ylabel=f"gold reward of the training samples ({k}-step mean)", title="gold reward during training")
    ax[3].legend(fontsize=6)
    save_figure(fig, out / "teachers.png")


def format_results(r: dict) -> str:
    lines = ["", f"{'reward model':<32}{'raw var':>9}{'std var':>9}{'on-acc':>8}{'off-acc':>8}{'gold gain':>11}{'proxy gain':>12}"]
    for x in sorted(r["rows"], key=lambda x: -x["gold_gain"]):
        off = "-" if x["offpolicy_accuracy"] is None else f"{x['offpolicy_accuracy']:.3f}"
        lines.append(f"{x['rm']:<32}{x['raw_variance']:>9.4f}{x['variance']:>9.3f}{x['onpolicy_accuracy']:>8.3f}{off:>8}{x['gold_gain']:>+11.3f}{x['proxy_gain']:>+12.3f}")
    c = r["pearson"]
    lines += [(f"Pearson: raw variance vs gold gain {c['variance_vs_gold_gain']:+.2f} (standardised {c['standardised_variance_vs_gold_gain']:+.2f}); "
               f"accuracy vs gold gain {c['accuracy_vs_gold_gain']:+.2f}; variance vs proxy gain {c['variance_vs_proxy_gain']:+.2f}; "
               f"variance and accuracy together vs gold gain {c['variance_and_accuracy_vs_gold_gain']:+.2f}"),
              f"accurate low-variance RM slower than the noisy high-variance one: {r['accurate_low_variance_slower_than_noisy']}  ({r['seconds']}s)"]
    return "\n".join(lines)


def main() -> None:
    args = parse_args(__doc__, "exp2")
    run(args.out, seed=args.seed, quick=args.quick)


if __name__ == "__main__":
    main()
