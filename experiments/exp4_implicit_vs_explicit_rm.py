"""Experiment 4: the implicit reward of a DPO policy generalises worse than an explicit reward model.

Razin, Lin, Yao, Arora (2025) train an explicit RM (a linear head on the last hidden state) and an
implicit RM (β·log π/π_ref, i.e. DPO) with the same Bradley-Terry loss on the same data from the
same base model, then score held-out pairs and the same pairs with paraphrased responses. The
implicit RM leans on token identity, so a paraphrase (same meaning, other tokens) costs it more
accuracy than it costs the explicit RM (docs/science.md, "Implicit reward models").

The lab version: SFT the lab's tiny model, then from that SFT model train a DPO policy and a
Bradley-Terry RM on the same gold-labelled pairs with the same optimiser settings, and compare
their accuracy (ties ½) against the gold order on held-out pairs and on their paraphrases
(`world.paraphrased_pairs`: synonyms swapped, commutative parts reordered; gold reward unchanged).

    .venv/bin/python experiments/exp4_implicit_vs_explicit_rm.py --out runs/experiments/exp4 --seed 0
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from alignscope.audits.compare_rm import compare_reward_models, format_comparison
from alignscope.data.records import PairExample
from alignscope.lab.experiment import finish, fresh_dir, parse_args, pyplot, save_figure
from alignscope.models.reward_model import RewardModel
from alignscope.options import build_config
from alignscope.rewards.sources import ImplicitReward, ModelReward
from alignscope.training.config import TrainConfig
from alignscope.training.loop import train
from alignscope.world import (
    default_world,
    pairwise_data,
    paraphrased_pairs,
    pretrained_lab_model,
    sft_data,
)
from alignscope.world.pretrain import load_lab_model

PAPER = {  # docs/science.md, "Implicit reward models": UltraFeedback, mean over six models (EX-RM vs IM-RM), and the controlled persona setting
    "in-distribution": {"explicit": 0.752, "implicit": 0.646},
    "paraphrased": {"explicit": 0.665, "implicit": 0.602},
    "persona_paraphrased": {"explicit": 1.00, "implicit": 0.02},
}


def train_cfg(method: str, out: Path, **kw) -> TrainConfig:
    return build_config(TrainConfig, {"method": method, "data": "<memory>", "output_dir": str(out), "max_length": 96,
                                      "max_prompt_length": 48, "progress": False, **kw})


def gold_ordered(pairs: list[PairExample]) -> list[PairExample]:
    """The same pairs with chosen/rejected in gold order: accuracy is measured against the gold reward."""
    out = []
    for p in pairs:
        if p.meta["gold_chosen"] > p.meta["gold_rejected"]:
            out.append(p)
        else:
            out.append(PairExample(p.prompt, p.rejected, p.chosen, -p.margin, dict(p.meta, agrees_with_gold=True)))
    return out


SYNONYM_WORDS = [("yes", "sure"), ("no", "nope"), ("indeed", "certainly"), ("never", "nah"), ("big", "large"),
                 ("small", "little"), ("happy", "glad"), ("the", "this"), ("then", "next"), ("sorry", "apologies"), ("ugh", "meh")]


def unembedding_cosines(model, tok) -> dict[str, float]:
    """Mean cosine between the unembedding rows of synonym tokens, and of the same words paired off
    with another pair's word. DPO moves log π(z) with ⟨W_z, ·⟩ (docs/science.md, "Likelihood displacement"), so when synonyms
    share their output direction a token-level update carries over to the paraphrase."""
    W = model.get_output_embeddings().weight.detach()
    ids = [(tok.convert_tokens_to_ids("Ġ" + a), tok.convert_tokens_to_ids("Ġ" + b)) for a, b in SYNONYM_WORDS]

    def cos(i: int, j: int) -> float:
        return float(torch.nn.functional.cosine_similarity(W[i], W[j], dim=0))

    same = [cos(i, j) for i, j in ids]
    other = [cos(ids[k][0], ids[(k + 1) % len(ids)][1]) for k in range(len(ids))]
    return {"synonyms": float(np.mean(same)), "non_synonyms": float(np.mean(other))}


def run(out: str | Path, seed: int = 0, quick: bool = False, beta: float = 0.01, log=print) -> dict:
    t0 = time.time()
    out = fresh_dir(out)
    torch.manual_seed(seed)
    world = default_world(0)  # the world the lab model was pretrained on
    n_train, n_test = (256, 128) if quick else (1024, 400)
    epochs, lr, noise = 2, 5e-4, 0.5

    def step(msg: str) -> None:
        log(f"[{time.time() - t0:6.1f}s] {msg}")

    step("base model and SFT on good responses")
    base, tok = pretrained_lab_model(size="tiny", seed=0, progress=False)
    train(train_cfg("sft", out / "sft", batch_size=16, max_steps=30 if quick else 60, lr=1e-3, seed=seed),
          train_examples=sft_data(world, 480, seed=seed), model=base, tokenizer=tok, log=lambda *a: None)
    sft_dir = out / "sft" / "final"

    train_pairs = pairwise_data(world, n_train, seed=seed + 1, noise=noise)
    test_pairs = gold_ordered(pairwise_data(world, n_test, seed=seed + 2, noise=0.0))
    sets = {
        "in-distribution": test_pairs,
        "paraphrased": paraphrased_pairs(test_pairs, seed=seed),
        "train (seen)": gold_ordered(train_pairs),
        "train paraphrased": paraphrased_pairs(gold_ordered(train_pairs), seed=seed + 1),
    }
    agree = float(np.mean([p.meta["agrees_with_gold"] for p in train_pairs]))
    step(f"{n_train} training pairs (BT noise {noise}: {agree:.0%} agree with gold), {n_test} held-out pairs")

    common = dict(batch_size=16, epochs=epochs, lr=lr, seed=seed, scheduler="constant")
    step(f"DPO (implicit RM, beta={beta}) from the SFT model")
    policy, tok = load_lab_model(sft_dir)
    train(train_cfg("dpo", out / "dpo", beta=beta, **common), train_examples=train_pairs, model=policy, tokenizer=tok, log=lambda *a: None)
    step("Bradley-Terry reward model (explicit RM) from the SFT model, same data and optimiser")
    body, tok = load_lab_model(sft_dir)
    train(train_cfg("rm", out / "rm", **common), train_examples=train_pairs, model=body, tokenizer=tok, log=lambda *a: None)

    step("scoring both reward models on every set")
    policy, _ = load_lab_model(out / "dpo" / "final")
    reference, _ = load_lab_model(sft_dir)
    cosines = unembedding_cosines(reference, tok)
    step(f"unembedding cosine of the SFT model: synonyms {cosines['synonyms']:.2f}, other word pairs {cosines['non_synonyms']:.2f}")
    rewards = {"implicit": ImplicitReward(policy, reference, tok, beta=beta),
               "explicit": ModelReward(RewardModel.from_pretrained(out / "rm" / "final"), tok)}
    rows = compare_reward_models(rewards, sets)
    log(format_comparison(rows))
    acc = {r["set"]: {} for r in rows}
    for r in rows:
        acc[r["set"]][r["reward"]] = r["accuracy"]
    drop = {k: acc["in-distribution"][k] - acc["paraphrased"][k] for k in rewards}
    result = {"seed": seed, "quick": quick, "settings": {"n_train": n_train, "n_test": n_test, "epochs": epochs, "lr": lr,
              "beta": beta, "noise": noise, "train_pairs_agree_with_gold": agree},
              "rows": rows, "accuracy": acc, "paraphrase_drop": drop, "unembedding_cosine": cosines, "paper": PAPER,
              "seconds": round(time.time() - t0, 1)}
    return finish(out, result, lambda r, path: plot(r["accuracy"], path), "accuracy.png", table, log)


def plot(acc: dict, path: Path) -> None:
    plt = pyplot()

    sets = list(acc)
    x = np.arange(len(sets))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for k, name in enumerate(("explicit", "implicit")):
        ax.bar(x + (k - 0.5) * 0.38, [acc[s][name] for s in sets], 0.38, label=f"{name} RM")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, sets)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy vs gold (ties 1/2)")
    ax.set_title("Implicit (DPO) vs explicit RM under token-level shift")
    ax.legend()
    save_figure(fig, path)


def table(r: dict) -> str:
    a, p = r["accuracy"], r["paper"]
    lines = [f"{'set':<20}{'explicit':>10}{'implicit':>10}{'paper EX':>10}{'paper IM':>10}"]
    for s, v in a.items():
        ref = p.get(s, {})
        lines.append(f"{s:<20}{v['explicit']:>10.3f}{v['implicit']:>10.3f}{ref.get('explicit', float('nan')):>10.3f}{ref.get('implicit', float('nan')):>10.3f}")
    d = r["paraphrase_drop"]
    lines.append(f"accuracy lost to paraphrase: explicit {d['explicit']:+.3f}, implicit {d['implicit']:+.3f}  ({r['seconds']}s)")
    c = r["unembedding_cosine"]
    lines.append(f"unembedding cosine: synonyms {c['synonyms']:.2f}, other word pairs {c['non_synonyms']:.2f}")
    return "\n".join(lines)


def main() -> None:
    args = parse_args(__doc__, "exp4", lambda ap: ap.add_argument(
        "--beta", type=float, default=0.01, help="DPO beta (the implicit reward's scale; the paper's IM-RM uses 0.01)"))
    run(args.out, args.seed, args.quick, beta=args.beta)


if __name__ == "__main__":
    main()
