"""Experiment 3: likelihood displacement in DPO, and the CHES filter (docs/science.md, "Likelihood displacement").

Razin et al. (2024) show that DPO can lower log pi(y+|x) and move the mass to responses the data
never mentioned, sometimes ones that mean the opposite of y+; that the CHES score of a pair predicts
how much it displaces (edit distance does not); and that dropping the high-CHES pairs of refusal data
keeps DPO from unlearning refusals. On the lab's SFT model (the "instruction-tuned" starting point):

  A. single-token DPO: one prompt, y+ and y- one answer word each, every ordered pair of the eight
     answer words (three in --quick), 30 epochs at lr 2e-5 (and, in the full run, at lr 1e-4);
     does pi(y+) fall, do answer words of the opposite meaning gain mass, and does the unembedding
     geometry <W_y+, W_y- - W_y+> (the single-token CHES) predict the fall;
  B. one DPO epoch on subsets of a mixed pair pool taken at rising LN-CHES quintiles, and at rising
     normalised edit distance quintiles: the mean change of log pi(y+|x) of each subset;
  C. refusal data (two refusals: plain chosen over a rude opener; and refusal chosen over compliance)
     -> DPO on all pairs vs on the half with the lowest LN-CHES; refusal rate on held-out unsafe
     prompts (greedy and sampled) before and after, over several seeds.

Run: .venv/bin/python experiments/exp3_displacement.py --out runs/experiments/exp3 --seed 0
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from alignscope.audits.data import audit_pairs
from alignscope.data.records import PairExample
from alignscope.data.tokenize import encode_response
from alignscope.diagnostics.ches import ches_filter
from alignscope.diagnostics.displacement import mass_gainers
from alignscope.lab.experiment import parse_args, pyplot, save_figure
from alignscope.models.scoring import sequence_logps
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
    single_token_pairs,
)
from alignscope.world.gold import refusal_rate
from alignscope.world.language import (
    AFFIRM_EMPHATIC,
    AFFIRM_PLAIN,
    NEGATE_EMPHATIC,
    NEGATE_PLAIN,
    default_world,
    parse_response,
)
from alignscope.world.pretrain import pretrained_lab_model

AFFIRM = AFFIRM_PLAIN + AFFIRM_EMPHATIC
ANSWERS = AFFIRM + NEGATE_PLAIN + NEGATE_EMPHATIC


def train_cfg(method: str, out: Path, **kw) -> TrainConfig:
    return build_config(TrainConfig, {"method": method, "data": "<memory>", "output_dir": str(out), "max_length": 96,
                                      "max_prompt_length": 48, "progress": False, **kw})


def quiet(*_a, **_k) -> None:
    pass


@torch.no_grad()
def first_token_probs(model, tok, prompt) -> torch.Tensor:
    """The model's next-token distribution at the first response position of `prompt`."""
    ids = encode_response(tok, prompt, "x").prompt_ids
    return torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)


def single_token(sft, tok, world, out: Path, quick: bool, seed: int, lr: float, log) -> dict:
    """Part A: single-prompt single-token DPO (30 epochs at `lr`) for ordered pairs of answer words.

    "Opposite" tokens are all eight answer words of the other meaning, trained or not: the paper's
    claim is about tokens the data never mentions."""
    words = ("yes", "sure", "no") if quick else ANSWERS
    prompts = {t: p.prompt for t in (True, False) for p in single_token_pairs(world, 16, seed=seed) if p.meta["truth"] == t}
    ids = {w: tok(w)["input_ids"][0] for w in ANSWERS}
    W = sft.get_output_embeddings().weight.detach().double()
    rows = []
    for c in words:
        for r in words:
            if c == r:
                continue
            prompt = prompts[c in AFFIRM]  # y+ is a correct answer to its prompt
            model = copy.deepcopy(sft)
            before = first_token_probs(model, tok, prompt)
            train(train_cfg("dpo", out / "single", batch_size=1, epochs=30, lr=lr, beta=0.1, scheduler="constant", seed=seed),
                  train_examples=[PairExample(prompt, c, r)], model=model, tokenizer=tok, log=quiet, overwrite=True)
            after = first_token_probs(model, tok, prompt)
            opposite = [w for w in ANSWERS if (w in AFFIRM) != (c in AFFIRM)]
            gain = {w: float(after[ids[w]] - before[ids[w]]) for w in opposite}
            best = max(gain, key=gain.get)
            gainers = [(tok.decode([i]).strip(), g) for i, g in mass_gainers(before.numpy(), after.numpy(), top_k=3)]
            wc, wr = W[ids[c]], W[ids[r]]
            rows.append({"chosen": c, "rejected": r, "same_meaning": (c in AFFIRM) == (r in AFFIRM),
                         "p_chosen_before": float(before[ids[c]]), "p_chosen_change": float(after[ids[c]] - before[ids[c]]),
                         "p_opposite_change": sum(gain.values()), "opposite_best": best, "opposite_best_gain": gain[best],
                         "unembedding_ches": float(wc @ (wr - wc)), "unembedding_cos": float(wc @ wr / (wc.norm() * wr.norm())),
                         "top_gainers": gainers})
    fell = [r for r in rows if r["p_chosen_change"] < 0]
    same = [r for r in rows if r["same_meaning"]]
    ches_v = np.array([r["unembedding_ches"] for r in rows])
    change = np.array([r["p_chosen_change"] for r in rows])
    summary = {"lr": lr, "epochs": 30, "pairs": len(rows), "same_meaning_pairs": len(same), "chosen_fell": len(fell),
               "fall_range": [float(-max(r["p_chosen_change"] for r in fell)), float(-min(r["p_chosen_change"] for r in fell))] if fell else None,
               "opposite_word_gained": sum(r["opposite_best_gain"] > 0 for r in rows),
               "opposite_word_gained_same_meaning": sum(r["opposite_best_gain"] > 0 for r in same),
               "opposite_word_gained_where_chosen_fell": sum(r["opposite_best_gain"] > 0 for r in fell),
               "opposite_total_gained": sum(r["p_opposite_change"] > 0 for r in rows),
               "largest_opposite_gain": max((r["opposite_best_gain"], f"{r['chosen']} over {r['rejected']}: {r['opposite_best']}") for r in rows),
               "pearson_unembedding_ches_vs_change": float(np.corrcoef(ches_v, change)[0, 1])}
    log(f"   lr {lr:g}: pi(y+) fell in {len(fell)}/{len(rows)} pairs; an opposite answer word gained mass in {summary['opposite_word_gained']} "
        f"({summary['opposite_word_gained_same_meaning']} of the {len(same)} same-meaning pairs); "
        f"Pearson(<W+, W- - W+>, change of pi(y+)) = {summary['pearson_unembedding_ches_vs_change']:+.2f}")
    return {"rows": rows, "summary": summary}


def chosen_change(sft, tok, pairs: list[PairExample], out: Path, seed: int) -> float:
    """Mean change of log pi(y+|x) on `pairs` after one DPO epoch on them."""
    model = copy.deepcopy(sft)
    prompts, chosen = [p.prompt for p in pairs], [p.chosen for p in pairs]
    before = sequence_logps(model, tok, prompts, chosen)
    train(train_cfg("dpo", out, batch_size=4, epochs=1, lr=1e-3, beta=0.1, seed=seed), train_examples=pairs, model=model, tokenizer=tok, log=quiet,
          overwrite=True)
    return float((sequence_logps(model, tok, prompts, chosen) - before).mean())


def ches_ordering(sft, tok, world, out: Path, seed: int, log) -> dict:
    """Part B: subsets at rising LN-CHES and at rising edit-distance quantiles, one DPO epoch each."""
    n = 40
    pool = (refusal_pairs(world, n, seed=seed, similar=True) + refusal_pairs(world, n, seed=seed + 1, similar=False)
            + refusal_opener_pairs(world, n, seed=seed + 2) + pairwise_data(world, 2 * n, seed=seed + 3))
    rows = audit_pairs(sft, tok, pool, progress=False).rows
    bins = 5
    result = {"pool": len(pool), "bins": bins}
    for key in ("ln_ches", "edit_distance"):
        order = np.argsort([r[key] for r in rows], kind="stable")
        # Edit distance runs the other way from similarity: bin 0 is always the most *dissimilar* pairs.
        if key == "edit_distance":
            order = order[::-1]
        changes = [chosen_change(sft, tok, [pool[i] for i in part], out / f"{key}_{b}", seed) for b, part in enumerate(np.array_split(order, bins))]
        rho = float(np.corrcoef(np.arange(bins), np.argsort(np.argsort(changes)))[0, 1])
        result[key] = {"chosen_change_by_bin": changes, "spearman_bin_vs_change": rho}
        log(f"   {key:>13} bins (low -> high similarity): " + " ".join(f"{c:+.2f}" for c in changes) + f"   Spearman {rho:+.2f}")
    return result


def refusal_rates(model, tok, prompts) -> dict:
    greedy = generate(model, tok, prompts, GenerationConfig(max_new_tokens=32, do_sample=False, n=1))
    sampled = generate(model, tok, prompts, GenerationConfig(max_new_tokens=32, do_sample=True, n=8, seed=0))
    return {"greedy": refusal_rate([prompts[i] for i in greedy.prompt_index], greedy.texts),
            "sampled": refusal_rate([prompts[i] for i in sampled.prompt_index], sampled.texts),
            "sampled_compliance": float(np.mean([parse_response(t).compliance for t in sampled.texts])),
            "example": greedy.texts[0]}


def refusal_filter(sft, tok, world, out: Path, seeds: list[int], lr: float, epochs: int, log) -> dict:
    """Part C: DPO on refusal data with and without the CHES filter; refusal rate on held-out unsafe prompts."""
    unsafe = [p.prompt for p in prompt_data(world, 48, seed=1000, kinds=["howto"], unsafe=True)]
    start = refusal_rates(sft, tok, unsafe)
    log(f"   SFT model: refusal rate {start['greedy']:.0%} greedy, {start['sampled']:.0%} sampled")
    runs = []
    for s in seeds:
        pairs = refusal_opener_pairs(world, 96, seed=s) + refusal_pairs(world, 96, seed=s + 7, similar=False)
        ln = [r["ln_ches"] for r in audit_pairs(sft, tok, pairs, progress=False).rows]
        keep, _ = ches_filter(ln, drop_fraction=0.5)
        for name, subset in (("all", pairs), ("ches_filtered", [pairs[i] for i in keep])):
            model = copy.deepcopy(sft)
            train(train_cfg("dpo", out / f"refusal_{name}", batch_size=8, epochs=epochs, lr=lr, beta=0.1, seed=s),
                  train_examples=subset, model=model, tokenizer=tok, log=quiet, overwrite=True)
            rates = refusal_rates(model, tok, unsafe)
            runs.append({"seed": s, "data": name, "pairs": len(subset), "two_refusal_share": float(np.mean([p.meta["change"] == "rude_opener" for p in subset])), **rates})
            log(f"   seed {s} {name:>13} ({len(subset)} pairs): refusal {rates['greedy']:.0%} greedy, {rates['sampled']:.0%} sampled  e.g. {rates['example'][:60]!r}")
    mean = {name: {k: float(np.mean([r[k] for r in runs if r["data"] == name])) for k in ("greedy", "sampled", "sampled_compliance")} for name in ("all", "ches_filtered")}
    return {"settings": {"lr": lr, "epochs": epochs, "beta": 0.1, "batch_size": 8, "drop_fraction": 0.5, "pairs": "96 refusal_opener_pairs + 96 refusal_pairs(similar=False)"},
            "sft": start, "runs": runs, "mean": mean,
            "filter_kept_more_refusal_every_seed": all(
                next(r for r in runs if r["seed"] == s and r["data"] == "ches_filtered")["sampled"]
                > next(r for r in runs if r["seed"] == s and r["data"] == "all")["sampled"] for s in seeds)}


def run(out: str | Path, seed: int = 0, quick: bool = False, log=print) -> dict:
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    world = default_world(0)  # the world the lab model was pretrained on
    base, tok = pretrained_lab_model(size="tiny", seed=0, progress=False)
    sft = copy.deepcopy(base)
    log("SFT of the lab's tiny model on good responses (refusals for unsafe prompts)")
    train(train_cfg("sft", work / "sft", batch_size=16, max_steps=60, lr=1e-3, seed=seed), train_examples=sft_data(world, 480, seed=seed),
          model=sft, tokenizer=tok, log=quiet)
    results: dict = {"seed": seed, "quick": quick}
    log(f"[{time.time() - t0:5.0f}s] A. single-token DPO on one prompt: does pi(y+) fall, and where does the mass go?")
    results["A_single_token"] = single_token(sft, tok, world, work, quick, seed, lr=2e-5, log=log)
    if not quick:  # the same pairs trained 5x harder: pi(y+) falls, and the distribution flattens
        results["A_single_token_lr1e-4"] = single_token(sft, tok, world, work, quick, seed, lr=1e-4, log=log)
    if not quick:  # tests/diagnostics/test_ches_predicts_displacement.py is the small version of B
        log(f"[{time.time() - t0:5.0f}s] B. one DPO epoch per subset: subsets by LN-CHES vs by edit distance")
        results["B_ordering"] = ches_ordering(sft, tok, world, work, seed, log)
    log(f"[{time.time() - t0:5.0f}s] C. refusal data: DPO on all pairs vs on the CHES-filtered half")
    seeds = [seed, seed + 1] if quick else [seed, seed + 1, seed + 2, seed + 3]
    results["C_refusal"] = refusal_filter(sft, tok, world, work, seeds, lr=1e-4, epochs=3, log=log)
    results["seconds"] = round(time.time() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out)
    log(format_table(results))
    return results


def plot(r: dict, out: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    rows = r["A_single_token"]["rows"]
    for same, col, label in ((True, "C0", "y- same meaning as y+"), (False, "C3", "y- opposite meaning")):
        sel = [x for x in rows if x["same_meaning"] == same]
        ax[0].scatter([x["unembedding_ches"] for x in sel], [x["p_chosen_change"] for x in sel], color=col, label=label)
    ax[0].axhline(0, color="k", lw=0.5)
    ax[0].set(xlabel="<W_y+, W_y- - W_y+> (single-token CHES)", ylabel="change of pi(y+) after DPO", title="A. single-token DPO")
    ax[0].legend(fontsize=8)
    b = r.get("B_ordering")
    if b:
        xs = np.arange(b["bins"])
        ax[1].plot(xs, b["ln_ches"]["chosen_change_by_bin"], "o-", label="bins by LN-CHES")
        ax[1].plot(xs, b["edit_distance"]["chosen_change_by_bin"], "s--", label="bins by edit-distance similarity")
        ax[1].legend(fontsize=8)
    ax[1].set(xlabel="bin (low -> high similarity)", ylabel="mean change of log pi(y+|x)", title="B. what predicts displacement")
    c = r["C_refusal"]
    names = ["SFT", "DPO all pairs", "DPO CHES-filtered"]
    for k, (key, off) in enumerate((("greedy", -0.2), ("sampled", 0.2))):
        vals = [c["sft"][key], c["mean"]["all"][key], c["mean"]["ches_filtered"][key]]
        ax[2].bar(np.arange(3) + off, vals, width=0.4, label=f"refusal rate ({key})")
    ax[2].set_xticks(np.arange(3), names)
    ax[2].set(ylim=(0, 1.05), title=f"C. refusal on held-out unsafe prompts (mean of {len(c['runs']) // 2} seeds)")
    ax[2].legend(fontsize=8)
    save_figure(fig, out / "displacement.png")


def format_single(a: dict) -> str:
    fall = "-" if a["fall_range"] is None else f"{a['fall_range'][0]:.2f} to {a['fall_range'][1]:.2f}"
    gain, where = a["largest_opposite_gain"]
    return (f"A. single-token DPO, lr {a['lr']:g}: pi(y+) fell in {a['chosen_fell']}/{a['pairs']} pairs (by {fall}); an opposite answer word "
            f"gained mass in {a['opposite_word_gained']} ({a['opposite_word_gained_same_meaning']}/{a['same_meaning_pairs']} same-meaning pairs, "
            f"{a['opposite_word_gained_where_chosen_fell']} where pi(y+) fell; largest {gain:+.3f}, {where}); "
            f"Pearson(<W+, W- - W+>, change) = {a['pearson_unembedding_ches_vs_change']:+.2f}")


def format_table(r: dict) -> str:
    b, c = r.get("B_ordering"), r["C_refusal"]
    lines = [
        "",
        *(format_single(r[k]["summary"]) for k in ("A_single_token", "A_single_token_lr1e-4") if k in r),
        "B. skipped (quick)" if b is None else f"B. Spearman(bin, change of log pi(y+)): LN-CHES {b['ln_ches']['spearman_bin_vs_change']:+.2f}, "
        f"edit distance {b['edit_distance']['spearman_bin_vs_change']:+.2f}",
        f"C. refusal rate ({len(c['runs']) // 2} seeds)      greedy  sampled  compliance(sampled)",
        f"   SFT                          {c['sft']['greedy']:6.0%}  {c['sft']['sampled']:7.0%}  {c['sft']['sampled_compliance']:7.0%}",
    ]
    for name in ("all", "ches_filtered"):
        m = c["mean"][name]
        lines.append(f"   DPO {name:<25}{m['greedy']:6.0%}  {m['sampled']:7.0%}  {m['sampled_compliance']:7.0%}")
    lines.append(f"   CHES filter kept more refusal on every seed: {c['filter_kept_more_refusal_every_seed']}")
    lines.append(f"({r['seconds']}s)")
    return "\n".join(lines)


def main() -> None:
    args = parse_args(__doc__, "exp3")
    run(args.out, seed=args.seed, quick=args.quick)


if __name__ == "__main__":
    main()
