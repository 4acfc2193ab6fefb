"""Experiment 5: over-optimisation. The proxy reward rises while the gold reward peaks and falls.

Gao, Schulman, Hilton (2022): a "gold" reward labels preference data, a proxy RM is trained on
those labels, and a policy is optimised against the proxy. Plotted against d = sqrt(KL(π‖π_ref)),
the gold reward of best-of-n follows d(α − β·d) and that of RL follows d(α − β·log d), while the
proxy keeps rising (docs/science.md, "Over-optimisation").

The lab version: SFT the lab's tiny model; train a proxy Bradley-Terry RM on a few hundred pairs
labelled by the lab's gold reward (BT noise); then
- best-of-n: sample N responses per prompt from the SFT policy and compute, for every n ≤ N, the
  exact expected proxy and gold reward of the proxy-best of n samples
  (`diagnostics.overoptimization.best_of_n_curve`), at KL = log n − (n−1)/n;
- RL: RLOO against the proxy with a small KL coefficient, logging proxy, gold and KL every step;
and fit Gao's two forms to the gold gain (`diagnostics.overoptimization`).

    .venv/bin/python experiments/exp5_overoptimization.py --out runs/experiments/exp5 --seed 0
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from alignscope.diagnostics.overoptimization import (
    best_of_n_curve,
    fit_bon,
    fit_rl,
    gold_peak,
    sqrt_kl,
)
from alignscope.lab.experiment import finish, fresh_dir, parse_args, pyplot, save_figure
from alignscope.losses.policy_gradient import best_of_n_kl_bound
from alignscope.models.reward_model import RewardModel
from alignscope.options import build_config
from alignscope.rewards.sources import ModelReward
from alignscope.rollout.generation import GenerationConfig, generate
from alignscope.training.config import TrainConfig
from alignscope.training.loop import train
from alignscope.training.rl import RLConfig, train_rl
from alignscope.world import (
    GoldReward,
    default_world,
    pairwise_data,
    pretrained_lab_model,
    prompt_data,
    sft_data,
)
from alignscope.world.pretrain import load_lab_model


def train_cfg(method: str, out: Path, **kw) -> TrainConfig:
    return build_config(TrainConfig, {"method": method, "data": "<memory>", "output_dir": str(out), "max_length": 96,
                                      "max_prompt_length": 48, "progress": False, **kw})


def smooth(x: np.ndarray, k: int) -> np.ndarray:
    """Trailing moving average over k steps (shorter at the start): a per-step batch is noisy."""
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - k)
    return (c[idx] - c[lo]) / (idx - lo)


def run(out: str | Path, seed: int = 0, quick: bool = False, log=print) -> dict:
    t0 = time.time()
    out = fresh_dir(out)
    torch.manual_seed(seed)
    world = default_world(0)
    gold = GoldReward(world)
    s = {  # every knob, recorded in results.json
        "sft_steps": 30 if quick else 60, "rm_pairs": 384 if quick else 1024, "rm_noise": 0.5, "rm_epochs": 2, "rm_lr": 5e-4,
        "bon_prompts": 16 if quick else 48, "bon_n": 16 if quick else 48, "max_new_tokens": 32,
        "rl_steps": 40 if quick else 150, "rl_prompts_per_step": 8, "rl_samples": 4, "rl_lr": 3e-4 if quick else 2e-4, "kl_coef": 0.002,
        "smooth": 5 if quick else 10,
    }

    def step(msg: str) -> None:
        log(f"[{time.time() - t0:6.1f}s] {msg}")

    step("base model and SFT on good responses")
    base, tok = pretrained_lab_model(size="tiny", seed=0, progress=False)
    train(train_cfg("sft", out / "sft", batch_size=16, max_steps=s["sft_steps"], lr=1e-3, seed=seed),
          train_examples=sft_data(world, 480, seed=seed), model=base, tokenizer=tok, log=lambda *a: None)
    sft_dir = out / "sft" / "final"

    step(f"proxy RM: Bradley-Terry on {s['rm_pairs']} gold-labelled pairs (noise {s['rm_noise']})")
    body, tok = load_lab_model(sft_dir)
    rm_pairs = pairwise_data(world, s["rm_pairs"], seed=seed + 1, noise=s["rm_noise"])
    train(train_cfg("rm", out / "rm", batch_size=16, epochs=s["rm_epochs"], lr=s["rm_lr"], scheduler="constant", seed=seed),
          train_examples=rm_pairs, model=body, tokenizer=tok, log=lambda *a: None)
    proxy = ModelReward(RewardModel.from_pretrained(out / "rm" / "final"), tok)

    step(f"best-of-n: {s['bon_n']} samples for each of {s['bon_prompts']} prompts from the SFT policy")
    policy, tok = load_lab_model(sft_dir)
    prompts = [p.prompt for p in prompt_data(world, s["bon_prompts"], seed=seed + 3)]
    ro = generate(policy, tok, prompts, GenerationConfig(max_new_tokens=s["max_new_tokens"], n=s["bon_n"], seed=seed))
    flat = [prompts[i] for i in ro.prompt_index]
    pr = proxy(flat, ro.texts).double().numpy().reshape(len(prompts), s["bon_n"])
    gr = np.asarray(gold(flat, ro.texts), dtype=np.float64).reshape(len(prompts), s["bon_n"])
    bon_proxy, bon_gold = best_of_n_curve(pr, pr), best_of_n_curve(pr, gr)
    bon_oracle = best_of_n_curve(gr, gr)  # best of n under the gold reward itself: the ceiling
    ns = np.arange(1, s["bon_n"] + 1)
    bon_kl = np.array([best_of_n_kl_bound(int(n)) for n in ns])
    bon_d = sqrt_kl(bon_kl)
    bon_fit = fit_bon(bon_d, bon_gold - bon_gold[0])
    bon_proxy_fit = fit_bon(bon_d, bon_proxy - bon_proxy[0])
    k = int(np.argmax(bon_gold))
    bon = {"n": ns.tolist(), "kl": bon_kl.tolist(), "proxy": bon_proxy.tolist(), "gold": bon_gold.tolist(),
           "gold_oracle": bon_oracle.tolist(), "gold_peak_n": int(ns[k]), "gold_peak": float(bon_gold[k]),
           "fit_gold": vars(bon_fit), "fit_proxy": vars(bon_proxy_fit)}
    step(f"best-of-n: gold peaks at n={ns[k]} ({bon_gold[k]:.3f}, from {bon_gold[0]:.3f}; {bon_gold[-1]:.3f} at n={ns[-1]}); "
         f"proxy {bon_proxy[0]:.3f} -> {bon_proxy[-1]:.3f}; fit gold = d({bon_fit.alpha:.3f} - {bon_fit.beta:.3f} d), R2 {bon_fit.r2:.2f}")

    step(f"RL: RLOO against the proxy RM for {s['rl_steps']} steps, kl_coef {s['kl_coef']}")
    policy, tok = load_lab_model(sft_dir)
    rl_prompts = [p.prompt for p in prompt_data(world, 256, seed=seed + 5)]
    cfg = RLConfig(algorithm="rloo", output_dir=str(out / "rl"), steps=s["rl_steps"],
                   prompts_per_step=s["rl_prompts_per_step"], samples_per_prompt=s["rl_samples"], max_new_tokens=s["max_new_tokens"],
                   lr=s["rl_lr"], kl_coef=s["kl_coef"], seed=seed, save_steps=10, keep_last=10_000, progress=False)
    every = max(1, s["rl_steps"] // 8)
    train_rl(cfg, model=policy, tokenizer=tok, prompts=rl_prompts, reward=proxy, gold=gold,
             log=lambda *a: None)
    rows = [json.loads(line) for line in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward/proxy_mean" in r]
    steps = np.array([r["step"] for r in rows], dtype=np.float64)
    rl_proxy = np.array([r["reward/proxy_mean"] for r in rows])
    rl_gold = np.array([r["reward/gold_mean"] for r in rows])
    rl_kl = np.array([r["kl"] for r in rows])
    sm_proxy, sm_gold, sm_kl = (smooth(x, s["smooth"]) for x in (rl_proxy, rl_gold, rl_kl))
    for i in range(0, len(rows), every):
        log(f"  step {int(steps[i]):4d}  proxy {sm_proxy[i]:+.3f}  gold {sm_gold[i]:+.3f}  kl {sm_kl[i]:.3f}")
    g0 = float(sm_gold[0])
    rl_fit = fit_rl(sqrt_kl(sm_kl), sm_gold - g0)
    peak = gold_peak(steps, sm_gold, sm_proxy, tolerance=0.1)
    ckpts = sorted(int(p.name.split("-")[1]) for p in (out / "rl").glob("checkpoint-*"))
    peak_ckpt = min(ckpts, key=lambda c: abs(c - peak.peak_step)) if ckpts else None
    rl = {"step": steps.tolist(), "proxy": rl_proxy.tolist(), "gold": rl_gold.tolist(), "kl": rl_kl.tolist(),
          "proxy_smoothed": sm_proxy.tolist(), "gold_smoothed": sm_gold.tolist(), "kl_smoothed": sm_kl.tolist(),
          "fit_gold": vars(rl_fit), "gold_peak": vars(peak),
          "peak_checkpoint": None if peak_ckpt is None else str(out / "rl" / f"checkpoint-{peak_ckpt}")}
    step(f"RL: gold peaks at step {peak.peak_step:.0f} ({peak.peak_gold:.3f}; final {peak.final_gold:.3f}) while proxy "
         f"{peak.proxy_at_peak:.3f} -> {peak.final_proxy:.3f}; over-optimised: {peak.overoptimized}")

    result = {"seed": seed, "quick": quick, "settings": s, "best_of_n": bon, "rl": rl, "seconds": round(time.time() - t0, 1)}
    return finish(out, result, plot, "overoptimization.png", table, log)


def plot(r: dict, path: Path) -> None:
    plt = pyplot()

    from alignscope.diagnostics.overoptimization import GaoFit

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    b, rl = r["best_of_n"], r["rl"]
    d = np.sqrt(np.array(b["kl"]))
    ax = axes[0]
    ax.plot(d, np.array(b["proxy"]) - b["proxy"][0], label="proxy RM")
    ax.plot(d, np.array(b["gold"]) - b["gold"][0], label="gold (proxy-best of n)")
    ax.plot(d, np.array(b["gold_oracle"]) - b["gold_oracle"][0], ls=":", label="gold (gold-best of n)")
    dd = np.linspace(0, d.max(), 100)
    ax.plot(dd, GaoFit(**b["fit_gold"]).predict(dd), "k--", lw=1, label="fit d(α − βd)")
    ax.set_xlabel("d = sqrt(KL), KL = log n − (n−1)/n")
    ax.set_ylabel("gain over n = 1")
    ax.set_title("best-of-n")
    ax.legend(fontsize=8)
    ax = axes[1]
    d = np.sqrt(np.clip(rl["kl_smoothed"], 0, None))
    ax.plot(d, np.array(rl["proxy_smoothed"]) - rl["proxy_smoothed"][0], label="proxy RM")
    ax.plot(d, np.array(rl["gold_smoothed"]) - rl["gold_smoothed"][0], label="gold")
    dd = np.linspace(1e-3, d.max(), 100)
    ax.plot(dd, GaoFit(**rl["fit_gold"]).predict(dd), "k--", lw=1, label="fit d(α − β log d)")
    ax.set_xlabel("d = sqrt(KL) (moving average)")
    ax.set_title("RLOO against the proxy RM")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def table(r: dict) -> str:
    b, rl = r["best_of_n"], r["rl"]
    bf, rf, pk = b["fit_gold"], rl["fit_gold"], rl["gold_peak"]
    return "\n".join([
        f"{'':<12}{'proxy start':>12}{'proxy end':>11}{'gold start':>11}{'gold peak':>11}{'gold end':>10}{'peak at':>9}  fit of the gold gain",
        f"{'best-of-n':<12}{b['proxy'][0]:>12.3f}{b['proxy'][-1]:>11.3f}{b['gold'][0]:>11.3f}{b['gold_peak']:>11.3f}{b['gold'][-1]:>10.3f}"
        f"{'n=' + str(b['gold_peak_n']):>9}  d({bf['alpha']:.3f} - {bf['beta']:.3f} d), R2 {bf['r2']:.2f}, d* {bf['d_peak']:.2f}",
        f"{'RLOO':<12}{rl['proxy_smoothed'][0]:>12.3f}{rl['proxy_smoothed'][-1]:>11.3f}{rl['gold_smoothed'][0]:>11.3f}{pk['peak_gold']:>11.3f}"
        f"{pk['final_gold']:>10.3f}{'s=' + str(int(pk['peak_step'])):>9}  d({rf['alpha']:.3f} - {rf['beta']:.3f} log d), R2 {rf['r2']:.2f}, d* {rf['d_peak']:.2f}",
        f"RL over-optimised (gold fell > 0.1 after its peak while the proxy rose): {pk['overoptimized']}; "
        f"peak checkpoint {rl['peak_checkpoint']}  ({r['seconds']}s)",
    ])


def main() -> None:
    args = parse_args(__doc__, "exp5")
    run(args.out, args.seed, args.quick)


if __name__ == "__main__":
    main()
