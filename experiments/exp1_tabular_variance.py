"""Experiment 1: with a softmax policy, low reward variance means slow optimisation (docs/science.md, "Reward variance").

Razin et al. (2025) prove that the time for the expected reward, measured by *any* reward function,
to rise by an additive constant is Omega(E_x[Var_{y~pi_ref}[r_RM(x, y)]]^(-1/3)) for general
softmax policies, and Omega(Var^(-1/2)) per prompt for tabular policies (one logit per response).
The tabular case is exact and cheap, so we check it here with pure torch: each "prompt" is a
softmax over K responses with a gold reward r_G in [-1, 1]; we run gradient ascent on the exact
expected reward E_{y~pi}[r_RM] (no sampling) and count the steps until E_{y~pi}[r_G] has risen by
`delta`. Three families of (r_RM, pi_ref):

  A. scaled RM: r_RM = c * r_G for c in [0.01, 1] (perfectly accurate; variance c^2 * Var[r_G]);
  B. concentrated reference: r_RM = r_G, pi_ref puts ever more mass on the worst response
     (variance shrinks because the policy is nearly deterministic);
  C. teachers: a perfectly accurate RM with low variance (0.05 * r_G) against inaccurate RMs with
     high variance (r_G with a fraction of its response rewards shuffled), measured on r_G.

The fitted log-log slope of steps against variance is compared with -1/2 (tabular) and -1/3.

Run: .venv/bin/python experiments/exp1_tabular_variance.py --out runs/experiments/exp1 --seed 0
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from alignscope.lab.experiment import parse_args, pyplot, save_figure


def expected(logits: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """E_{y~softmax(logits)}[r(y)] for each row."""
    return (torch.softmax(logits, -1) * rewards).sum(-1)


def variance(logits: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Var_{y~softmax(logits)}[r(y)] for each row: the quantity the bound is stated in."""
    p = torch.softmax(logits, -1)
    mean = (p * rewards).sum(-1, keepdim=True)
    return (p * (rewards - mean) ** 2).sum(-1)


def steps_to_gain(
    logits0: torch.Tensor, r_rm: torch.Tensor, r_gold: torch.Tensor, delta: float, lr: float, max_steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient ascent on E_pi[r_RM] for every row at once; the first step at which E_pi[r_G] has risen
    by `delta` (inf when never), and the gold-gain curve of every row (for the plots)."""
    theta = logits0.clone().double().requires_grad_(True)
    r_rm, r_gold = r_rm.double(), r_gold.double()
    start = expected(theta, r_gold).detach()
    hit = torch.full((len(theta),), math.inf, dtype=torch.float64)
    curve = []
    for step in range(1, max_steps + 1):
        (grad,) = torch.autograd.grad(expected(theta, r_rm).sum(), theta)
        with torch.no_grad():
            theta += lr * grad
            gain = expected(theta, r_gold) - start
        curve.append(gain)
        newly = torch.isinf(hit) & (gain >= delta)
        hit[newly] = step
        if not torch.isinf(hit).any():
            break
    return hit, torch.stack(curve, 1)


def fit_slope(var: np.ndarray, steps: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept of log(steps) on log(variance), finite points only."""
    ok = np.isfinite(steps)
    slope, intercept = np.polyfit(np.log(var[ok]), np.log(steps[ok]), 1)
    return float(slope), float(intercept)


def within_prompt_slope(var: np.ndarray, steps: np.ndarray) -> tuple[float, float]:
    """Mean and std over prompts of the per-prompt slope: the bound is per prompt, so the family's
    spread across prompts (different reward vectors) should not enter the exponent."""
    slopes = [fit_slope(v, s)[0] for v, s in zip(var, steps) if np.isfinite(s).sum() >= 2]
    return float(np.mean(slopes)), float(np.std(slopes))


def gold_rewards(gen: torch.Generator, prompts: int, k: int) -> torch.Tensor:
    """Random reward vectors rescaled to span exactly [-1, 1], so `delta` means the same everywhere."""
    r = torch.rand(prompts, k, generator=gen, dtype=torch.float64)
    lo, hi = r.min(-1, keepdim=True).values, r.max(-1, keepdim=True).values
    return 2 * (r - lo) / (hi - lo) - 1


def shuffled(gen: torch.Generator, r: torch.Tensor, fraction: float) -> torch.Tensor:
    """r with a random `fraction` of each row's entries permuted among themselves: an inaccurate RM
    with (nearly) the same reward spread."""
    out = r.clone()
    k = r.shape[1]
    m = max(2, round(fraction * k))
    for i in range(len(r)):
        idx = torch.randperm(k, generator=gen)[:m]
        out[i, idx] = r[i, idx[torch.roll(torch.arange(m), 1)]]
    return out


def pair_accuracy(r: torch.Tensor, gold: torch.Tensor) -> float:
    """Fraction of response pairs (all prompts) that r orders as gold does; ties count 1/2."""
    d_r = r[:, :, None] - r[:, None, :]
    d_g = gold[:, :, None] - gold[:, None, :]
    mask = d_g != 0
    agree = torch.where(d_r == 0, 0.5, ((d_r > 0) == (d_g > 0)).double())
    return float(agree[mask].mean())


def run(out: str | Path, seed: int = 0, quick: bool = False, log=print) -> dict:
    """Run all three families; write results.json and plots into `out`; return the results."""
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    prompts, k = (4, 8) if quick else (32, 16)
    delta, lr = 0.25, 0.5
    scales = np.logspace(-1.5, 0, 4) if quick else np.logspace(-2, 0, 9)
    alphas = np.linspace(0.0, 6.0, 4) if quick else np.linspace(0.0, 8.0, 9)
    gold = gold_rewards(gen, prompts, k)
    logits = torch.randn(prompts, k, generator=gen, dtype=torch.float64)
    results: dict = {"seed": seed, "quick": quick, "prompts": prompts, "responses_per_prompt": k, "delta": delta, "lr": lr}

    log(f"A. scaled RM c * r_G, c in [{scales[0]:.2g}, {scales[-1]:.2g}] ({prompts} prompts, {k} responses each)")
    var_a, steps_a, curves_a = [], [], {}
    for c in scales:
        hit, curve = steps_to_gain(logits, c * gold, gold, delta, lr, max_steps=int(400 / c))
        var_a.append(variance(logits, c * gold).numpy())
        steps_a.append(hit.numpy())
        curves_a[float(c)] = curve[0].tolist()
    var_a, steps_a = np.array(var_a).T, np.array(steps_a).T  # [prompt, setting]
    slope_a, icpt_a = fit_slope(var_a.ravel(), steps_a.ravel())
    within_a = within_prompt_slope(var_a, steps_a)
    results["A_scaled"] = {"scales": scales.tolist(), "variance": var_a.tolist(), "steps": steps_a.tolist(),
                           "slope_pooled": slope_a, "slope_within_prompt_mean": within_a[0], "slope_within_prompt_std": within_a[1]}
    log(f"   slope {slope_a:+.3f} pooled, {within_a[0]:+.3f} +- {within_a[1]:.3f} within prompts")

    log(f"A'. scaled RM with a single tiny step size (lr {lr / 10}): the discretisation check")
    var_s, steps_s = [], []
    for c in np.logspace(-1, 0, 2 if quick else 3):
        hit, _ = steps_to_gain(logits[:2], c * gold[:2], gold[:2], delta, lr / 10, max_steps=int(4000 / c))
        var_s.append(variance(logits[:2], c * gold[:2]).numpy())
        steps_s.append(hit.numpy())
    slope_small_lr = within_prompt_slope(np.array(var_s).T, np.array(steps_s).T)[0]
    results["A_scaled"]["slope_within_prompt_small_lr"] = slope_small_lr
    log(f"   slope {slope_small_lr:+.3f}")

    log(f"B. r_RM = r_G, pi_ref with logit +alpha on the worst response, alpha in [{alphas[0]}, {alphas[-1]}]")
    worst = gold.argmin(-1)
    var_b, steps_b, curves_b = [], [], {}
    for a in alphas:
        lg = logits.clone()
        lg[torch.arange(prompts), worst] += a
        hit, curve = steps_to_gain(lg, gold, gold, delta, lr, max_steps=40000)
        var_b.append(variance(lg, gold).numpy())
        steps_b.append(hit.numpy())
        curves_b[float(a)] = curve[0].tolist()
    var_b, steps_b = np.array(var_b).T, np.array(steps_b).T
    slope_b, icpt_b = fit_slope(var_b.ravel(), steps_b.ravel())
    within_b = within_prompt_slope(var_b, steps_b)
    results["B_concentrated"] = {"alphas": alphas.tolist(), "variance": var_b.tolist(), "steps": steps_b.tolist(),
                                 "unreached": int(np.isinf(steps_b).sum()), "slope_pooled": slope_b,
                                 "slope_within_prompt_mean": within_b[0], "slope_within_prompt_std": within_b[1]}
    log(f"   slope {slope_b:+.3f} pooled, {within_b[0]:+.3f} +- {within_b[1]:.3f} within prompts")

    # The lower bound t >= C * Var^(-1/2): the smallest t * sqrt(Var) over all runs of both families,
    # per variance decade. Flat or rising as Var falls means no run beat the -1/2 rate.
    v_all = np.concatenate([var_a.ravel(), var_b.ravel()])
    t_all = np.concatenate([steps_a.ravel(), steps_b.ravel()])
    ok = np.isfinite(t_all)
    decades = np.floor(np.log10(v_all[ok])).astype(int)
    bound = {int(d): float((t_all[ok] * np.sqrt(v_all[ok]))[decades == d].min()) for d in sorted(set(decades))}
    results["min_t_sqrt_var_by_decade"] = bound
    log("   min steps * sqrt(Var) by variance decade: " + ", ".join(f"1e{d}: {b:.2f}" for d, b in bound.items()))

    log("C. teachers: accurate low-variance RM vs inaccurate high-variance RMs, gold gain after a fixed budget")
    budget = 40 if quick else 60
    teachers = {"gold (accurate, high variance)": gold, "0.05 x gold (accurate, low variance)": 0.05 * gold}
    for frac in (0.25, 0.5):
        teachers[f"gold, {frac:.0%} shuffled (inaccurate)"] = shuffled(gen, gold, frac)
    table_c = []
    for name, r in teachers.items():
        _, curve = steps_to_gain(logits, r, gold, math.inf, lr, max_steps=budget)
        table_c.append({"rm": name, "accuracy": pair_accuracy(r, gold), "variance": float(variance(logits, r).mean()),
                        "gold_gain": float(curve[:, -1].mean())})
    results["C_teachers"] = {"steps": budget, "rows": table_c}

    results["seconds"] = round(time.time() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, var_a, steps_a, var_b, steps_b, curves_a, curves_b, (slope_a, icpt_a), (slope_b, icpt_b), out)
    log(format_table(results))
    return results


def plot(results, var_a, steps_a, var_b, steps_b, curves_a, curves_b, fit_a, fit_b, out: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for (v, s, fit, name, col) in ((var_a, steps_a, fit_a, "A: scaled RM", "C0"), (var_b, steps_b, fit_b, "B: concentrated pi_ref", "C1")):
        ok = np.isfinite(s)
        ax[0].scatter(v[ok], s[ok], s=8, alpha=0.5, color=col, label=f"{name} (slope {fit[0]:+.2f})")
        xs = np.logspace(np.log10(v[ok].min()), np.log10(v[ok].max()), 20)
        ax[0].plot(xs, np.exp(fit[1]) * xs ** fit[0], color=col)
    xs = np.logspace(np.log10(min(var_a.min(), var_b.min())), np.log10(max(var_a.max(), var_b.max())), 20)
    t_min = np.nanmin(np.where(np.isfinite(steps_a), steps_a, np.nan) * np.sqrt(var_a))
    ax[0].plot(xs, t_min * xs ** -0.5, "k--", label="slope -1/2 (tabular bound)")
    ax[0].plot(xs, t_min * xs.max() ** (1 / 6) * xs ** (-1 / 3), "k:", label="slope -1/3 (general bound)")
    ax[0].set(xscale="log", yscale="log", xlabel="Var_{y~pi_ref}[r_RM]", ylabel=f"steps until E[r_G] rises by {results['delta']}")
    ax[0].legend(fontsize=7)
    for c, curve in curves_a.items():
        ax[1].plot(np.arange(1, len(curve) + 1), curve, label=f"A: c={c:.2g}")
    for a, curve in list(curves_b.items())[::2]:
        ax[1].plot(np.arange(1, len(curve) + 1), curve, "--", label=f"B: alpha={a:.1f}")
    ax[1].axhline(results["delta"], color="k", lw=0.5)
    ax[1].set(xscale="log", xlabel="gradient step", ylabel="gold gain E[r_G] - E_ref[r_G] (prompt 0)")
    ax[1].legend(fontsize=6, ncol=2)
    save_figure(fig, out / "steps_vs_variance.png")


def format_table(r: dict) -> str:
    a, b = r["A_scaled"], r["B_concentrated"]
    lines = [
        "",
        f"{'family':<34}{'slope (pooled)':>15}{'slope (per prompt)':>22}   theorem",
        f"{'A: scaled RM c * r_G':<34}{a['slope_pooled']:>+15.3f}{a['slope_within_prompt_mean']:>+15.3f} +- {a['slope_within_prompt_std']:.3f}   -1/2 (tabular), -1/3 (general)",
        f"{'B: concentrated pi_ref':<34}{b['slope_pooled']:>+15.3f}{b['slope_within_prompt_mean']:>+15.3f} +- {b['slope_within_prompt_std']:.3f}   <= -1/2 (a lower bound on time)",
        "",
        f"{'teacher (' + str(r['C_teachers']['steps']) + ' steps)':<40}{'accuracy':>9}{'variance':>10}{'gold gain':>11}",
    ]
    for row in r["C_teachers"]["rows"]:
        lines.append(f"{row['rm']:<40}{row['accuracy']:>9.3f}{row['variance']:>10.4f}{row['gold_gain']:>+11.3f}")
    lines.append(f"({r['seconds']}s)")
    return "\n".join(lines)


def main() -> None:
    args = parse_args(__doc__, "exp1")
    run(args.out, seed=args.seed, quick=args.quick)


if __name__ == "__main__":
    main()
