"""Real model 4: does the implicit (DPO) reward of SmolLM2-135M-Instruct generalise worse than an explicit RM?

Razin, Lin, Yao, Arora (2025), as summarised in docs/science.md ("Pitfall 3: implicit reward models
generalise worse"): an EX-RM (linear head on the last hidden state) and an IM-RM (beta*log pi/pi_ref,
beta = 0.01, i.e. DPO) trained with the Bradley-Terry loss on the same pairs from the same model;
accuracy with ties counted 1/2. On UltraFeedback, mean of six models, EX-RM vs IM-RM: 0.752 vs 0.646
in distribution and 0.665 vs 0.602 under token-level shift (paraphrase, translation). The
authors' own summary adds that the IM-RM does comparably or better under domain shift. Lin et al. (2024,
arXiv 2409.03650) measured the same direction: the DPO reward loses 3% accuracy on average (7% at
most) to an explicit RM across five shifted test sets.

Here, from SmolLM2-135M-Instruct, on the same UltraFeedback training pairs (same order, same
optimiser), per seed: one RM run (`method: rm`) and one DPO run (`method: dpo`, beta 0.01).
Both score three test sets with the library's reward sources (`ModelReward`, `ImplicitReward`)
and `audits.compare_rm` (accuracy, ties 1/2, Wilson interval):
- in-distribution: UltraFeedback eval pairs (the sample's held-out file);
- paraphrase (token-level shift): the same pairs with both responses rewritten by fixed rules that
  keep the meaning (contractions, synonyms, list and bold markup; `paraphrase`);
- HH-RLHF harmless (domain shift): Anthropic's harmless-base test pairs.
UltraFeedback pairs whose two scores tie (11% of the sample) have no correct order: they are left
out of training and of the test sets. A seed changes the batch order and the RM head's
initialisation; the pairs are the same for every seed (drawn once with --seed).

Scale (CPU, one torch thread on a 2-core machine shared with other jobs), chosen to finish in about
50 minutes (the full run measured 2,825 s: training 16 steps took 156-322 s a run, scoring the 576
test sequences ~0.3 s each, the IM-RM twice as long as it runs the policy and the reference):
- 128 training pairs, one epoch, batch 8 (16 steps), lr 1e-5 constant, both RMs; the paper trains
  on the whole of UltraFeedback;
- texts cut so that nothing is truncated later: the UltraFeedback prompt to its first 32 tokens,
  each response to its first 64 tokens (train and test alike; the paraphrase rewrites the cut text);
  HH pairs are the ones whose whole conversation fits in 144 tokens, uncut;
- 96 test pairs per set (a 95% interval of about +-0.1 per accuracy), 3 seeds.

Run: .venv/bin/python experiments/real4_implicit_vs_explicit_rm.py --out runs/experiments/real4 --seed 0
(`--resume` after a kill: each finished (RM, seed) part is read back from parts.jsonl;
`--quick`: 4 training pairs, 4 test pairs per set, one seed: the test's version.)
"""

from __future__ import annotations

import copy
import re
import shutil
import time
from pathlib import Path

import numpy as np

from alignscope import run_files as rf
from alignscope.audits.compare_rm import compare_reward_models, format_comparison, reward_pairs, set_length_bias
from alignscope.data.loader import load_data
from alignscope.data.records import PairExample
from alignscope.data.tokenize import encode_group
from alignscope.diagnostics.similarity import normalized_edit_distance
from alignscope.lab.experiment import Memo, finish, fresh_dir, parse_args, pyplot, save_figure
from alignscope.models.loading import load_model, load_model_and_tokenizer
from alignscope.models.reward_model import RewardModel
from alignscope.options import build_config
from alignscope.rewards.sources import ImplicitReward, ModelReward
from alignscope.training.config import TrainConfig
from alignscope.training.loop import train

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
UF_TRAIN = SHARED / "ultrafeedback_sample" / "train_clean.jsonl"
UF_TEST = SHARED / "ultrafeedback_sample" / "eval_clean.jsonl"
HH_TEST = SHARED / "hh_rlhf_harmless" / "test.jsonl.gz"
KINDS = {"explicit": "rm", "implicit": "dpo"}  # EX-RM: Bradley-Terry head; IM-RM: DPO's beta*log(pi/pi_ref)
SETS = ("in-distribution", "paraphrase", "hh-harmless")

PAPER = {  # docs/science.md, Pitfall 3: UltraFeedback, mean over six models; no number given for domain shift
    "in-distribution": {"explicit": 0.752, "implicit": 0.646},
    "paraphrase": {"explicit": 0.665, "implicit": 0.602},
}

FULL = {"n_train": 128, "n_test": 96, "seeds": 3, "prompt_tokens": 32, "response_tokens": 64, "hh_max_tokens": 144,
        "batch_size": 8, "epochs": 1, "lr": 1e-5, "beta": 0.01}
QUICK = {"n_train": 4, "n_test": 4, "seeds": 1, "prompt_tokens": 12, "response_tokens": 16, "hh_max_tokens": 72,
         "batch_size": 4, "epochs": 1, "lr": 1e-5, "beta": 0.01}

# --- the token-level shift: rewrites that keep the meaning and change the tokens

SWAPS = [  # both directions
    ("do not", "don't"), ("does not", "doesn't"), ("did not", "didn't"), ("is not", "isn't"), ("are not", "aren't"),
    ("was not", "wasn't"), ("cannot", "can't"), ("will not", "won't"), ("it is", "it's"), ("that is", "that's"),
    ("there is", "there's"), ("you are", "you're"), ("we are", "we're"), ("they are", "they're"), ("I am", "I'm"),
    ("I will", "I'll"), ("you will", "you'll"), ("for example", "for instance"), ("make sure", "ensure"),
    ("therefore", "thus"), ("often", "frequently"), ("usually", "typically"), ("maybe", "perhaps"), ("big", "large"),
    ("quickly", "rapidly"), ("a lot of", "lots of"), ("additionally,", "in addition,"), ("in conclusion,", "to conclude,"),
]
ONE_WAY = [("important", "essential"), ("begin", "start"), ("buy", "purchase"), ("choose", "select"),
           ("in order to", "to"), ("however,", "nevertheless,"), ("overall,", "all in all,")]
OPENERS = [("sure", "certainly"), ("certainly", "sure"), ("hello", "hi")]  # only as a response's first word


def _rules() -> tuple[re.Pattern, dict[str, str]]:
    """One alternation over every phrase, so each span is rewritten once (a swap never swaps back).
    An expanded form is contracted only before another word: "I know what it is." stays as it is."""
    table = {a.lower(): b for a, b in SWAPS + ONE_WAY} | {b.lower(): a for a, b in SWAPS}
    contractions = {a.lower() for a, b in SWAPS if "'" in b}

    def alt(phrase: str) -> str:
        body = re.escape(phrase).replace("'", "['’]")
        return body + (r"(?=\s+\w)" if phrase in contractions else r"(?!\w)")

    pattern = re.compile(r"(?<!\w)(?:" + "|".join(alt(k) for k in sorted(table, key=len, reverse=True)) + ")", re.IGNORECASE)
    return pattern, table


WORDS, TABLE = _rules()
OPENER = re.compile(r"^(\s*)(" + "|".join(a for a, _ in OPENERS) + r")(?!\w)", re.IGNORECASE)


def _cased(src: str, new: str) -> str:
    return new[0].upper() + new[1:] if src[0].isupper() and new[0].islower() else new


def paraphrase(text: str) -> str:
    """A rule-based paraphrase: contractions and synonyms swapped, bullets and numbering restyled,
    bold markup dropped, blank lines between paragraphs removed. Same meaning, other tokens."""
    openers = dict(OPENERS)
    text = OPENER.sub(lambda m: m.group(1) + _cased(m.group(2), openers[m.group(2).lower()]), text, count=1)
    text = WORDS.sub(lambda m: _cased(m.group(0), TABLE[m.group(0).lower().replace("’", "'")]), text)
    text = re.sub(r"^(\s*)([*-]) ", lambda m: m.group(1) + ("- " if m.group(2) == "*" else "* "), text, flags=re.MULTILINE)
    text = re.sub(r"^(\s*)(\d+)\. ", r"\1\2) ", text, flags=re.MULTILINE)
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", text)
    return re.sub(r"\n\s*\n", "\n", text)


def paraphrased(pairs: list[PairExample]) -> list[PairExample]:
    return [PairExample(p.prompt, paraphrase(p.chosen), paraphrase(p.rejected), p.margin, dict(p.meta, paraphrased=True)) for p in pairs]


# --- data


def clip(tok, text: str, n: int) -> str:
    """The text of its first n tokens (the text itself when shorter)."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= n else tok.decode(ids[:n])


def ultrafeedback(path: Path, tok, n: int, s: dict, rng: np.random.Generator, out: Path) -> tuple[list[PairExample], dict]:
    """n UltraFeedback pairs with distinct scores, drawn at random, cut to the scale's token budget, as a chat."""
    rows = load_data(str(path), on_error="skip", rejects_path=out / f"rejects-{path.stem}.jsonl").examples
    decisive = [p for p in rows if p.meta["metadata"]["score_chosen"] != p.meta["metadata"]["score_rejected"]]
    pairs = []
    for i in rng.permutation(len(decisive)):
        p = decisive[i]
        c, r = clip(tok, p.chosen, s["response_tokens"]), clip(tok, p.rejected, s["response_tokens"])
        if c != r:
            prompt = [{"role": "user", "content": clip(tok, p.prompt, s["prompt_tokens"])}]
            pairs.append(PairExample(prompt, c, r, None, p.meta))
        if len(pairs) == n:
            break
    return pairs, {"rows": len(rows), "score_ties_dropped": len(rows) - len(decisive)}


def hh_harmless(tok, n: int, s: dict, rng: np.random.Generator, out: Path) -> list[PairExample]:
    """n HH-RLHF harmless pairs whose conversation and longer answer fit in hh_max_tokens, uncut."""
    rows = load_data(str(HH_TEST), on_error="skip", rejects_path=out / "rejects-hh.jsonl").examples
    pairs = []
    for i in rng.permutation(len(rows)):
        p = rows[i]
        if p.chosen != p.rejected and longest(tok, p) <= s["hh_max_tokens"]:
            pairs.append(p)
        if len(pairs) == n:
            break
    return pairs


def longest(tok, p: PairExample) -> int:
    """Tokens of the prompt and the longer response, as the trainer encodes them."""
    return max(len(e.prompt_ids) + len(e.response_ids) for e in encode_group(tok, p.prompt, [p.chosen, p.rejected]))


def token_shift(tok, before: list[PairExample], after: list[PairExample]) -> dict:
    """How far the paraphrase moved the responses' tokens: share changed, mean normalised edit distance."""
    ids = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    d = [normalized_edit_distance(ids(getattr(a, k)), ids(getattr(b, k))) for a, b in zip(before, after) for k in ("chosen", "rejected")]
    return {"responses_changed": float(np.mean(np.array(d) > 0)), "mean_token_edit_distance": float(np.mean(d))}


# --- one reward model: train it, score every set, delete its folder


def train_and_score(kind: str, model, tok, train_pairs: list, sets: dict, s: dict, seed: int, out: Path, log) -> dict:
    """Train the EX-RM or IM-RM from `model` and return (chosen, rejected) rewards on every set.

    The run folder (a model copy and its optimiser state) is deleted once scored: the disk is limited."""
    t0 = time.time()
    run_dir = out / f"{kind}-seed{seed}"
    max_length = max(longest(tok, p) for p in train_pairs)
    cfg = build_config(TrainConfig, {
        "method": KINDS[kind], "data": "<memory>", "output_dir": str(run_dir), "max_length": max_length, "max_prompt_length": None,
        "lr": s["lr"], "beta": s["beta"], "batch_size": s["batch_size"], "epochs": s["epochs"], "seed": seed,
        "scheduler": "constant", "max_grad_norm": 1.0, "ref_cache_dir": str(out / "ref_cache"), "progress": False,
    })
    train(cfg, train_examples=train_pairs, model=copy.deepcopy(model), tokenizer=tok, log=lambda *a: log(f"  [{kind} seed {seed}]", *a))
    steps = rf.read_jsonl(run_dir / rf.METRICS)
    steps = [r for r in steps if "loss" in r]
    last = steps[-max(1, len(steps) // 4):]
    t_train = time.time() - t0
    if kind == "explicit":
        reward = ModelReward(RewardModel.from_pretrained(run_dir / "final"), tok)
    else:
        reward = ImplicitReward(load_model(str(run_dir / "final")), model, tok, beta=s["beta"])
    scores = {}
    for name, pairs in sets.items():
        c, r = reward_pairs(reward, pairs)
        scores[name] = [c.tolist(), r.tolist()]
    shutil.rmtree(run_dir)
    return {"scores": scores, "train_seconds": t_train, "seconds": time.time() - t0, "loss_first": steps[0]["loss"],
            "loss_last": float(np.mean([r["loss"] for r in last])),
            "train_batch_accuracy_last": float(np.mean([r["rewards/accuracies"] for r in last]))}


def summarise(parts: dict, sets: dict) -> dict:
    """Per seed the library's comparison rows; over seeds mean and sd of each accuracy, of EX - IM, and of the
    accuracy each RM loses from in-distribution to each shift."""
    per_seed, acc = [], {k: {n: [] for n in sets} for k in KINDS}
    for seed, by_kind in parts.items():
        scores = {(k, n): tuple(np.array(v) for v in by_kind[k]["scores"][n]) for k in KINDS for n in sets}
        rows = compare_reward_models(dict.fromkeys(KINDS), sets, scores=scores)
        per_seed.append({"seed": seed, "rows": rows})
        for r in rows:
            acc[r["reward"]][r["set"]].append(r["accuracy"])
    ms = lambda v: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "values": list(map(float, v))}  # noqa: E731
    a = {k: {n: np.array(v) for n, v in d.items()} for k, d in acc.items()}
    return {
        "per_seed": per_seed,
        "accuracy": {k: {n: ms(v) for n, v in d.items()} for k, d in a.items()},
        "explicit_minus_implicit": {n: ms(a["explicit"][n] - a["implicit"][n]) for n in sets},
        "drop_from_in_distribution": {k: {n: ms(a[k]["in-distribution"] - a[k][n]) for n in sets if n != "in-distribution"} for k in KINDS},
    }


def run(out: str | Path, seed: int = 0, quick: bool = False, resume: bool = False, log=print) -> dict:
    s = dict(QUICK if quick else FULL)
    out = fresh_dir(out, resume)
    memo = Memo(out / "parts.jsonl")
    t0 = time.time()
    model, tok = load_model_and_tokenizer("smollm2")
    rng = np.random.default_rng(seed)
    train_pairs, uf_train = ultrafeedback(UF_TRAIN, tok, s["n_train"], s, rng, out)
    test_pairs, uf_test = ultrafeedback(UF_TEST, tok, s["n_test"], s, rng, out)
    sets = {"in-distribution": test_pairs, "paraphrase": paraphrased(test_pairs), "hh-harmless": hh_harmless(tok, s["n_test"], s, rng, out)}
    data = {"train_pairs": len(train_pairs), "ultrafeedback_train": uf_train, "ultrafeedback_test": uf_test,
            "test_pairs": {n: len(p) for n, p in sets.items()}, "paraphrase_shift": token_shift(tok, test_pairs, sets["paraphrase"]),
            "longest_train_sequence": max(longest(tok, p) for p in train_pairs)}
    log(f"data: {data}")
    tag = "quick" if quick else f"n{s['n_train']}-t{s['n_test']}-p{s['prompt_tokens']}-r{s['response_tokens']}-lr{s['lr']:g}"
    parts: dict = {}
    for k in range(s["seeds"]):
        for kind in KINDS:
            t1 = time.time()
            parts.setdefault(seed + k, {})[kind] = part = memo(f"{tag}/data{seed}/{kind}/seed{seed + k}", lambda: train_and_score(
                kind, model, tok, train_pairs, sets, s, seed + k, out, log))
            log(f"[{time.time() - t0:5.0f}s] {kind} RM, seed {seed + k}: loss {part['loss_first']:.3f} -> {part['loss_last']:.3f}, "
                f"last-quarter batch accuracy {part['train_batch_accuracy_last']:.2f} ({time.time() - t1:.0f} s this call, {part['seconds']:.0f} s when run)")
    summary = summarise(parts, sets)
    result = {"settings": s, "seed": seed, "data": data, "paper": PAPER, **summary,
              "length_bias": {n: set_length_bias(p) for n, p in sets.items()},
              "training": {str(sd): {k: {m: v for m, v in p.items() if m != "scores"} for k, p in by_kind.items()} for sd, by_kind in parts.items()},
              "seconds": time.time() - t0}
    for row in summary["per_seed"]:
        log(f"seed {row['seed']}:\n" + format_comparison({"rows": row["rows"], "length_bias": {}}))
    finish(out, result, plot, "accuracy.png", table, log)
    log(f"wall time {result['seconds']:.0f} s")
    return result


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    acc = result["accuracy"]
    x = np.arange(len(SETS))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for j, kind in enumerate(KINDS):
        means = [acc[kind][n]["mean"] for n in SETS]
        sds = [acc[kind][n]["sd"] for n in SETS]
        ax.bar(x + (j - 0.5) * 0.38, means, 0.38, yerr=sds, capsize=3, label=f"{kind} RM (SmolLM2-135M)")
        paper = [PAPER.get(n, {}).get(kind, np.nan) for n in SETS]
        ax.scatter(x + (j - 0.5) * 0.38, paper, marker="_", s=400, color="black", zorder=3, label="paper" if j == 0 else None)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, SETS)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (ties 1/2)")
    ax.set_title("Explicit vs implicit (DPO, beta 0.01) RM, UltraFeedback-trained")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def table(r: dict) -> str:
    acc, gap = r["accuracy"], r["explicit_minus_implicit"]
    n = len(next(iter(acc["explicit"].values()))["values"])
    lines = [f"{'set':<17}{'pairs':>6}{'EX-RM':>15}{'IM-RM':>15}{'EX - IM':>15}{'paper EX':>10}{'paper IM':>10}   (mean +- sd over {n} seeds)"]
    for s in SETS:
        e, i, g, p = acc["explicit"][s], acc["implicit"][s], gap[s], r["paper"].get(s, {})
        cell = lambda d: f"{d['mean']:.3f} +- {d['sd']:.3f}"  # noqa: E731
        lines.append(f"{s:<17}{r['data']['test_pairs'][s]:>6}{cell(e):>15}{cell(i):>15}{g['mean']:>+8.3f} +- {g['sd']:.3f}"
                     f"{p.get('explicit', float('nan')):>10.3f}{p.get('implicit', float('nan')):>10.3f}")
    for kind, d in r["drop_from_in_distribution"].items():
        lines.append(f"{kind} RM accuracy lost from in-distribution: " + ", ".join(f"{s} {v['mean']:+.3f} +- {v['sd']:.3f}" for s, v in d.items()))
    sh = r["data"]["paraphrase_shift"]
    lines.append(f"paraphrase: {sh['responses_changed']:.0%} of responses changed, mean token edit distance {sh['mean_token_edit_distance']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    a = parse_args(__doc__, "real4")
    run(a.out, a.seed, a.quick, a.resume)
