"""The demo's small version runs end to end and shows its findings against the gold reward."""

from __future__ import annotations

import json


def test_quick_demo(tmp_path, lab_tiny):
    from alignscope.lab.demo import run_demo

    s = run_demo(tmp_path / "demo", quick=True, log=lambda *a: None)
    html = (tmp_path / "demo" / "report.html").read_text()
    for plot in ("training_curves", "displacement", "ches_histogram", "reward_variance", "overoptimization"):
        assert f'data-plot="{plot}"' in html
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["audit"]["pairs"] == s["audit"]["pairs"]
    # CHES flags the near-duplicate rejections: the pairs that drive displacement.
    assert s["audit"]["flagged_share_near_duplicates"] >= 0.8
    # DPO on all refusal pairs unlearns refusals; on the CHES-filtered pairs it keeps more of them.
    assert s["dpo_filtered"]["refusal_rate"] > s["dpo_all"]["refusal_rate"] + 0.2, (s["dpo_all"], s["dpo_filtered"])
    # The perfectly accurate RM with low reward variance is a slower teacher of the gold reward than a noisier one.
    rl = s["rl"]
    assert rl["accurate_low_variance"]["gold_gain"] < rl["noisy_gold"]["gold_gain"], rl
