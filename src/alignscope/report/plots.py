"""Report figures rendered off-screen to PNG bytes (matplotlib's Agg canvas via `Figure`, never
pyplot, so no global state or display backend is touched and figures are freed when dropped)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from alignscope.diagnostics.overoptimization import GaoFit

DPI = 90
MAX_PANELS = 12
_FIRST = ("loss", "rewards/margins", "rewards/accuracies", "logps", "rewards")


@dataclass
class Png:
    """A rendered figure: PNG bytes and the pixel size the <img> tag should declare."""

    data: bytes
    width: int
    height: int


def _render(fig: Figure) -> Png:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    w, h = fig.get_size_inches() * DPI
    return Png(buf.getvalue(), int(round(w)), int(round(h)))


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, **kw)


def _grid(n: int, ncols: int = 3, row_height: float = 2.8) -> tuple[Figure, list]:
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.2 * ncols, row_height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def metric_groups(keys: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Panels for the training curves: `x/chosen` and `x/rejected` share panel `x`; known TRL
    metrics come first, the rest alphabetically."""
    groups: dict[str, list[str]] = {}
    for key in sorted(keys):
        prefix, _, leaf = key.rpartition("/")
        title = prefix if prefix and leaf in ("chosen", "rejected") else key
        groups.setdefault(title, []).append(key)
    rank = {name: i for i, name in enumerate(_FIRST)}
    return sorted(groups.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def ema(values: Sequence[float], span: int) -> np.ndarray:
    """Bias-corrected exponential moving average with alpha = 2/(span+1) (the first points are not
    pulled toward zero, as an uncorrected EMA started at 0 would)."""
    v = np.asarray(values, dtype=np.float64)
    alpha = 2.0 / (max(1, span) + 1.0)
    out = np.empty_like(v)
    acc = weight = 0.0
    for i, x in enumerate(v):
        acc = (1 - alpha) * acc + alpha * x
        weight = (1 - alpha) * weight + alpha
        out[i] = acc / weight
    return out


def smoothing_span(n_points: int) -> int:
    """The EMA span for a curve of n points: a tenth of it, at least 1 (no smoothing for short curves)."""
    return max(1, n_points // 10)


def training_curves(series: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> tuple[Png, int]:
    """One panel per metric group over steps, each curve EMA-smoothed with its raw values faint
    behind it; returns the figure and how many groups were left out."""
    groups = metric_groups(list(series))
    shown, omitted = groups[:MAX_PANELS], max(0, len(groups) - MAX_PANELS)
    fig, axes = _grid(len(shown))
    colors = ["#4878a8", "#d1495b", "#5a9a68", "#e08a2c"]
    for ax, (title, keys) in zip(axes, shown):
        for i, key in enumerate(keys):
            steps, values = series[key]
            color = colors[i % len(colors)]
            label = key.rpartition("/")[2] if len(keys) > 1 else None
            span = smoothing_span(len(values))
            if span > 1:
                ax.plot(steps, values, color=color, alpha=0.25, lw=0.8)
                ax.plot(steps, ema(values, span), color=color, lw=1.6, label=label)
            else:
                ax.plot(steps, values, color=color, marker=".", label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        _legend(ax)
    return _render(fig), omitted


def displacement(series: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> Png:
    """Fractions (pairs whose chosen log-prob fell, ranking accuracy) and mean log-prob changes."""
    fig, (left, right) = _grid(2, ncols=2, row_height=3.2)
    for key in ("fraction_chosen_fell", "ranking_accuracy", "implicit_reward_accuracy"):
        if key in series:
            left.plot(*series[key], marker=".", label=key)
    left.set_ylim(-0.02, 1.02)
    left.set_title("fraction of eval pairs", fontsize=10)
    for key in ("mean_chosen_change", "mean_rejected_change"):
        if key in series:
            right.plot(*series[key], marker=".", label=key)
    right.axhline(0.0, color="grey", lw=0.8)
    right.set_title("mean log-prob change since start (nats)", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        _legend(ax)
    return _render(fig)


def _symlog_bins(values: np.ndarray, n_bins: int, linthresh: float) -> np.ndarray:
    """Bin edges equally spaced on a symlog axis, so a heavy tail does not squash the bulk into one bin."""
    f = lambda x: np.sign(x) * np.log10(1 + np.abs(x) / linthresh)  # noqa: E731
    g = lambda t: np.sign(t) * linthresh * (10 ** np.abs(t) - 1)  # noqa: E731
    lo, hi = f(values.min()), f(values.max())
    if hi <= lo:
        hi = lo + 1.0
    return g(np.linspace(lo, hi, n_bins + 1))


def ches_histogram(ln_ches: np.ndarray, ches: np.ndarray, flagged: np.ndarray) -> Png:
    """Histograms of length-normalised CHES (linear) and raw CHES (symlog axis: raw CHES grows with
    length and is heavy-tailed), flagged pairs stacked in a second colour."""
    fig, axes = _grid(2, ncols=2, row_height=3.2)
    n_bins = min(40, max(5, len(ln_ches) // 4))
    nonzero = np.abs(ches[ches != 0])
    linthresh = float(np.median(nonzero)) if nonzero.size else 1.0
    for ax, values, title in ((axes[0], ln_ches, "length-normalised CHES"), (axes[1], ches, "raw CHES (symlog axis)")):
        if values is ches:
            bins = _symlog_bins(values, n_bins, linthresh)
            ax.set_xscale("symlog", linthresh=linthresh)
        else:
            bins = np.histogram_bin_edges(values, bins=n_bins)
        ax.hist([values[~flagged], values[flagged]], bins=bins, stacked=True,
                label=["not flagged", "flagged"], color=["#4878a8", "#d1495b"])
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("pairs", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _render(fig)


def pair_scatter(delta_chosen: np.ndarray, panels: Sequence[tuple[str, np.ndarray, float]]) -> Png:
    """Per pair, the change of log p(chosen) over training (y) against each score of `panels`
    ((x label, x values, Spearman rho)): does the score predict which pairs displace?"""
    fig, axes = _grid(len(panels), ncols=2, row_height=3.2)
    for ax, (label, x, rho) in zip(axes, panels):
        ax.scatter(x, delta_chosen, s=10, alpha=0.6, color="#4878a8")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("Δ log p(chosen), first → last eval (nats)", fontsize=8)
        ax.set_title(f"Spearman ρ = {rho:+.2f}" if np.isfinite(rho) else "Spearman ρ undefined", fontsize=10)
        ax.grid(alpha=0.3)
    return _render(fig)


def variance_over_steps(steps: Sequence[float], zero_fraction: Sequence[float], mean_var: Sequence[float]) -> Png:
    """RL: fraction of prompts whose sampled rewards all tie, and the mean per-prompt variance, per step."""
    fig, (left, right) = _grid(2, ncols=2, row_height=3.0)
    left.plot(steps, zero_fraction, marker="." if len(steps) < 30 else None, color="#d1495b")
    left.set_ylim(-0.02, 1.02)
    left.set_title("fraction of prompts with zero reward variance", fontsize=10)
    right.plot(steps, mean_var, marker="." if len(steps) < 30 else None)
    right.set_title("mean per-prompt reward variance", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    return _render(fig)


def reward_variance(variances: Mapping[str, Sequence[float]]) -> Png:
    """Per-prompt reward variance distribution of each RM (box plot with the points overlaid)."""
    names = list(variances)
    fig = Figure(figsize=(max(5.0, 1.4 * len(names) + 2.5), 3.6), layout="constrained")
    ax = fig.subplots()
    data = [np.asarray(variances[n], dtype=np.float64) for n in names]
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20 if len(names) > 3 else 0, fontsize=8)
    rng = np.random.default_rng(0)
    for i, v in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=6, alpha=0.4, color="#4878a8")
    ax.set_ylabel("per-prompt reward variance", fontsize=8)
    ax.set_title("reward variance each RM induces for the policy", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return _render(fig)


def overoptimization(
    steps: np.ndarray,
    proxy: np.ndarray | None,
    gold: np.ndarray | None,
    d: np.ndarray | None,
    fit: GaoFit | None,
) -> Png:
    """Left: proxy and gold reward and √KL against step. Right: rewards against √KL with the fitted
    Gao RL form, the picture in which over-optimisation shows as a gold curve that turns down."""
    fig, (left, right) = _grid(2, ncols=2, row_height=3.4)
    for values, label in ((proxy, "proxy reward"), (gold, "gold reward")):
        if values is not None:
            left.plot(steps, values, marker=".", label=label)
    left.set_xlabel("step", fontsize=8)
    left.set_ylabel("reward", fontsize=8)
    if d is not None:
        twin = left.twinx()
        twin.plot(steps, d, color="grey", ls="--", label="√KL")
        twin.set_ylabel("√KL", fontsize=8)
        twin.legend(fontsize=8, loc="lower right")
    _legend(left, loc="upper left")
    left.set_title("rewards and √KL over training", fontsize=10)
    if d is not None:
        for values, label in ((proxy, "proxy reward"), (gold, "gold reward")):
            if values is not None:
                right.plot(d, values, ".", label=label)
        if fit is not None:
            grid = np.linspace(0.0, float(d.max()), 200)
            right.plot(grid, fit.predict(grid), "-", color="#d1495b",
                       label=f"gold fit d(α−β log d): α={fit.alpha:.3g}, β={fit.beta:.3g}")
        right.set_xlabel("d = √KL(π‖π_ref)", fontsize=8)
        _legend(right)
    else:
        right.text(0.5, 0.5, "KL not logged", ha="center", va="center", transform=right.transAxes)
    right.set_title("rewards against √KL", fontsize=10)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _render(fig)
