"""Reward-hacking alarms over logged RL series, against window means worked out by hand.

Window means: with `window` w and n points, first = mean(x[:w]), middle = mean(x[mid:mid+w]) with
mid = n//2 − w//2, last = mean(x[-w:]). For n = 9, w = 3: mid = 4 − 1 = 3, so the windows are
x[0:3], x[3:6], x[6:9] (the three thirds).
"""

from __future__ import annotations

import math

import pytest

from alignscope.diagnostics.reward_hacking import (
    ENTROPY_FIX,
    HELDOUT_FIX,
    KL_FIX,
    LENGTH_FIX,
    HackingMonitor,
    detect_entropy_collapse,
    detect_heldout_divergence,
    detect_kl_outpacing_reward,
    detect_length_drift,
)

NAN = float("nan")


def one(found):
    assert len(found) == 1, found
    return found[0]


# --- entropy collapse


def test_entropy_collapse_fires_with_the_drop_as_size():
    # first window mean 2.0, last window mean 0.5: drop = 1 − 0.5/2 = 0.75 > 0.5
    p = one(detect_entropy_collapse([2.0, 2.0, 2.0, 1.5, 1.0, 1.0, 0.5, 0.5, 0.5]))
    assert p.name == "entropy collapse"
    assert p.size == pytest.approx(0.75)
    assert p.mitigation == ENTROPY_FIX and "kl_coef" in p.mitigation
    assert "75%" in p.message and "2.000 -> 0.500" in p.message


def test_entropy_collapse_uses_window_means_not_single_points():
    # window 2: first mean (3 + 1)/2 = 2, last mean (0.25 + 0.75)/2 = 0.5: drop 1 − 0.5/2 = 0.75
    series = [3.0, 1.0, 2.0, 1.0, 0.25, 0.75]
    assert one(detect_entropy_collapse(series, window=2)).size == pytest.approx(0.75)
    # a custom threshold: the same 0.75 drop is silent under max_drop = 0.75 (strictly greater needed)
    assert detect_entropy_collapse(series, max_drop=0.75, window=2) == []
    assert one(detect_entropy_collapse(series, max_drop=0.74, window=2)).size == pytest.approx(0.75)


def test_entropy_collapse_skips_none_and_nan():
    # the finite values are [2, 2, 2, 1, 1, 1, 0.4, 0.4, 0.4]: drop = 1 − 0.4/2 = 0.8
    p = one(detect_entropy_collapse([2.0, None, 2.0, NAN, 2.0, 1.0, 1.0, math.inf, 1.0, 0.4, 0.4, 0.4]))
    assert p.size == pytest.approx(0.8)


@pytest.mark.parametrize("series", [
    [2.0, 2.0, 2.0, 1.8, 1.6, 1.5, 1.2, 1.1, 1.0],  # drop 1 − 1.1/2 = 0.45 <= 0.5
    [2.0, 2.0, 2.0, 1.5, 1.5, 1.5, 1.0, 1.0, 1.0],  # exactly 0.5: not more than max_drop
    [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0],  # entropy rising
    [2.0, 2.0, 2.0, 0.1, 0.1, 0.1, 2.0, 2.0, 2.0],  # dipped in the middle but recovered
])
def test_entropy_healthy_series_stay_silent(series):
    assert detect_entropy_collapse(series) == []


def test_entropy_one_high_first_point_counts_through_its_window():
    # 8 points, window 2 (needs 6): first mean (2 + 0.1)/2 = 1.05, last 0.1 -> drop 1 − 0.1/1.05 = 0.904762
    assert one(detect_entropy_collapse([2.0] + [0.1] * 7, window=2)).size == pytest.approx(1 - 0.1 / 1.05)


@pytest.mark.parametrize("series", [
    [],
    [2.0, 0.1],
    [2.0, 2.0, 2.0, 0.1, 0.1, 0.1, 0.1, 0.1],  # 8 < 3·3 points
    [2.0, 2.0, 2.0, None, None, 0.1, 0.1, 0.1, 0.1],  # 9 entries but only 7 finite
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # a zero start has no relative drop
])
def test_entropy_too_short_or_degenerate_is_silent(series):
    assert detect_entropy_collapse(series) == []


def test_entropy_window_below_one_is_silent():
    assert detect_entropy_collapse([2.0] * 5 + [0.1] * 5, window=0) == []


# --- response-length drift


def test_length_drift_fires_both_ways():
    # longer: first mean 100, last mean 180: change = 180/100 − 1 = +0.8
    up = one(detect_length_drift([100, 100, 100, 120, 140, 160, 180, 180, 180]))
    assert up.name == "response-length drift"
    assert up.size == pytest.approx(0.8)
    assert up.mitigation == LENGTH_FIX and "overlong_buffer" in up.mitigation
    assert "100.0 to 180.0" in up.message and "+80%" in up.message
    # shorter: 100 -> 40: change = 0.4 − 1 = −0.6, size |−0.6|
    down = one(detect_length_drift([100, 100, 100, 70, 60, 50, 40, 40, 40]))
    assert down.size == pytest.approx(0.6)
    assert "-60%" in down.message


def test_length_drift_threshold_and_window():
    # window 2: first (10 + 30)/2 = 20, last (28 + 32)/2 = 30: change +0.5, not > 0.5
    series = [10, 30, 20, 25, 28, 32]
    assert detect_length_drift(series, window=2) == []
    assert one(detect_length_drift(series, max_change=0.4, window=2)).size == pytest.approx(0.5)


@pytest.mark.parametrize("series", [
    [100, 100, 100, 110, 120, 130, 140, 140, 140],  # +40%
    [100, 100, 100, 90, 80, 70, 60, 60, 60],  # −40%
    [100, 100, 100, 100, 100, 100, 150, 150, 150],  # exactly +50%
    [100, 100, 100, 500, 500, 500, 100, 100, 100],  # a spike in the middle only
    [100, 100, 100, 300, 300, 300, 300, 300],  # 8 points: too short for window 3
    [None, NAN, 100, 100, 100, 300, 300, 300],  # 6 finite points
    [0, 0, 0, 5, 5, 5, 9, 9, 9],  # zero start: no relative change defined
])
def test_length_healthy_or_short_is_silent(series):
    assert detect_length_drift(series) == []


def test_length_drift_skips_non_finite():
    # finite: [100, 100, 100, 150, 150, 150, 200, 200, 200]: +100%
    p = one(detect_length_drift([100, None, 100, 100, NAN, 150, 150, 150, 200, math.inf, 200, 200]))
    assert p.size == pytest.approx(1.0)


# --- KL outpacing reward

# KL chosen so sqrt(KL) is simple: windows of sqrt(KL) = 0, 1, 3 (KL 0, 1, 9).
KL_UP = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 9.0, 9.0, 9.0]


def test_kl_outpacing_fires_when_the_reward_stalls():
    # sqrt(KL) windows 0, 1, 3: rise1 = 1, rise2 = 2; proxy windows 0, 1, 1.2
    # eff1 = 1/1 = 1; eff2 = 0.2/2 = 0.1 < 0.25·1 -> lost = 1 − 0.1 = 0.9
    proxy = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.2, 1.2, 1.2]
    p = one(detect_kl_outpacing_reward(KL_UP, proxy))
    assert p.name == "KL outpacing reward"
    assert p.size == pytest.approx(0.9)
    assert p.mitigation == KL_FIX and "kl_coef" in p.mitigation
    assert "rose 2.000" in p.message and "+0.200" in p.message and "0.10 per unit vs 1.00" in p.message


def test_kl_outpacing_fires_when_the_reward_falls():
    # proxy windows 0, 1, 0.5: eff2 = −0.5/2 = −0.25 -> lost = 1 − (−0.25) = 1.25
    proxy = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    assert one(detect_kl_outpacing_reward(KL_UP, proxy)).size == pytest.approx(1.25)


def test_kl_outpacing_thresholds():
    # proxy windows 0, 1, 1.5: eff2 = 0.5/2 = 0.25; eff1 = 1
    proxy = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.5, 1.5, 1.5]
    assert detect_kl_outpacing_reward(KL_UP, proxy) == []  # 0.25 is not below 0.25·1
    assert one(detect_kl_outpacing_reward(KL_UP, proxy, min_efficiency=0.3)).size == pytest.approx(0.75)  # 1 − 0.25
    # min_kl_rise: rise2 = 2 in sqrt(KL) units; asking for 2.5 silences it
    assert detect_kl_outpacing_reward(KL_UP, proxy, min_kl_rise=2.5) == []


def test_kl_outpacing_drops_pairs_with_missing_or_non_finite_values():
    # a None or NaN on either side drops the pair; what is left is KL_UP and the stalling proxy above
    kl = [0.0, None, 0.0, 0.0, 1.0, 1.0, 5.0, 1.0, 9.0, 9.0, NAN, 9.0]
    proxy = [0.0, 7.0, 0.0, 0.0, 1.0, 1.0, None, 1.0, 1.2, 1.2, 3.0, 1.2]
    assert one(detect_kl_outpacing_reward(kl, proxy)).size == pytest.approx(0.9)


def test_kl_outpacing_clamps_negative_kl_to_zero():
    # k1 KL estimates can be negative: sqrt(max(k, 0)); the first window [−0.5, −0.1, 0] reads as 0
    proxy = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.2, 1.2, 1.2]
    kl = [-0.5, -0.1, 0.0, 1.0, 1.0, 1.0, 9.0, 9.0, 9.0]
    assert one(detect_kl_outpacing_reward(kl, proxy)).size == pytest.approx(0.9)


@pytest.mark.parametrize("kl, proxy", [
    # proportional gains: eff1 = 1/1, eff2 = 2/2 = 1
    (KL_UP, [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0]),
    # KL flat in the second half: rise2 = 0 < min_kl_rise
    ([0.0] * 3 + [1.0] * 6, [0.0] * 3 + [1.0] * 3 + [0.5] * 3),
    # KL did not rise in the first half: rise1 = 0, no baseline efficiency
    ([1.0] * 6 + [9.0] * 3, [0.0] * 3 + [1.0] * 3 + [1.0] * 3),
    # the proxy fell in the first half already: eff1 = −1 <= 0
    (KL_UP, [1.0] * 3 + [0.0] * 3 + [0.0] * 3),
    # too short: 8 pairs
    (KL_UP[:8], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.2, 1.2]),
    # 9 KL values but the proxy has only 8: zip keeps 8 pairs
    (KL_UP, [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.2, 1.2]),
    # enough points, but two pairs have a missing value: 7 left
    (KL_UP, [0.0, None, 0.0, 1.0, NAN, 1.0, 1.2, 1.2, 1.2]),
])
def test_kl_outpacing_silent_cases(kl, proxy):
    assert detect_kl_outpacing_reward(kl, proxy) == []


# --- held-out divergence


def test_heldout_divergence_fires():
    # window 2, trailing means of heldout [0.1, 0.3, 0.5, 0.5, 0.3, 0.1]:
    # smooth = [0.1, 0.2, 0.4, 0.5, 0.4, 0.2] -> peak at index 3 (evaluation 4), lost = 0.5 − 0.2 = 0.3
    # train gain = mean(train[-2:]) − train[3] = (5 + 6)/2 − 4 = 1.5
    train = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    heldout = [0.1, 0.3, 0.5, 0.5, 0.3, 0.1]
    p = one(detect_heldout_divergence(train, heldout))
    assert p.name == "held-out reward falling"
    assert p.size == pytest.approx(0.3)
    assert p.mitigation == HELDOUT_FIX and "peaked" in p.mitigation
    assert "fell 0.300" in p.message and "evaluation 4" in p.message and "+1.500" in p.message


def test_heldout_divergence_window_one_and_tolerance():
    # window 1: smooth = heldout; peak 0.75 at index 2, lost 0.75 − 0.5 = 0.25; train gain 4 − 3 = 1
    train, heldout = [1.0, 2.0, 3.0, 3.5, 4.0], [0.25, 0.5, 0.75, 0.625, 0.5]
    assert one(detect_heldout_divergence(train, heldout, window=1)).size == pytest.approx(0.25)
    assert detect_heldout_divergence(train, heldout, tolerance=0.25, window=1) == []  # not more than 0.25
    # None on either side drops that evaluation: with (None, 0.9) dropped the result is the same
    assert one(detect_heldout_divergence(train + [None], heldout + [0.9], window=1)).size == pytest.approx(0.25)


@pytest.mark.parametrize("train, heldout", [
    # held-out still rising: the peak is the last point
    ([1.0, 2.0, 3.0, 4.0, 5.0], [0.1, 0.2, 0.3, 0.4, 0.5]),
    # held-out dipped by 0.04 only: smooth [0.5, 0.5, 0.5, 0.48, 0.46] -> lost 0.04 <= 0.05
    ([1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 0.5, 0.5, 0.46, 0.46]),
    # both fell: the training proxy fell too (gain (1 + 1)/2 − 3 = −2), not a train/held-out split
    ([1.0, 2.0, 3.0, 1.0, 1.0], [0.1, 0.5, 0.9, 0.1, 0.1]),
    # too short: 4 < 2·2 + 1 evaluations
    ([1.0, 2.0, 3.0, 4.0], [0.9, 0.9, 0.1, 0.1]),
    # five evaluations, but one is missing: 4 left
    ([1.0, 2.0, 3.0, 4.0, 5.0], [0.9, None, 0.9, 0.1, 0.1]),
])
def test_heldout_silent_cases(train, heldout):
    assert detect_heldout_divergence(train, heldout) == []


def test_heldout_nan_is_skipped_not_a_false_alarm():
    # A NaN held-out evaluation used to poison the smoothed series: max() then kept index 0 as the
    # "peak" (every comparison with NaN is False) and lost = NaN, which is not <= tolerance, so a
    # held-out reward rising 1 -> 4 raised "held-out reward falling" with size NaN.
    # (six evaluations, so the five finite ones are still enough to be judged: rising, peak last)
    assert detect_heldout_divergence([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [NAN, 1.0, 2.0, 3.0, 4.0, 5.0]) == []
    # NaN last: smooth [1, 1.5, 2.5, 3.5, 4.5, NaN] used to give peak 4, lost NaN, train gain 5.5 − 5 > 0
    assert detect_heldout_divergence([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1.0, 2.0, 3.0, 4.0, 5.0, NAN]) == []
    assert detect_heldout_divergence([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1.0, 2.0, 3.0, 4.0, 5.0, math.inf]) == []
    # with the NaN evaluation dropped, a real fall is still seen (same numbers as test_heldout_divergence_fires)
    train = [1.0, 2.0, 3.0, 4.0, 99.0, 5.0, 6.0]
    heldout = [0.1, 0.3, 0.5, 0.5, NAN, 0.3, 0.1]
    assert one(detect_heldout_divergence(train, heldout)).size == pytest.approx(0.3)


# --- HackingMonitor


def row(entropy=2.0, length=100.0, kl=0.0, proxy=0.0, **extra):
    return {"step": 0, "entropy": entropy, "response_length": length, "kl": kl, "reward/proxy_mean": proxy, **extra}


def test_monitor_fires_entropy_collapse_once():
    mon = HackingMonitor(window=3)
    # entropy [2, 2, 2, 1, 1, 1, 0.4, ...]; at the 9th row: first 2, last 0.4 -> drop 0.8
    ents = [2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.4, 0.4]
    for e in ents:
        assert mon.update(row(entropy=e)) == []  # 8 rows: too short
    new = mon.update(row(entropy=0.4))
    assert [p.name for p in new] == ["entropy collapse"]
    assert new[0].size == pytest.approx(0.8)
    # still collapsed on later rows, but the alarm has fired already
    for _ in range(5):
        assert mon.update(row(entropy=0.1)) == []
    assert mon.fired == {"entropy collapse"}


def test_monitor_fires_each_alarm_once_and_independently():
    mon = HackingMonitor(window=3)
    # lengths drift from step 1 (100 -> 200) while entropy holds; entropy collapses later
    seen = []
    lengths = [100, 100, 100, 150, 150, 150, 200, 200, 200, 200, 200, 200]
    ents = [2.0] * 9 + [0.2, 0.2, 0.2]
    for i, (n, e) in enumerate(zip(lengths, ents)):
        for p in mon.update(row(entropy=e, length=n)):
            seen.append((i, p.name))
    # length at row 9 (index 8): windows 100, 150, 200 -> +100%; it stays drifted but fires once
    # entropy at index 9: last window (2 + 2 + 0.2)/3 = 1.4 -> drop 0.3; at index 10: (2 + 0.2 + 0.2)/3 = 0.8
    # -> drop 1 − 0.8/2 = 0.6 > 0.5
    assert seen == [(8, "response-length drift"), (10, "entropy collapse")]


def test_monitor_kl_alarm_from_rows():
    mon = HackingMonitor(window=3)
    proxies = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.2, 1.2, 1.2]
    names = []
    for k, r in zip(KL_UP, proxies):
        names += [p.name for p in mon.update(row(kl=k, proxy=r))]
    assert names == ["KL outpacing reward"]  # the same series as test_kl_outpacing_fires_when_the_reward_stalls
    assert mon.update(row(kl=16.0, proxy=1.2)) == []


def test_monitor_ignores_rows_without_a_proxy_reward():
    mon = HackingMonitor(window=3)
    for e in [2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.4, 0.4]:
        mon.update(row(entropy=e))
    # a row without reward/proxy_mean (a step that skipped its update) adds nothing
    assert mon.update({"step": 9, "entropy": 0.4}) == []
    assert len(mon.series["entropy"]) == 8
    assert [p.name for p in mon.update(row(entropy=0.4))] == ["entropy collapse"]


def test_monitor_tolerates_missing_metrics_in_rows():
    mon = HackingMonitor(window=3)
    ents = [2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.4, 0.4, 0.4]
    found = []
    for e in ents:
        r = row(entropy=e)
        del r["kl"], r["response_length"]  # only entropy and proxy logged
        found += mon.update(r)
    assert [p.name for p in found] == ["entropy collapse"]
    assert mon.series["kl"] == [None] * 9


def test_monitor_resumed_history_counts_and_fired_alarms_stay_quiet():
    history = [row(entropy=e) for e in [2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.4, 0.4]]
    # resumed with 8 rows of history: one more collapsed row completes the windows
    resumed = HackingMonitor(history, window=3)
    assert len(resumed.series["entropy"]) == 8
    assert [p.name for p in resumed.update(row(entropy=0.4))] == ["entropy collapse"]
    # the same history, but the previous run had already logged the alarm: it does not fire again
    already = HackingMonitor(history, fired=["entropy collapse"], window=3)
    assert already.update(row(entropy=0.4)) == []
    # a fresh monitor without the history sees one row only: silent
    assert HackingMonitor(window=3).update(row(entropy=0.4)) == []


def test_monitor_resume_with_history_that_already_collapsed_fires_on_next_update_only():
    # The constructor replays history without returning alarms; the first update reports it.
    history = [row(entropy=e) for e in [2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.4, 0.4, 0.4]]
    mon = HackingMonitor(history, window=3)
    assert mon.fired == set()
    assert [p.name for p in mon.update(row(entropy=0.4))] == ["entropy collapse"]
    assert mon.update(row(entropy=0.4)) == []


def test_monitor_window_argument():
    # window 2: 6 rows suffice; first (2 + 2)/2 = 2, last 0.5 -> drop 0.75
    mon = HackingMonitor(window=2)
    out = []
    for e in [2.0, 2.0, 1.0, 1.0, 0.5, 0.5]:
        out += mon.update(row(entropy=e))
    assert [(p.name, round(p.size, 6)) for p in out] == [("entropy collapse", 0.75)]


def test_monitor_heldout_rows():
    mon = HackingMonitor(window=3)
    # proxy rises 1, 2, ..., 6; an evaluation after each step. eval_train = mean of the last 3 proxies:
    # [1, (1+2)/2, (1+2+3)/3, (2+3+4)/3, 4, 5] = [1, 1.5, 2, 3, 4, 5]. Held-out [0.1, 0.3, 0.5, 0.5, 0.3, ...]
    # with window 2: at the 5th evaluation smooth = [0.1, 0.2, 0.4, 0.5, 0.4], peak 0.5 (evaluation 4),
    # lost 0.5 − 0.4 = 0.1 > 0.05, train gain (3 + 4)/2 − 3 = 0.5
    heldout = [0.1, 0.3, 0.5, 0.5, 0.3, 0.1, 0.0]
    found = [mon.update(row(proxy=float(i + 1), **{"eval/proxy_mean": h})) for i, h in enumerate(heldout)]
    assert mon.series["eval_train"][:6] == pytest.approx([1.0, 1.5, 2.0, 3.0, 4.0, 5.0])
    assert [len(f) for f in found] == [0, 0, 0, 0, 1, 0, 0]  # fires at the 5th evaluation, once
    p = found[4][0]
    assert p.name == "held-out reward falling" and p.size == pytest.approx(0.1)
    assert "evaluation 4" in p.message and "+0.500" in p.message


def test_monitor_eval_row_before_any_training_row_is_ignored():
    mon = HackingMonitor(window=3)
    assert mon.update({"eval/proxy_mean": 0.5}) == []
    assert mon.series["eval"] == [] and mon.series["eval_train"] == []


def test_kl_outpacing_needs_a_real_first_rise():
    # sqrt(KL) windows 0, 0.001, 0.401: the first rise (0.001) is below min_kl_rise 0.05, so the early
    # efficiency (gain 1.0 / 0.001 = 1000 per unit) is not a baseline; without the check it would fire.
    kl = [0.0] * 3 + [0.001 ** 2] * 3 + [0.401 ** 2] * 3
    proxy = [0.0] * 3 + [1.0] * 3 + [2.0] * 3
    assert detect_kl_outpacing_reward(kl, proxy) == []
