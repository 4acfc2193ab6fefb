"""Real model 1: do pairs at higher LN-CHES percentiles displace more, on SmolLM2-135M-Instruct?

Razin et al. (2024), Figure 2 protocol, scaled to a CPU: score a pool of real preference pairs once
with the model (`audits.data.audit_pairs`: CHES, LN-CHES, edit distance, final-hidden-state inner
product), cut the pool into equal bins at rising percentiles of a score, draw a subset of equal size
from each bin, and train one DPO epoch from the same start on each subset separately. The measure is
the mean change of log pi(y+|x) over the subset's own pairs (first vs last evaluation point of the
displacement monitor). Repeated over seeds (a seed draws the subsets and orders the batches), and
for LN-CHES and the two controls. The rank correlation of bin and fall (Spearman over bins x seeds)
comes with a bootstrap interval over seeds.

Also measured: inside ONE joint DPO run on the union of the LN-CHES subsets, the per-pair Spearman
correlation of each score with the fall of log pi(y+|x): the other use a user might make of the score.

Run: .venv/bin/python experiments/real1_ches_percentiles.py --out runs/experiments/real1 --seed 0
(`--resume` after a kill: the finished subsets are read back from parts.jsonl, not retrained.
`--quick`: one dataset, 3 bins of 4 pairs, one seed, LN-CHES only: the test's version.)
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import numpy as np

from alignscope import run_files as rf
from alignscope.audits.data import audit_pairs
from alignscope.data.loader import load_data
from alignscope.lab.experiment import Memo, finish, fresh_dir, parse_args, pyplot, save_figure
from alignscope.models.loading import load_model_and_tokenizer
from alignscope.options import build_config
from alignscope.training.config import TrainConfig
from alignscope.training.loop import train

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {"hh_harmless": SHARED / "hh_rlhf_harmless" / "test.jsonl.gz", "ultrafeedback": SHARED / "ultrafeedback_sample" / "train_clean.jsonl"}
SCORES = ("ln_ches", "edit_distance", "final_inner_product")

FULL = {"datasets": ("hh_harmless", "ultrafeedback"), "pool": 320, "bins": 5, "subset": 16, "seeds": 3, "scores": SCORES,
        "max_length": 192, "max_prompt_length": 128, "lr": 2e-6, "beta": 0.1, "batch_size": 8}
QUICK = {"datasets": ("hh_harmless",), "pool": 24, "bins": 3, "subset": 4, "seeds": 1, "scores": ("ln_ches",),
         "max_length": 96, "max_prompt_length": 64, "lr": 1e-5, "beta": 0.1, "batch_size": 4}


def spearman(x, y) -> float:
    """Spearman's rho with average ranks for ties (scipy's definition)."""
    from scipy.stats import spearmanr

    rho = spearmanr(np.asarray(x, float), np.asarray(y, float)).statistic
    return float(rho) if np.isfinite(rho) else 0.0


def bootstrap_ci(falls: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of Spearman(bin, fall) when the seeds of each bin are resampled with replacement.

    `falls` is [bins, seeds]; with one seed there is nothing to resample and the interval is the point."""
    bins, seeds = falls.shape
    rng = np.random.default_rng(seed)
    x = np.repeat(np.arange(bins), seeds)
    rhos = [spearman(x, np.take_along_axis(falls, rng.integers(0, seeds, size=(bins, seeds)), axis=1).reshape(-1)) for _ in range(n_boot)]
    return float(np.percentile(rhos, 2.5)), float(np.percentile(rhos, 97.5))


def dpo_change(model, tok, pairs: list, out: Path, s: dict, seed: int, path: Path) -> np.ndarray:
    """One DPO epoch from `model`'s weights on `pairs`; the per-pair change of log pi(y+|x).

    The run folder is deleted once its log-probs are read: each holds a full model copy, and a few
    hundred of them fill a disk."""
    cfg = build_config(TrainConfig, {
        "method": "dpo", "data": str(path), "output_dir": str(out), "max_length": s["max_length"],
        "max_prompt_length": s["max_prompt_length"], "lr": s["lr"], "beta": s["beta"], "batch_size": s["batch_size"],
        "epochs": 1, "seed": seed, "scheduler": "constant", "max_grad_norm": 1.0, "progress": False,
    })
    train(cfg, train_examples=pairs, eval_examples=pairs, model=copy.deepcopy(model), tokenizer=tok, log=lambda *a: None)
    rows = rf.read_jsonl(out / rf.EVAL_LOGPS)
    shutil.rmtree(out)
    return np.array(rows[-1]["chosen"]) - np.array(rows[0]["chosen"])


def run_dataset(name: str, model, tok, s: dict, out: Path, base_seed: int, memo: Memo, log) -> dict:
    path = DATASETS[name]
    pool = load_data(str(path), on_error="skip", rejects_path=out / f"rejects-{name}.jsonl").examples[: s["pool"]]
    t0 = time.time()

    def audit() -> list[dict]:
        rows = audit_pairs(model, tok, pool, max_length=s["max_length"], max_prompt_length=s["max_prompt_length"], progress=False).rows
        return [{k: r[k] for k in ("ches", *SCORES)} for r in rows]

    rows = memo(f"{name}/audit", audit)
    log(f"[{name}] audited {len(pool)} pairs in {time.time() - t0:.0f} s")
    result: dict = {"pairs_audited": len(pool), "by_score": {}}
    joint_pairs: list[int] = []
    for score in s["scores"]:
        values = np.array([np.nan if r[score] is None else r[score] for r in rows], float)
        order = [i for i in np.argsort(values, kind="stable") if np.isfinite(values[i])]
        bins = np.array_split(np.array(order), s["bins"])
        falls = np.zeros((s["bins"], s["seeds"]))
        subsets = []
        for k in range(s["seeds"]):
            rng = np.random.default_rng(base_seed + 1000 * k)
            for b, members in enumerate(bins):
                pick = sorted(rng.choice(members, size=min(s["subset"], len(members)), replace=False).tolist())
                if score == "ln_ches" and k == 0:
                    joint_pairs += pick
                t0 = time.time()
                change = np.array(memo(f"{name}/{score}/bin{b}/seed{k}", lambda: dpo_change(
                    model, tok, [pool[i] for i in pick], out / name / score / f"bin{b}-seed{k}", s, base_seed + k, path).tolist()))
                falls[b, k] = -float(change.mean())
                subsets.append({"bin": b, "seed": k, "pairs": pick, "score_mean": float(values[pick].mean()),
                                "mean_change_logp_chosen": float(change.mean()), "fraction_chosen_fell": float((change < 0).mean())})
                log(f"[{name}] {score} bin {b} seed {k}: mean {score} {values[pick].mean():.4g}, "
                    f"mean change of log p(y+) {change.mean():+.3f} ({time.time() - t0:.0f} s)")
        x = np.repeat(np.arange(s["bins"]), s["seeds"])
        rho = spearman(x, falls.reshape(-1))
        result["by_score"][score] = {"falls": falls.tolist(), "spearman_bin_vs_fall": rho,
                                     "ci95": bootstrap_ci(falls, seed=base_seed), "subsets": subsets}
    t0 = time.time()
    change = np.array(memo(f"{name}/joint", lambda: dpo_change(model, tok, [pool[i] for i in joint_pairs], out / name / "joint", s,
                                                                 base_seed, path).tolist()))
    result["joint"] = {"pairs": len(joint_pairs), "seconds": time.time() - t0, "mean_change_logp_chosen": float(change.mean()),
                       "spearman_vs_fall": {sc: spearman([rows[i][sc] if rows[i][sc] is not None else np.nan for i in joint_pairs], -change)
                                            for sc in ("ches", *s["scores"])}}
    return result


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    names = list(result["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for score, r in result["datasets"][name]["by_score"].items():
            falls = np.array(r["falls"])
            ax.errorbar(np.arange(len(falls)), -falls.mean(1), yerr=falls.std(1), marker="o", capsize=3,
                        label=f"{score} (rho {r['spearman_bin_vs_fall']:+.2f})")
        ax.axhline(0, color="#888", lw=0.8)
        ax.set_xlabel("bin (rising percentile of the score)")
        ax.set_ylabel("mean change of log p(chosen)")
        ax.set_title(name)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def table(result: dict) -> str:
    lines = ["dataset        score                 mean change of log p(y+) per bin (low -> high)        rho [95% CI]"]
    for name, d in result["datasets"].items():
        for score, r in d["by_score"].items():
            falls = np.array(r["falls"])
            cells = " ".join(f"{-m:+.3f}" for m in falls.mean(1))
            lo, hi = r["ci95"]
            lines.append(f"{name:<14} {score:<21} {cells:<52} {r['spearman_bin_vs_fall']:+.2f} [{lo:+.2f}, {hi:+.2f}]")
        j = d["joint"]
        lines.append(f"{name:<14} joint run ({j['pairs']} pairs): per-pair Spearman with the fall: "
                     + ", ".join(f"{k} {v:+.2f}" for k, v in j["spearman_vs_fall"].items()))
    return "\n".join(lines)


def run(out: str | Path, seed: int = 0, quick: bool = False, datasets: list[str] | None = None, resume: bool = False,
        scores: list[str] | None = None, lr: float | None = None, log=print) -> dict:
    s = dict(QUICK if quick else FULL)
    if lr is not None:
        s["lr"] = lr
    if datasets:
        s["datasets"] = tuple(datasets)
    if scores:
        s["scores"] = tuple(scores)
    out = fresh_dir(out, resume)
    memo = Memo(out / "parts.jsonl")
    t0 = time.time()
    model, tok = load_model_and_tokenizer("smollm2")
    result = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()}, "seed": seed, "datasets": {}}
    for name in s["datasets"]:
        result["datasets"][name] = run_dataset(name, model, tok, s, out, seed, memo, log)
    result["seconds"] = time.time() - t0
    finish(out, result, plot, "ches_percentiles.png", table, log)
    log(f"wall time {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    def options(ap) -> None:
        ap.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), help="which datasets (default: both)")
        ap.add_argument("--scores", nargs="+", choices=SCORES, help="which scores cut the pool into bins (default: all three)")
        ap.add_argument("--lr", type=float, help="DPO learning rate (default 2e-6; more training in the same steps when raised)")

    a = parse_args(__doc__, "real1", options)
    run(a.out, a.seed, a.quick, a.datasets, a.resume, a.scores, a.lr)
