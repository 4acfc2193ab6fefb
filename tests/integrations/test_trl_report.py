"""`alignscope report` on TRL output dirs, as a person sees it: the examples' DPO and GRPO runs in headless Chromium."""

from __future__ import annotations

import pytest

pytest.importorskip("trl", reason="TRL is not installed (pip install 'alignscope[trl]')")

from integrations.test_trl_callbacks import _example  # noqa: E402
from report.test_report_html import _no_blank_tail, _render_in_chromium  # noqa: E402


def test_trl_dpo_and_grpo_runs_render_with_their_verdicts(lab_tiny, tmp_path):
    dpo = _example("trl_dpo_monitor").main(["--steps", "4", "--eval-steps", "2", "--pairs", "16", "--out", str(tmp_path / "dpo")])
    grpo = _example("trl_grpo_variance").main(["--steps", "2", "--prompts", "8", "--max-new-tokens", "8", "--out", str(tmp_path / "grpo")])
    for out, sections in ((dpo, {"training", "displacement"}), (grpo, {"training", "rl-variance", "overoptimization"})):
        plots, pixels, verdicts = _render_in_chromium(out)
        assert set(verdicts) == sections and set(verdicts.values()) <= {"measured", "clean", "flagged"}, (out.name, verdicts)
        for ps in plots.values():
            assert all(p["w"] > 0 and p["h"] > 0 and p["natural"] > 0 for p in ps)
        _no_blank_tail(pixels)
