"""Real model 3: which reward model is the better teacher for SmolLM2-135M-Instruct? Reward variance vs accuracy, with RLOO.

Razin et al. (2025), as docs/science.md gives it ("Reward variance"): across reward models used to train
the same policy with RLOO, the reward variance an RM induces under the initial policy predicts how fast
the proxy reward rises (Pearson 0.98), and variance together with accuracy predicts the gold-reward rise
(0.94), while accuracy alone does not; a perfectly accurate RM (the gold reward with half the prompts
scaled by 0.001) is the slowest teacher. Experiment 2 runs this on the lab's tiny model; this is the same
protocol (same teachers, same audit, same fits) on SmolLM2-135M-Instruct with a real task.

The task, measured before choosing it (32 prompts x 8 samples at temperature 1, 16 new tokens):
GSM8K is too sparse (1.6% of SmolLM2's samples right, measured in an earlier session), and so are
additions of a two-digit and a one-digit number (1.2% exact, 9% of prompts ever right). Single-number additions asked as a chat,
"What is a + b? Answer with the number only." with a, b in 1..9, give a gold mean of 0.30, 17% exact
answers, a right answer among the 8 samples for 75% of prompts and reward variance on every prompt
(mean per-prompt variance 0.116); without "Answer with the number only." 0.20 / 9% / 47%. The run uses
a, b in 1..12 (144 prompts: 96 to train on, 48 held out). The gold reward is programmatic with partial
credit: the last integer in the response is the answer; 1 if it is the sum, else 0.5 x (1 - |error| /
sum) floored at 0, and 0 when the response holds no number.

Teachers, as in Experiment 2 (`world.gold.ScaledGold` and `NoisyGold` wrap any gold callable):
  - gold: perfectly accurate, the most variance it can have;
  - gold x 0.001 on 50%, 90% or all of the prompts (a fixed hash of the prompt picks them): perfectly
    accurate, low variance on those prompts;
  - gold + noise: a fixed Gaussian perturbation per (prompt, response), sd 0.1, 0.3 or 1 (the gold
    reward's on-policy per-prompt sd is about 0.35): less accurate, more variance.
Before training, `audits.reward_model.audit_reward_models` on the initial policy (32 training prompts
x 8 samples) gives each teacher's on-policy accuracy (against gold, over sample pairs gold does not tie)
and standardised and raw per-prompt variance (the teacher table's `raw_variance`), all on the same
samples. Then each teacher trains a copy of SmolLM2 with `training.rl.train_rl`
(RLOO on the teacher's raw reward); the library's held-out evaluation (`eval_prompts`, 8 samples on each
of the 48 held-out prompts) gives the proxy and gold reward halfway and at the end, and the gains are
measured against the initial policy's 8 samples per held-out prompt.

Scale (CPU, one torch thread on a 2-core machine shared with other jobs), chosen from measured timings:
loading the model 16 s; sampling 32 prompts x 8 samples of 16 tokens 15 s; 12 RLOO steps of 8 prompts x
4 samples (16 new tokens, full fine-tune) 127 s with the run's setup and final save. In that 12-step pilot
at lr 1e-5 (kl_coef 0.02) the gold teacher raised the gold reward on 48 held-out prompts (4 samples each)
from 0.30 to 0.77, so lr 1e-5 and 12 steps per run (a full
fine-tune: it already moves the gold reward in the budget, so LoRA was not tried).
7 teachers x 2 RL seeds x 12 steps, with 2 held-out evaluations a run: the full run measured 2,506 s
(42 min; the audit and the initial evaluation 117 s, each run 148-265 s, at load average 1-4). The paper
trains larger models for far longer; here a second RL seed measures the spread.

Run: .venv/bin/python experiments/real3_reward_variance.py --out runs/experiments/real3 --seed 0
(`--resume` after a kill: the audit, the initial evaluation and each finished (teacher, RL seed) run are
read back from parts.jsonl; all seed-`--seed` runs come before the second seed's. `--quick`: two teachers,
2 steps of 4 prompts x 2 samples, the test's version; its numbers mean nothing.)
"""

from __future__ import annotations

import copy
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from alignscope import run_files as rf
from alignscope.audits.reward_model import audit_reward_models, format_table
from alignscope.data.records import Prompt
from alignscope.lab.experiment import Memo, finish, fresh_dir, parse_args, pyplot, save_figure
from alignscope.models.loading import load_model_and_tokenizer
from alignscope.rewards.sources import call_reward
from alignscope.rollout.generation import GenerationConfig, generate
from alignscope.training.rl import RLConfig, train_rl
from alignscope.world.gold import NoisyGold, ScaledGold
from alignscope.world.language import prompt_content

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp2_teachers import multiple_r, pearson, scatter_gains  # noqa: E402  (the lab version's fits, reused as they are)

QUESTION = "What is {a} + {b}? Answer with the number only."
ASKED = re.compile(r"What is (\d+) \+ (\d+)\?")
NUMBER = re.compile(r"-?\d+")

PAPER = {"variance_vs_proxy_gain": 0.98, "variance_and_accuracy_vs_gold_gain": 0.94}  # docs/science.md, "Reward variance"

FULL = {"max_operand": 12, "n_train": 96, "n_eval": 48, "audit_prompts": 32, "audit_samples": 8, "eval_samples": 8,
        "steps": 12, "prompts_per_step": 8, "samples_per_prompt": 4, "max_new_tokens": 16, "lr": 1e-5, "kl_coef": 0.02,
        "rl_seeds": 2, "teachers": ["gold", "gold x0.001 on 50% of prompts", "gold x0.001 on 90% of prompts",
                                    "gold x0.001 on all prompts", "gold + noise (sd 0.1)", "gold + noise (sd 0.3)",
                                    "gold + noise (sd 1)"]}
QUICK = {"max_operand": 6, "n_train": 8, "n_eval": 4, "audit_prompts": 4, "audit_samples": 4, "eval_samples": 2,
         "steps": 2, "prompts_per_step": 4, "samples_per_prompt": 2, "max_new_tokens": 8, "lr": 1e-5, "kl_coef": 0.02,
         "rl_seeds": 1, "teachers": ["gold x0.001 on 90% of prompts", "gold + noise (sd 0.3)"]}


class ArithmeticGold:
    """The gold reward of an addition question: the last integer of the response is its answer; 1 when it
    is the sum, else 0.5 x (1 - |answer - sum| / sum) floored at 0 (partial credit for being close), and 0
    when the response holds no number. A reward source: (prompts, responses) -> rewards."""

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        return [self.score(p, r) for p, r in zip(prompts, responses)]

    @staticmethod
    def score(prompt: Prompt, response: str) -> float:
        m = ASKED.search(prompt_content(prompt))
        if m is None:
            raise ValueError(f"not an addition question: {prompt_content(prompt)!r}")
        total = int(m.group(1)) + int(m.group(2))
        found = NUMBER.findall(response.replace(",", ""))
        if not found:
            return 0.0
        answer = int(found[-1])
        return 1.0 if answer == total else 0.5 * max(0.0, 1.0 - abs(answer - total) / total)


def arithmetic_prompts(max_operand: int, n_train: int, n_eval: int, seed: int) -> tuple[list[Prompt], list[Prompt]]:
    """Every a + b with a, b in 1..max_operand as a one-turn chat, shuffled by `seed`: n_train to train on,
    the next n_eval held out (no question is in both)."""
    pairs = [(a, b) for a in range(1, max_operand + 1) for b in range(1, max_operand + 1)]
    order = np.random.default_rng(seed).permutation(len(pairs))
    chats = [[{"role": "user", "content": QUESTION.format(a=pairs[i][0], b=pairs[i][1])}] for i in order]
    if n_train + n_eval > len(chats):
        raise ValueError(f"{n_train} + {n_eval} prompts asked, {len(chats)} exist")
    return chats[:n_train], chats[n_train : n_train + n_eval]


def teachers(gold: ArithmeticGold, names: Sequence[str]) -> dict[str, Callable]:
    """The named teachers, built from the library's constructions around the gold reward."""
    every = {"gold": gold,
             "gold x0.001 on 50% of prompts": ScaledGold(gold, 0.5), "gold x0.001 on 90% of prompts": ScaledGold(gold, 0.9),
             "gold x0.001 on all prompts": ScaledGold(gold, 1.0),
             "gold + noise (sd 0.1)": NoisyGold(gold, 0.1), "gold + noise (sd 0.3)": NoisyGold(gold, 0.3),
             "gold + noise (sd 1)": NoisyGold(gold, 1.0)}
    return {n: every[n] for n in names}


def scaled_share(prompts: Sequence[Prompt], fraction: float) -> float:
    """The share of `prompts` a ScaledGold of `fraction` scales (its hash, not exactly `fraction`, picks them)."""
    probe = ScaledGold(lambda ps, rs: [1.0] * len(ps), fraction)
    return float(np.mean([v != 1.0 for v in probe(list(prompts), [""] * len(prompts))]))


def audit(rms: dict[str, Callable], model, tok, prompts: list, gold: ArithmeticGold, s: dict, seed: int, log) -> dict:
    """The library's teacher audit on the initial policy (its table carries each teacher's raw per-prompt variance)."""
    a = audit_reward_models(rms, model, tok, prompts, n=s["audit_samples"], gold=gold, max_new_tokens=s["max_new_tokens"], seed=seed)
    log(format_table(a))
    p, n = len(prompts), s["audit_samples"]
    raw = {row["name"]: row["raw_variance"] for row in a["teacher_table"]}
    gold_r = np.array([x["gold"] for x in a["samples"]]).reshape(p, n)
    return {"teacher_table": a["teacher_table"], "raw_variance": raw, "gold_mean": a["gold_mean"],
            "gold_decisive_pairs": a["gold_decisive_pairs"], "gold_exact_fraction": float(np.mean(gold_r == 1.0)),
            "prompts_with_an_exact_answer": float(np.mean((gold_r == 1.0).any(1))), "examples": a["samples"][: 2 * n : 2]}


def initial_eval(rms: dict[str, Callable], model, tok, prompts: list, gold: ArithmeticGold, s: dict, seed: int) -> dict:
    """Gold and every teacher's mean reward of the initial policy's samples on the held-out prompts."""
    ro = generate(model, tok, prompts, GenerationConfig(max_new_tokens=s["max_new_tokens"], n=s["eval_samples"], do_sample=True, seed=seed))
    flat = [prompts[i] for i in ro.prompt_index]
    return {"gold": float(call_reward(gold, flat, ro.texts).mean()),
            "proxy": {name: float(call_reward(fn, flat, ro.texts).mean()) for name, fn in rms.items()}}


def teach(name: str, fn: Callable, model, tok, train_prompts: list, eval_prompts: list, gold: ArithmeticGold, s: dict, seed: int,
          run_dir: Path) -> dict:
    """One RLOO run of a copy of `model` taught by `fn`; the library's held-out evaluation halfway and at the end.
    The run folder (a model copy) is deleted afterwards: the disk is limited."""
    t0 = time.time()
    cfg = RLConfig(algorithm="rloo", output_dir=str(run_dir), steps=s["steps"], prompts_per_step=s["prompts_per_step"],
                   samples_per_prompt=s["samples_per_prompt"], max_new_tokens=s["max_new_tokens"], lr=s["lr"], kl_coef=s["kl_coef"],
                   eval_steps=max(1, s["steps"] // 2), eval_samples=s["eval_samples"], log_completions=0, seed=seed, progress=False)
    train_rl(cfg, model=copy.deepcopy(model), tokenizer=tok, prompts=train_prompts, reward=fn, gold=gold, eval_prompts=eval_prompts,
             log=lambda *a: None)
    rows = rf.read_jsonl(run_dir / rf.METRICS)
    evals = {str(r["step"]): {"gold": r["eval/gold_mean"], "proxy": r["eval/proxy_mean"]} for r in rows if "eval/gold_mean" in r}
    steps = [r for r in rows if "reward/gold_mean" in r]
    shutil.rmtree(run_dir)
    return {"eval": evals, "train_gold_curve": [r["reward/gold_mean"] for r in steps], "train_proxy_curve": [r["reward/proxy_mean"] for r in steps],
            "kl_last": steps[-1]["kl"], "response_length_last": steps[-1]["response_length"], "seconds": time.time() - t0}


def summarise(names: Sequence[str], aud: dict, start: dict, runs: dict, s: dict) -> dict:
    """Per teacher: audit figures and mean gains over the RL seeds at each evaluation; Pearsons across teachers."""
    table = {row["name"]: row for row in aud["teacher_table"]}
    points = sorted({int(k) for r in runs.values() for x in r for k in x["eval"]})
    rows = []
    for name in names:
        done = runs.get(name, [])
        if not done:
            continue
        row = {"rm": name, "raw_variance": aud["raw_variance"][name], "variance": table[name]["mean_variance"],
               "low_variance_fraction": table[name]["low_variance_fraction"], "onpolicy_accuracy": table[name]["onpolicy_accuracy"],
               "seeds": len(done)}
        for p in points:
            g = [x["eval"][str(p)]["gold"] - start["gold"] for x in done]
            pr = [x["eval"][str(p)]["proxy"] - start["proxy"][name] for x in done]
            row[f"gold_gain@{p}"], row[f"proxy_gain@{p}"] = float(np.mean(g)), float(np.mean(pr))
            row[f"gold_gain_per_seed@{p}"] = g
        row["gold_gain"], row["proxy_gain"] = row[f"gold_gain@{points[-1]}"], row[f"proxy_gain@{points[-1]}"]
        row["train_gold_curve"] = np.mean([x["train_gold_curve"] for x in done], 0).tolist()
        rows.append(row)
    corr = {}
    if len(rows) >= 3:
        var = np.array([r["raw_variance"] for r in rows])
        std_var = np.array([r["variance"] for r in rows])
        acc = np.array([r["onpolicy_accuracy"] for r in rows])
        for p in points:
            g = np.array([r[f"gold_gain@{p}"] for r in rows])
            pg = np.array([r[f"proxy_gain@{p}"] for r in rows])
            corr[str(p)] = {"variance_vs_proxy_gain": pearson(var, pg), "standardised_variance_vs_proxy_gain": pearson(std_var, pg),
                            "variance_vs_gold_gain": pearson(var, g), "standardised_variance_vs_gold_gain": pearson(std_var, g),
                            "accuracy_vs_gold_gain": pearson(acc, g), "variance_and_accuracy_vs_gold_gain": multiple_r(g, var, acc),
                            "standardised_variance_and_accuracy_vs_gold_gain": multiple_r(g, std_var, acc)}
    return {"rows": rows, "eval_steps": points, "pearson": corr}


def run(out: str | Path, seed: int = 0, quick: bool = False, resume: bool = False, log=print) -> dict:
    s = dict(QUICK if quick else FULL)
    out = fresh_dir(out, resume)
    memo = Memo(out / "parts.jsonl")
    t0 = time.time()

    def stamp(msg: str) -> None:
        log(f"[{time.time() - t0:5.0f}s] {msg}")

    model, tok = load_model_and_tokenizer("smollm2")
    gold = ArithmeticGold()
    train_prompts, eval_prompts = arithmetic_prompts(s["max_operand"], s["n_train"], s["n_eval"], seed)
    rms = teachers(gold, s["teachers"])
    tag = "quick" if quick else (f"ops{s['max_operand']}-t{s['n_train']}-e{s['n_eval']}x{s['eval_samples']}-a{s['audit_prompts']}x{s['audit_samples']}"
                                 f"-tok{s['max_new_tokens']}")
    stamp("audit of the teachers on the initial policy")
    aud = memo(f"{tag}/data{seed}/audit", lambda: audit(rms, model, tok, train_prompts[: s["audit_prompts"]], gold, s, seed, log))
    start = memo(f"{tag}/data{seed}/initial_eval", lambda: initial_eval(rms, model, tok, eval_prompts, gold, s, seed + 1))
    stamp(f"initial policy: held-out gold {start['gold']:.3f}; audit gold {aud['gold_mean']:.3f}, exact {aud['gold_exact_fraction']:.3f}")
    rl_tag = f"{tag}/data{seed}/rloo-s{s['steps']}-p{s['prompts_per_step']}x{s['samples_per_prompt']}-lr{s['lr']:g}-kl{s['kl_coef']:g}"
    runs: dict[str, list] = {}
    for k in range(s["rl_seeds"]):
        for name, fn in rms.items():
            key = f"{rl_tag}/{name}/seed{seed + k}"
            if key not in memo.done:
                stamp(f"RLOO taught by {name}, RL seed {seed + k}")
            part = memo(key, lambda: teach(name, fn, model, tok, train_prompts, eval_prompts, gold, s, seed + k, out / f"rl-{seed + k}"))
            runs.setdefault(name, []).append(part)
            last = part["eval"][max(part["eval"], key=int)]
            log(f"   held-out gold {last['gold']:.3f} ({last['gold'] - start['gold']:+.3f}), proxy {last['proxy'] - start['proxy'][name]:+.4f};"
                f" {part['seconds']:.0f} s when run")
    summary = summarise(list(rms), aud, start, runs, s)
    result = {"settings": s, "seed": seed, "quick": quick, "paper": PAPER,
              "task": {"question": QUESTION, "train_prompts": len(train_prompts), "eval_prompts": len(eval_prompts),
                       "scaled_share_of_train_prompts": {f: scaled_share(train_prompts, f) for f in (0.5, 0.9)}},
              "initial": {"heldout_gold": start["gold"], "heldout_proxy": start["proxy"], "audit": aud},
              **summary, "seconds": time.time() - t0}
    finish(out, result, plot, "teachers.png", table, log)
    log(f"wall time {result['seconds']:.0f} s")
    return result


def plot(r: dict, path: Path) -> None:
    plt = pyplot()
    rows = r["rows"]
    fig, ax = plt.subplots(1, 4, figsize=(20, 4.2))
    last = str(r["eval_steps"][-1])
    c = r["pearson"].get(last, {})
    title = lambda key: f"Pearson {c[key]:+.2f}" if key in c else ""  # noqa: E731
    for a, key, label in ((ax[0], "raw_variance", "reward variance under the initial policy (raw)"),
                          (ax[1], "onpolicy_accuracy", "on-policy accuracy")):
        scatter_gains(a, rows, key, label, f"held-out gold gain after {last} RLOO steps")
    ax[0].set_title(title("variance_vs_gold_gain"))
    ax[0].set_xscale("symlog", linthresh=1e-4)
    ax[1].set_title(title("accuracy_vs_gold_gain"))
    ax[2].scatter([x["raw_variance"] for x in rows], [x["proxy_gain"] for x in rows])
    for x in rows:
        ax[2].annotate(x["rm"], (x["raw_variance"], x["proxy_gain"]), fontsize=7)
    ax[2].set(xlabel="reward variance (raw)", ylabel="held-out proxy gain (teacher's units)", title=title("variance_vs_proxy_gain"))
    ax[2].set_xscale("symlog", linthresh=1e-4)
    for x in rows:
        ax[3].plot(np.arange(1, len(x["train_gold_curve"]) + 1), x["train_gold_curve"], label=x["rm"])
    ax[3].set(xlabel="RLOO step", ylabel="gold reward of the training samples", title="SmolLM2-135M, a + b questions")
    ax[3].legend(fontsize=6)
    save_figure(fig, path)


def table(r: dict) -> str:
    pts = r["eval_steps"]
    head = "".join(f"{f'gold@{p}':>10}{f'proxy@{p}':>11}" for p in pts)
    lines = [f"held-out gold of the initial policy {r['initial']['heldout_gold']:.3f}; gains over RL seeds' mean",
             f"{'teacher':<32}{'raw var':>9}{'std var':>9}{'low-var':>8}{'on-acc':>8}{head}{'seeds':>6}"]
    for x in sorted(r["rows"], key=lambda x: -x["gold_gain"]):
        cells = "".join(f"{x[f'gold_gain@{p}']:>+10.3f}{x[f'proxy_gain@{p}']:>+11.4f}" for p in pts)
        lines.append(f"{x['rm']:<32}{x['raw_variance']:>9.4f}{x['variance']:>9.3f}{x['low_variance_fraction']:>8.2f}"
                     f"{x['onpolicy_accuracy']:>8.3f}{cells}{x['seeds']:>6}")
    for p, c in r["pearson"].items():
        lines.append(f"Pearson after {p} steps: variance vs proxy gain {c['variance_vs_proxy_gain']:+.2f} (paper 0.98; standardised "
                     f"{c['standardised_variance_vs_proxy_gain']:+.2f}); variance and accuracy vs gold gain "
                     f"{c['variance_and_accuracy_vs_gold_gain']:+.2f} (paper 0.94; standardised {c['standardised_variance_and_accuracy_vs_gold_gain']:+.2f}); "
                     f"variance vs gold gain {c['variance_vs_gold_gain']:+.2f}; accuracy vs gold gain {c['accuracy_vs_gold_gain']:+.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    a = parse_args(__doc__, "real3")
    run(a.out, a.seed, a.quick, a.resume)
