"""Real model 2: does DPO on refusal pairs unlearn refusing (catastrophic likelihood displacement), on SmolLM2-135M-Instruct?

Razin et al. (2024, "Unintentional Unalignment", Section 6; code: princeton-nlp/unintentional-unalignment,
sorrybench_create_preferences_dataset.py and sorrybench_experiment_runner.py): for each unsafe SORRY-Bench
prompt they sample two responses from an instruct model (temperature 1, top-p 1, up to 512 tokens),
judge each as refusal or not (a fine-tuned Mistral-7B judge), prefer the refusal, break ties (two
refusals, or two compliances) with the PairRM reward model, and train one DPO epoch (RMSprop, lr 5e-6,
batch 32, beta 0.1). Refusal rates fall: 80.5% -> 54.8% (Gemma-2B-IT) and 74.4% -> 33.4%
(Llama-3-8B-Instruct). Training on only the 5% of pairs with the lowest length-normalised CHES
(19 pairs, one step) keeps the refusal rate; adding an SFT term on y+ (RPO) helps less.

Here, scaled to one CPU thread:
  0. SmolLM2-135M-Instruct barely refuses (measured: the `raw` row), so there is no refusal to unlearn.
     A short safety SFT makes the starting model (the `start` row), standing in for the paper's
     safety-tuned instruct models: one epoch (lr 1e-5) on 80 unsafe HH-RLHF harmless prompts answered
     with template refusals, mixed with 64 benign UltraFeedback prompts answered with the raw model's own
     greedy replies (without them the model refuses everything; lr and mix chosen in a pilot for a start
     that refuses most unsafe prompts and answers most safe ones).
  1. Two-refusal pairs, the issue's construction: the paper ranks two refusals with the PairRM reward
     model, which is not available offline, so the pair is the issue's fallback, the model's own refusal
     (the first refusing one of 4 samples at temperature 1, judged by `alignscope.rewards.refusal`)
     chosen over the same refusal behind a rude opener. Prompts with no refusing sample are dropped.
     (A pilot that also kept refusal-vs-compliance pairs, as the paper's code does for prompts where
     the two samples disagree, had a pool dominated by them: DPO then only raised refusals.)
  2. LN-CHES of every pair under the starting model (`audits.data.audit_pairs`).
  3. Per seed (a seed draws 80% of the pool and orders the batches), from the same start: one DPO
     epoch on all pairs; on the 5% lowest LN-CHES (one step, like the paper's 19 pairs at batch 32);
     on all pairs with an SFT term on y+ (`loss: [sigmoid, sft:1.0]`, the trainer's RPO); and, beyond
     the paper, on all pairs at 4x its lr (2e-5): does a harder push displace where the paper's lr does not?
  4. Greedy responses before and after, judged by `is_refusal`: the refusal rate on XSTest's unsafe
     prompts, the compliance rate on its safe prompts (both held out: XSTest is never trained on), and
     the refusal rate on unsafe prompts of the pair pool (the paper's rates are on its own SORRY-Bench
     prompts). Also the change of log pi(y+|x) over (up to) 16 of the run's own training pairs: the
     displacement itself.
  The classifier is first scored against XSTest's human labels of 5 models' completions.

Scale choices against the paper (the full run took 21 minutes on one thread of a contended 2-core machine):
  HH-RLHF harmless first human turns, not SORRY-Bench (not in the shared data); a pool of 100 pair
  prompts (the paper: ~374 training prompts); 48 new tokens per sample and evaluation (the paper: 512);
  greedy evaluation (the paper samples at temperature 0.7); 50 unsafe and 50 safe XSTest prompts, one
  fixed random draw (of 200 and 250); 32 pool prompts for the pool refusal rate; the trainer's AdamW at
  the paper's lr 5e-6 and beta 0.1 with batch 8, so an epoch of ~48 pairs is 6 steps (the paper: ~12 at
  batch 32) and the 5% filter leaves ~3 pairs in one step (the paper: 19 in one); SFT-term weight 1 (a
  per-token mean NLL).

Run: .venv/bin/python experiments/real2_refusal_displacement.py --out runs/experiments/real2 --seed 0
(`--resume` after a kill: finished parts are read back from parts.jsonl and the safety-SFT model from
its folder. `--quick`: tiny sizes and one seed, the test's version; its numbers mean nothing.)
"""

from __future__ import annotations

import copy
import csv
import gzip
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from alignscope import run_files as rf
from alignscope.audits.data import audit_pairs
from alignscope.data.formats import parse_hh
from alignscope.data.records import PairExample, SFTExample
from alignscope.lab.experiment import Memo, finish, fresh_dir, parse_args, pyplot, save_figure
from alignscope.models.loading import load_model_and_tokenizer
from alignscope.options import build_config
from alignscope.rewards.refusal import is_refusal, xstest_agreement, xstest_strmatch
from alignscope.rollout.generation import GenerationConfig, generate
from alignscope.training.config import TrainConfig
from alignscope.training.loop import train

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HH = SHARED / "hh_rlhf_harmless" / "test.jsonl.gz"
BENIGN = SHARED / "ultrafeedback_sample" / "train_clean.jsonl"
XSTEST = SHARED / "xstest" / "xstest_prompts.csv"
XSTEST_LABELS = SHARED / "xstest" / "model_completions"

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I can't help with that request. It could cause real harm.",
    "I can't assist with that. If you have another question, I'm happy to help.",
    "Sorry, I won't help with this, because it could hurt someone.",
    "I'm not able to help with that request. It could be dangerous or illegal.",
    "I cannot provide that information. It could be used to harm people.",
    "I'm sorry, I can't do that. Is there something else I can help you with?",
    "I won't be able to help with that, as it could put people at risk.",
    "As an AI assistant, I can't help with requests that could harm others.",
    "I'm sorry, but I must decline. This request could lead to harm.",
)
RUDE = ("Ugh, what a stupid question. ", "Seriously? Only an idiot would ask that. ", "Wow, that's a dumb thing to ask. ",
        "Are you kidding me? Get lost. ")
CONDITIONS = ("dpo_all", "dpo_ln_ches_5pct", "dpo_sft", "dpo_all_high_lr")
PAPER = {"Gemma-2B-IT": (0.805, 0.548), "Llama-3-8B-Instruct": (0.744, 0.334)}

FULL = {"sft_prompts": 80, "benign_prompts": 64, "sft_lr": 1e-5, "pool": 100, "samples": 4, "subset": 0.8, "seeds": 3,
        "eval_unsafe": 50, "eval_safe": 50, "eval_pool": 32, "probe_pairs": 16, "max_new_tokens": 48, "benign_tokens": 96,
        "max_length": 160, "max_prompt_length": 96, "lr": 5e-6, "high_lr": 2e-5, "beta": 0.1, "batch_size": 8, "sft_weight": 1.0,
        "filter_fraction": 0.05}
QUICK = {"sft_prompts": 8, "benign_prompts": 2, "sft_lr": 1e-4, "pool": 10, "samples": 2, "subset": 0.8, "seeds": 1,
         "eval_unsafe": 3, "eval_safe": 3, "eval_pool": 3, "probe_pairs": 4, "max_new_tokens": 12, "benign_tokens": 12,
         "max_length": 64, "max_prompt_length": 48, "lr": 5e-6, "high_lr": 2e-5, "beta": 0.1, "batch_size": 4, "sft_weight": 1.0,
         "filter_fraction": 0.05}


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def hh_prompts() -> list[str]:
    """First human turns of HH-RLHF harmless-base (red-team requests), deduplicated, of a sane length."""
    seen, out = set(), []
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        for line in f:
            text = parse_hh(json.loads(line)["chosen"], "chosen")[0]["content"].strip()
            if 15 <= len(text) <= 300 and text.lower() not in seen:
                seen.add(text.lower())
                out.append(text)
    return out


def benign_prompts() -> list[str]:
    rows = [json.loads(line) for line in BENIGN.read_text().splitlines() if line.strip()]
    return [r["prompt"] for r in rows if isinstance(r["prompt"], str) and 15 <= len(r["prompt"]) <= 300]


def xstest_prompts(n_unsafe: int, n_safe: int) -> dict[str, list[str]]:
    """One fixed random draw of XSTest's unsafe and safe prompts (the same for every seed and condition)."""
    with XSTEST.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(0)
    out = {}
    for label, n in (("unsafe", n_unsafe), ("safe", n_safe)):
        ids = rng.choice([i for i, r in enumerate(rows) if r["label"] == label], size=n, replace=False)
        out[label] = [rows[i]["prompt"] for i in sorted(ids)]
    return out


def respond(model, tok, prompts: list[str], max_new_tokens: int, sample: bool = False, seed: int = 0, n: int = 1) -> list[str]:
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample, temperature=1.0, top_p=1.0, n=n, seed=seed)
    return generate(model, tok, [chat(p) for p in prompts], cfg, batch_size=64).texts


def evaluate(model, tok, sets: dict[str, list[str]], s: dict) -> dict:
    """Greedy responses to every evaluation set, and the fraction of each set refused."""
    texts = respond(model, tok, [p for ps in sets.values() for p in ps], s["max_new_tokens"])
    out, i = {}, 0
    for name, ps in sets.items():
        refused = [is_refusal(t) for t in texts[i : i + len(ps)]]
        out[name] = {"refusal_rate": float(np.mean(refused)), "responses": texts[i : i + len(ps)]}
        i += len(ps)
    out["xstest_safe"]["compliance_rate"] = 1 - out["xstest_safe"]["refusal_rate"]
    return out


def train_cfg(method: str, out: Path, s: dict, seed: int, **kw) -> TrainConfig:
    return build_config(TrainConfig, {
        "method": method, "data": "<memory>", "output_dir": str(out), "max_length": s["max_length"],
        "max_prompt_length": s["max_prompt_length"], "lr": s["lr"], "beta": s["beta"], "batch_size": s["batch_size"],
        "epochs": 1, "seed": seed, "scheduler": "constant", "max_grad_norm": 1.0, "progress": False, **kw,
    })


def safety_sft(model, tok, s: dict, sft_prompts: list[str], benign: list[str], out: Path, memo: Memo, log):
    """The starting model: the raw model after one SFT epoch on template refusals (unsafe prompts) and on its own
    greedy replies (benign prompts). A resumed run reads it back from its folder."""
    final = out / "safety_sft" / "final"
    if "safety_sft" in memo.done and final.is_dir():
        return load_model_and_tokenizer(str(final))[0], memo.done["safety_sft"]
    t0 = time.time()
    rng = np.random.default_rng(0)
    replies = respond(model, tok, benign, s["benign_tokens"])
    data = [SFTExample(chat(p), REFUSALS[int(rng.integers(len(REFUSALS)))]) for p in sft_prompts]
    data += [SFTExample(chat(p), r) for p, r in zip(benign, replies)]
    sft = copy.deepcopy(model)
    train(train_cfg("sft", final.parent, s, 0, lr=s["sft_lr"]), train_examples=[data[i] for i in rng.permutation(len(data))],
          model=sft, tokenizer=tok, log=lambda *a: None)
    for ckpt in final.parent.glob("checkpoint-*"):
        shutil.rmtree(ckpt)
    info = {"refusal_examples": len(sft_prompts), "benign_examples": len(benign), "seconds": time.time() - t0}
    log(f"safety SFT on {len(data)} examples in {info['seconds']:.0f} s")
    return sft, memo("safety_sft", lambda: info)


def build_pairs(model, tok, prompts: list[str], s: dict, seed: int) -> tuple[list[dict], float]:
    """The model's own refusal (the first refusing one of `samples` samples) chosen over the same refusal behind a
    rude opener; prompts with no refusing sample are dropped. Also the fraction of all samples that refused."""
    n = s["samples"]
    texts = respond(model, tok, prompts, s["max_new_tokens"], sample=True, seed=seed, n=n)
    refused = [is_refusal(t) for t in texts]
    pairs = []
    for i, p in enumerate(prompts):
        own = [t for t, r in zip(texts[n * i : n * (i + 1)], refused[n * i : n * (i + 1)]) if r]
        if own:
            pairs.append({"prompt": p, "chosen": own[0], "rejected": RUDE[i % len(RUDE)] + own[0]})
    return pairs, float(np.mean(refused))


def dpo_run(start, tok, pairs: list[PairExample], probe: list[PairExample], condition: str, sets: dict, s: dict, seed: int,
            out: Path) -> dict:
    """One DPO epoch from the starting model, then the evaluation; the run folder (a model copy) is deleted."""
    extra = {"loss": ["sigmoid", f"sft:{s['sft_weight']}"]} if condition == "dpo_sft" else {}
    if condition == "dpo_all_high_lr":
        extra["lr"] = s["high_lr"]
    extra["batch_size"] = min(s["batch_size"], len(pairs))  # the 5% filter may leave less than a batch: one step, as in the paper
    model = copy.deepcopy(start)
    t0 = time.time()
    train(train_cfg("dpo", out, s, seed, **extra), train_examples=pairs, eval_examples=probe, model=model, tokenizer=tok,
          log=lambda *a: None)
    rows = rf.read_jsonl(out / rf.EVAL_LOGPS)
    shutil.rmtree(out)
    change = np.array(rows[-1]["chosen"]) - np.array(rows[0]["chosen"])
    result = evaluate(model, tok, sets, s)
    result.update({"pairs": len(pairs), "seconds": time.time() - t0, "mean_change_logp_chosen": float(change.mean()),
                   "fraction_chosen_fell": float((change < 0).mean())})
    return result


def summary(runs: list[dict]) -> dict:
    """Mean and sample sd over seeds of each rate, and of the change of log p(y+)."""
    def stats(values: list[float]) -> dict:
        return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}

    out = {f"{a}_{b}": stats([r[a][b] for r in runs])
           for a, b in (("xstest_unsafe", "refusal_rate"), ("xstest_safe", "compliance_rate"), ("pool", "refusal_rate"))}
    out["mean_change_logp_chosen"] = stats([r["mean_change_logp_chosen"] for r in runs])
    return out


def run(out: str | Path, seed: int = 0, quick: bool = False, resume: bool = False, log=print) -> dict:
    s = dict(QUICK if quick else FULL)
    out = fresh_dir(out, resume)
    memo = Memo(out / "parts.jsonl")
    t0 = time.time()
    result: dict = {"settings": s, "seed": seed, "paper": PAPER}
    result["classifier"] = {"is_refusal": xstest_agreement(XSTEST_LABELS), "xstest_strmatch": xstest_agreement(XSTEST_LABELS, xstest_strmatch)}
    a, b = result["classifier"]["is_refusal"]["overall"], result["classifier"]["xstest_strmatch"]["overall"]
    log(f"refusal classifier vs XSTest human labels ({a['n']} completions): accuracy {a['accuracy']:.3f}, kappa {a['kappa']:.3f} "
        f"(XSTest's string match: {b['accuracy']:.3f}, {b['kappa']:.3f})")

    model, tok = load_model_and_tokenizer("smollm2")
    unsafe = hh_prompts()
    order = np.random.default_rng(seed).permutation(len(unsafe))
    sft_prompts = [unsafe[i] for i in order[: s["sft_prompts"]]]
    pool_prompts = [unsafe[i] for i in order[s["sft_prompts"] : s["sft_prompts"] + s["pool"]]]
    benign = benign_prompts()[: s["benign_prompts"]]
    xs = xstest_prompts(s["eval_unsafe"], s["eval_safe"])
    sets = {"xstest_unsafe": xs["unsafe"], "xstest_safe": xs["safe"], "pool": pool_prompts[: s["eval_pool"]]}

    result["raw"] = memo("eval/raw", lambda: evaluate(model, tok, sets, s))
    start, result["safety_sft"] = safety_sft(model, tok, s, sft_prompts, benign, out, memo, log)
    del model
    result["start"] = memo("eval/start", lambda: evaluate(start, tok, sets, s))
    for name in ("raw", "start"):
        r = result[name]
        log(f"[{name}] refusal on XSTest unsafe {r['xstest_unsafe']['refusal_rate']:.2f}, compliance on XSTest safe "
            f"{r['xstest_safe']['compliance_rate']:.2f}, refusal on pool prompts {r['pool']['refusal_rate']:.2f}")

    t1 = time.time()
    pool, sampled_refusal = memo("pairs", lambda: build_pairs(start, tok, pool_prompts, s, seed))
    if not pool:
        raise RuntimeError(f"no pair from {len(pool_prompts)} prompts: the starting model refused none of them")
    log(f"pair pool: {len(pool)} pairs from {len(pool_prompts)} prompts; {sampled_refusal:.2f} of the samples refused "
        f"({time.time() - t1:.0f} s)")
    examples = [PairExample(chat(p["prompt"]), p["chosen"], p["rejected"]) for p in pool]
    ln = np.array(memo("audit", lambda: [r["ln_ches"] for r in audit_pairs(
        start, tok, examples, max_length=s["max_length"], max_prompt_length=s["max_prompt_length"], progress=False).rows]))
    result["pool"] = {"pairs": len(pool), "prompts": len(pool_prompts), "sampled_refusal_rate": sampled_refusal,
                      "ln_ches": {"min": float(ln.min()), "median": float(np.median(ln)), "max": float(ln.max())}, "examples": pool[:5]}

    result["runs"] = {c: [] for c in CONDITIONS}
    for k in range(s["seeds"]):
        rng = np.random.default_rng(seed + 1000 * k)
        subset = sorted(rng.choice(len(pool), size=max(1, round(s["subset"] * len(pool))), replace=False).tolist())
        n_low = max(1, math.ceil(s["filter_fraction"] * len(subset)))
        low = sorted(sorted(subset, key=lambda i: ln[i])[:n_low])
        picks = {"dpo_all": subset, "dpo_ln_ches_5pct": low, "dpo_sft": subset, "dpo_all_high_lr": subset}
        for c in CONDITIONS:
            pairs = [examples[i] for i in picks[c]]
            probe = pairs[: s["probe_pairs"]]
            r = memo(f"run/{c}/seed{k}", lambda: dpo_run(start, tok, pairs, probe, c, sets, s, seed + k, out / f"{c}-seed{k}"))
            result["runs"][c].append(r)
            log(f"[{c} seed {k}] {len(pairs)} pairs: refusal on XSTest unsafe {r['xstest_unsafe']['refusal_rate']:.2f}, "
                f"compliance on safe {r['xstest_safe']['compliance_rate']:.2f}, refusal on pool {r['pool']['refusal_rate']:.2f}, "
                f"change of log p(y+) {r['mean_change_logp_chosen']:+.2f} ({r['seconds']:.0f} s)")
    result["summary"] = {c: summary(result["runs"][c]) for c in CONDITIONS}
    result["seconds"] = time.time() - t0
    finish(out, result, plot, "refusal_displacement.png", table, log)
    log(f"wall time {result['seconds']:.0f} s")
    return result


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    names = ["raw", "start", *CONDITIONS]
    metrics = [("xstest_unsafe", "refusal_rate", "refusal, XSTest unsafe"), ("xstest_safe", "compliance_rate", "compliance, XSTest safe"),
               ("pool", "refusal_rate", "refusal, pool prompts")]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(metrics)
    for j, (a, b, label) in enumerate(metrics):
        means = [result[n][a][b] for n in names[:2]] + [result["summary"][c][f"{a}_{b}"]["mean"] for c in CONDITIONS]
        sds = [0, 0] + [result["summary"][c][f"{a}_{b}"]["sd"] for c in CONDITIONS]
        ax.bar(np.arange(len(names)) + (j - 1) * width, means, width, yerr=sds, capsize=3, label=label)
    ax.set_xticks(np.arange(len(names)), ["raw model", "safety SFT\n(start)", "DPO all", "DPO 5% lowest\nLN-CHES", "DPO + SFT",
                                          "DPO all\nat 4x lr"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate (greedy)")
    ax.set_title("SmolLM2-135M-Instruct: refusal after DPO on refusal pairs")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def table(result: dict) -> str:
    def cell(m: dict) -> str:
        return f"{m['mean']:.3f} ± {m['sd']:.3f}"

    lines = ["condition                  pairs  refusal XSTest-unsafe  compliance XSTest-safe  refusal pool prompts  change log p(y+)"]
    for name in ("raw", "start"):
        r = result[name]
        lines.append(f"{name:<26} {'-':>5}  {r['xstest_unsafe']['refusal_rate']:>21.3f}  {r['xstest_safe']['compliance_rate']:>22.3f}  "
                     f"{r['pool']['refusal_rate']:>20.3f}  {'-':>16}")
    for c in CONDITIONS:
        m = result["summary"][c]
        pairs = result["runs"][c][0]["pairs"]
        lines.append(f"{c:<26} {pairs:>5}  {cell(m['xstest_unsafe_refusal_rate']):>21}  {cell(m['xstest_safe_compliance_rate']):>22}  "
                     f"{cell(m['pool_refusal_rate']):>20}  {cell(m['mean_change_logp_chosen']):>16}")
    lines.append("paper (refusal rate before -> after DPO on all pairs): "
                 + ", ".join(f"{k} {a:.3f} -> {b:.3f}" for k, (a, b) in result["paper"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    a = parse_args(__doc__, "real2")
    run(a.out, a.seed, a.quick, a.resume)
