"""Reward-hacking alarms that need no gold reward: pure detectors over an RL run's logged series.

Real users have only the proxy they optimise, so these read the signs a hacked proxy leaves in
what RL logs anyway (docs/rl.md): the policy's entropy collapsing, its responses' length drifting,
the KL to the reference rising faster than the proxy reward it buys, and the proxy on held-out
prompts falling while the training proxy rises. Each series is compared by window means (the
first, middle and last `window` points), so one noisy step neither triggers nor hides an alarm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from alignscope.diagnostics.warnings import Pitfall

ENTROPY_FIX = "raise kl_coef or entropy_coef, lower lr, or stop at an earlier checkpoint"
LENGTH_FIX = "check the reward for a length bias (alignscope audit rm), add overlong_buffer, or normalise the reward for length"
KL_FIX = "stop at an earlier checkpoint, raise kl_coef (or set adaptive_kl_target), or use a reward-model ensemble"
HELDOUT_FIX = "stop at the checkpoint where the held-out reward peaked, add more training prompts, or raise kl_coef"


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _window_means(values: Sequence[float], window: int) -> tuple[float, float, float] | None:
    """Means of the first, middle and last `window` values; None when the series is too short."""
    if window < 1 or len(values) < 3 * window:
        return None
    mid = len(values) // 2 - window // 2
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return mean(values[:window]), mean(values[mid : mid + window]), mean(values[-window:])


def _window_noise(values: Sequence[float], window: int) -> float:
    """The per-step spread of a series: the pooled standard deviation inside the three windows of `_window_means`
    (so a trend between windows is not counted as noise)."""
    mid = len(values) // 2 - window // 2
    parts = [values[:window], values[mid : mid + window], values[-window:]]
    dev = [(v - sum(p) / len(p)) ** 2 for p in parts for v in p]
    return math.sqrt(sum(dev) / max(len(dev) - len(parts), 1))


def detect_entropy_collapse(entropy: Sequence[float], max_drop: float = 0.5, window: int = 3) -> list[Pitfall]:
    """The policy's mean token entropy fell by more than `max_drop` (a fraction) from the start:
    it has stopped exploring, often because it found one response the proxy over-rewards."""
    m = _window_means(_finite(entropy), window)
    if m is None or m[0] <= 0:
        return []
    drop = 1 - m[2] / m[0]
    if drop <= max_drop:
        return []
    return [Pitfall("entropy collapse", drop, f"token entropy fell {drop:.0%} ({m[0]:.3f} -> {m[2]:.3f} nats)", ENTROPY_FIX)]


def detect_length_drift(lengths: Sequence[float], max_change: float = 0.5, window: int = 3) -> list[Pitfall]:
    """Mean response length moved by more than `max_change` (relative) from the start: the
    commonest proxy exploit (reward models favour longer answers; a cap favours shorter ones)."""
    m = _window_means(_finite(lengths), window)
    if m is None or m[0] <= 0:
        return []
    change = m[2] / m[0] - 1
    if abs(change) <= max_change:
        return []
    return [Pitfall("response-length drift", abs(change), f"mean response length went from {m[0]:.1f} to {m[2]:.1f} tokens ({change:+.0%})",
                    LENGTH_FIX)]


def detect_kl_outpacing_reward(kl: Sequence[float], proxy: Sequence[float], window: int = 3, min_efficiency: float = 0.25,
                               min_kl_rise: float = 0.05) -> list[Pitfall]:
    """The KL keeps rising but buys little proxy reward: the proxy gained per unit of sqrt(KL) from
    the middle window to the last fell below `min_efficiency` of the gain from the first window to
    the middle. Both rises of sqrt(KL) must reach `min_kl_rise`, or a near-zero first rise would make
    any later efficiency look small, and the late rise must be at least half the early one: a KL that
    settles while the reward plateaus is a run converging, not one being gamed. The early gain and the late
    shortfall must both stand out of the proxy's per-step noise (two standard errors). Gao et al.'s curves bend
    this way before the gold reward turns down; `size` is the efficiency lost (a fraction)."""
    pairs = [(k, p) for k, p in zip(kl, proxy) if k is not None and p is not None and math.isfinite(k) and math.isfinite(p)]
    d = _window_means([math.sqrt(max(k, 0.0)) for k, _ in pairs], window)
    r = _window_means([p for _, p in pairs], window)
    if d is None or r is None:
        return []
    rise1, rise2 = d[1] - d[0], d[2] - d[1]
    if rise1 < min_kl_rise or rise2 < max(min_kl_rise, 0.5 * rise1):  # a KL that settles is no alarm
        return []
    eff1, eff2 = (r[1] - r[0]) / rise1, (r[2] - r[1]) / rise2
    if eff1 <= 0 or eff2 >= min_efficiency * eff1:
        return []
    # Differences of window means of a noisy proxy: the early gain and the late shortfall must each exceed two
    # standard errors, or per-step noise (RL's proxy means swing by tenths on small batches) fires the alarm.
    se = _window_noise([p for _, p in pairs], window) * math.sqrt(2 / window)
    if r[1] - r[0] <= 2 * se or min_efficiency * eff1 * rise2 - (r[2] - r[1]) <= 2 * se:
        return []
    lost = 1 - eff2 / eff1
    return [Pitfall("KL outpacing reward", lost,
                    f"sqrt(KL) rose {rise2:.3f} late in the run for a proxy gain of {r[2] - r[1]:+.3f} "
                    f"({eff2:.2f} per unit vs {eff1:.2f} earlier)", KL_FIX)]


def detect_heldout_divergence(train_proxy: Sequence[float], heldout_proxy: Sequence[float], tolerance: float = 0.05,
                              window: int = 2) -> list[Pitfall]:
    """The proxy on held-out prompts peaked and fell by more than `tolerance` while the training
    proxy kept rising: the policy is fitting its training prompts' reward, not the task.
    The two series are aligned (one value each per evaluation point)."""
    pairs = [(t, h) for t, h in zip(train_proxy, heldout_proxy) if t is not None and h is not None and math.isfinite(t) and math.isfinite(h)]
    if len(pairs) < 2 * window + 1:
        return []
    smooth = [sum(h for _, h in pairs[max(0, i - window + 1) : i + 1]) / len(pairs[max(0, i - window + 1) : i + 1]) for i in range(len(pairs))]
    peak = max(range(len(smooth)), key=smooth.__getitem__)
    lost = smooth[peak] - smooth[-1]
    train_gain = sum(t for t, _ in pairs[-window:]) / window - pairs[peak][0]
    if peak == len(smooth) - 1 or lost <= tolerance or train_gain <= 0:
        return []
    return [Pitfall("held-out reward falling", lost,
                    f"the held-out proxy fell {lost:.3f} from its peak (evaluation {peak + 1}) while the training proxy rose {train_gain:+.3f}",
                    HELDOUT_FIX)]


class HackingMonitor:
    """Feeds an RL run's metric rows to the detectors; each alarm fires once per run.

    Rows use RL's metric names: `entropy`, `response_length`, `kl`, `reward/proxy_mean`, and, at
    evaluation points, `eval/proxy_mean`. A resumed run passes the rows and alarm names it logged.
    """

    def __init__(self, rows: Iterable[Mapping[str, Any]] = (), fired: Iterable[str] = (), window: int = 5):
        self.series: dict[str, list[float]] = {"entropy": [], "response_length": [], "kl": [], "proxy": [], "eval_train": [], "eval": []}
        self.fired, self.window = set(fired), window
        for row in rows:
            self._add(row)

    def _add(self, row: Mapping[str, Any]) -> None:
        if "reward/proxy_mean" in row:
            for key, name in (("entropy", "entropy"), ("response_length", "response_length"), ("kl", "kl"), ("reward/proxy_mean", "proxy")):
                self.series[name].append(row.get(key))
        if row.get("eval/proxy_mean") is not None and self.series["proxy"]:
            self.series["eval"].append(row["eval/proxy_mean"])
            self.series["eval_train"].append(sum(_finite(self.series["proxy"][-self.window:])) / max(len(_finite(self.series["proxy"][-self.window:])), 1))

    def update(self, row: Mapping[str, Any]) -> list[Pitfall]:
        """Add one step's row; the pitfalls newly detected."""
        self._add(row)
        # Windows grow with the run (a quarter of it, at least `window` points): RL's per-step means are noisy,
        # and three-point windows compared early in a healthy run flagged its normal slowing down.
        s = self.series
        w = max(self.window, len(s["proxy"]) // 4)
        found = (detect_entropy_collapse(s["entropy"], window=w) + detect_length_drift(s["response_length"], window=w)
                 + detect_kl_outpacing_reward(s["kl"], s["proxy"], window=w) + detect_heldout_divergence(s["eval_train"], s["eval"]))
        new = [p for p in found if p.name not in self.fired]
        self.fired.update(p.name for p in new)
        return new
