"""The HTML report: self-contained, one plot per measured input, graceful on missing inputs, loud on
malformed ones, and (when Chromium is installed) really rendered by a browser."""

from __future__ import annotations

import base64
import csv
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from alignscope.errors import DataError
from alignscope.report import build_report

PLOTS = ("training_curves", "displacement", "overoptimization", "ches_histogram", "reward_variance")
IMG_RE = re.compile(r'<img data-plot="([a-z_]+)"[^>]*width="(\d+)" height="(\d+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
SECTION_RE = re.compile(r'<section id="([^"]+)" data-section="([^"]+)">.*?data-verdict="([^"]+)"', re.S)


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _ches_csv(path: Path, n: int, seed: int = 0, flagged: int = 25, lengths: bool = False) -> np.ndarray:
    """A CHES table of n pairs; with `lengths`, LN-CHES is driven by the length ratio (a confound)."""
    rng = np.random.default_rng(seed)
    chosen, rejected = rng.integers(5, 60, n), rng.integers(5, 60, n)
    ln = -np.log(rejected / chosen) + rng.normal(0, 0.2, n) if lengths else rng.normal(size=n)
    cut = np.sort(ln)[-flagged] if flagged else np.inf
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "ches", "ln_ches", "edit_distance", "chosen_tokens", "rejected_tokens", "flagged", "prompt"])
        for i, v in enumerate(ln):
            w.writerow([i + 1, v * 40 * 10 ** (i % 7), v, rng.uniform(), chosen[i], rejected[i], v >= cut, f"prompt <{i}> & co"])
    return ln


def make_run(run: Path) -> Path:
    """A run folder holding every input the report knows, shaped like real runs."""
    run.mkdir(parents=True, exist_ok=True)
    steps = range(0, 100, 5)
    _jsonl(run / "metrics.jsonl", [
        {"step": s, "loss": 0.69 * np.exp(-s / 50), "rewards/margins": s / 100, "rewards/accuracies": min(1.0, 0.5 + s / 150),
         "logps/chosen": -50 - s / 10, "logps/rejected": -52 - s / 4, "learning_rate": 1e-6, "epoch": s / 100}
        for s in steps
    ])
    _jsonl(run / "displacement.jsonl", [
        {"step": s, "n_pairs": 64, "fraction_chosen_fell": min(1.0, s / 60), "mean_chosen_change": -s / 20,
         "mean_rejected_change": -s / 8, "ranking_accuracy": 0.55, "ranking_accuracy_start": 0.55}
        for s in range(0, 100, 20)
    ])
    _ches_csv(run / "ches.csv", 60)
    rng = np.random.default_rng(0)
    (run / "reward_variance.json").write_text(json.dumps({
        "gold-like": rng.uniform(0, 0.02, 40).tolist(), "noisy": rng.uniform(0.2, 1.2, 40).tolist()}))
    (run / "teacher_table.json").write_text(json.dumps([
        {"name": "noisy", "mean_variance": 0.7, "low_variance_fraction": 0.0, "offpolicy_accuracy": 0.7,
         "onpolicy_accuracy": 0.72, "score": 0.39, "reason": "high reward variance (0.70) ...",
         "onpolicy_n": 12, "onpolicy_interval": [0.45, 0.89]},
        {"name": "gold-like", "mean_variance": 0.01, "low_variance_fraction": 1.0, "offpolicy_accuracy": 1.0,
         "onpolicy_accuracy": 0.8, "score": 0.2, "reason": "accurate (1.00) but low reward variance (0.01): slow teacher",
         "onpolicy_n": 12, "onpolicy_interval": [0.55, 0.93]},
    ]))
    kl = np.linspace(0, 30, 16)
    d = np.sqrt(kl)
    gold = np.where(d > 0, d * (1.0 - 0.45 * np.log(np.where(d > 0, d, 1))), 0.0)
    _jsonl(run / "rl_metrics.jsonl", [
        {"step": 10 * i, "proxy_reward": float(0.6 * d[i]), "gold_reward": float(gold[i]), "kl": float(kl[i])}
        for i in range(len(kl))
    ])
    (run / "pitfalls.json").write_text(json.dumps([
        {"name": "flat RL objective", "size": 0.8, "message": "80% of prompts have low variance",
         "mitigation": "select prompts by reward variance (alignscope select-prompts)"}]))
    return run


def make_dpo_run(run: Path, displaced: bool, n_pairs: int = 40, seed: int = 1) -> Path:
    """An alignscope DPO run: metrics, config, the displacement monitor's files (chosen falling or rising)."""
    rng = np.random.default_rng(seed)
    sign = -1.0 if displaced else 1.0
    _jsonl(run / "metrics.jsonl", [
        {"step": s, "loss": 0.69 - s / 400 + rng.normal(0, 0.05), "rewards/margins": s / 50 + rng.normal(0, 0.3),
         "rewards/accuracies": min(1.0, 0.5 + s / 200) + rng.normal(0, 0.1), "logps/chosen": -40 + sign * s / 10,
         "logps/rejected": -42 - s / 5, "epoch": s / 100} for s in range(1, 101)])
    (run / "config.json").write_text(json.dumps({"method": "dpo", "beta": 0.1, "model": "sft", "eval_data": "eval.jsonl"}))
    start_c, start_r = rng.normal(-40, 5, n_pairs), rng.normal(-42, 5, n_pairs)
    # the pairs' chosen log-prob moves by an amount tied to an (unknown here) per-pair score
    per_pair = rng.normal(0, 1, n_pairs)
    logps, disp = [], []
    for k, s in enumerate((0, 25, 50, 75, 100)):
        move = sign * (k / 4) * (2 + per_pair)
        c, r = start_c + move, start_r - k
        logps.append({"step": s, "chosen": c.tolist(), "rejected": r.tolist()})
        disp.append({"step": s, "n_pairs": n_pairs, "fraction_chosen_fell": float(np.mean(c < start_c)),
                     "mean_chosen_change": float(np.mean(c - start_c)), "mean_rejected_change": float(np.mean(r - start_r)),
                     "ranking_accuracy": float(np.mean(c > r)), "ranking_accuracy_start": float(np.mean(start_c > start_r)),
                     "implicit_reward_accuracy": min(1.0, 0.5 + k / 8)})
    _jsonl(run / "eval_logps.jsonl", logps)
    _jsonl(run / "displacement.jsonl", disp)
    if displaced:
        _jsonl(run / "pitfalls.jsonl", [{"step": 100, "name": "likelihood displacement", "size": 1.0,
                                         "message": "chosen log-prob fell for 100% of eval pairs", "mitigation": "filter high-CHES pairs"}])
    return run


def make_audit_dir(folder: Path, n_pairs: int = 40) -> Path:
    """What `audit data --out DIR` writes: ches.csv (no filter: nothing flagged) and the manifest."""
    _ches_csv(folder / "ches.csv", n_pairs, seed=3, flagged=0, lengths=True)
    (folder / "alignscope.json").write_text(json.dumps({
        "kind": "audit data", "command": "alignscope audit data --model m --data eval.jsonl --out DIR",
        "files": {"ches_table": "ches.csv"}, "rows": "row = 1-based", "filter": None, "data": "/nonexistent/eval.jsonl"}))
    return folder


@pytest.fixture()
def full_run(tmp_path) -> Path:
    return make_run(tmp_path / "run")


def _images(page: str) -> dict[str, tuple[int, int, bytes]]:
    return {m[0]: (int(m[1]), int(m[2]), base64.b64decode(m[3])) for m in IMG_RE.findall(page)}


def _verdicts(page: str) -> dict[str, str]:
    """{section id: verdict} of every section on the page."""
    return {m[0]: m[2] for m in SECTION_RE.findall(page)}


def _group(page: str, label: str) -> str:
    """The HTML of one output's section group."""
    start = page.index(f'data-output="{label}"')
    nxt = page.find('<div class="output"', start)
    return page[start: nxt if nxt > 0 else len(page)]


def _box(group: str) -> str:
    m = re.search(r'<div class="pitfalls[^"]*" data-verdict="([^"]+)"', group)
    return m[1] if m else None


def test_full_report_is_self_contained_with_every_plot(full_run):
    out = build_report(full_run)
    assert out == full_run / "report.html"
    page = out.read_text()
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(?!data:)', page), "every resource must be inline"
    assert "http://" not in page and "https://" not in page
    images = _images(page)
    assert sorted(images) == sorted(PLOTS)
    for name, (w, h, data) in images.items():
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), name
        pixels = imread(io.BytesIO(data), format="png")
        assert pixels.shape[:2] == (h, w), name
        assert pixels[..., :3].std() > 0.01, f"{name} is blank"
    assert "not-measured" not in page


def test_report_sections_carry_the_numbers(full_run):
    page = build_report(full_run).read_text()
    # pitfalls box at the top of the run: the file's pitfall plus the ones derived from displacement and RL metrics
    box = page[page.index('<div class="pitfalls'): page.index('<section id="training"')]
    for name in ("flat RL objective", "likelihood displacement", "over-optimisation"):
        assert name in box
    assert "stop at checkpoint" in box
    # the flagged table keeps the top 20 of 25 flagged pairs, highest LN-CHES first, text escaped
    ches = page[page.index('<section id="ches"'): page.index('<section id="reward-variance"')]
    assert "25 of 60 pairs flagged" in ches
    table = ches[ches.index("<h4>Top"):]
    assert table.count("<tr>") == 21
    assert "prompt &lt;" in table and "<0>" not in table
    lns = [float(x) for x in re.findall(r"<tr><td>\d+</td><td>[^<]+</td><td>([^<]+)</td>", table)]
    assert lns == sorted(lns, reverse=True) and len(lns) == 20
    variance = page[page.index('<section id="reward-variance"'):]
    teachers = variance[variance.index("<h4>Teacher table"):]
    assert teachers.index("noisy") < teachers.index("slow teacher")
    assert "0.720 [0.45, 0.89], n = 12" in variance and "are within noise" in variance
    assert "Gao RL fit" in page and _verdicts(page)["overoptimization"] == "flagged"
    # summaries over the last steps, not the last noisy value; the epoch counter is no curve
    training = page[page.index('<section id="training"'): page.index('<section id="displacement"')]
    assert "Summary over the last logged steps" in training and ">epoch<" not in training


def test_empty_folder_says_not_measured_and_names_the_commands(tmp_path):
    page = build_report(tmp_path).read_text()
    assert page.count('data-verdict="not measured"') == 1
    assert "alignscope audit data" in page and "alignscope audit rm" in page and "data-plot" not in page


def test_partial_run_shows_only_what_was_measured(tmp_path):
    _jsonl(tmp_path / "metrics.jsonl", [{"step": s, "loss": 1.0 / (s + 1)} for s in range(5)])
    page = build_report(tmp_path).read_text()
    assert list(_images(page)) == ["training_curves"]
    assert _verdicts(page) == {"training": "measured"}
    assert _box(page) == "not measured"


def test_training_monitor_pitfalls_jsonl_keeps_latest_per_name(tmp_path):
    _jsonl(tmp_path / "pitfalls.jsonl", [
        {"step": s, "name": "likelihood displacement", "size": s / 100, "message": f"fell at {s}", "mitigation": "m"}
        for s in (10, 20, 30)])
    page = build_report(tmp_path).read_text()
    assert page.count("<li>") == 1 and "fell at 30" in page and "at step 30" in page


def test_a_clean_dpo_run_reads_clean(tmp_path):
    """(a) the displacement monitor ran and found nothing: 'no pitfalls detected', not 'not measured'."""
    page = build_report(make_dpo_run(tmp_path, displaced=False)).read_text()
    assert _verdicts(page) == {"training": "measured", "displacement": "clean"}
    assert _box(page) == "clean" and "displacement monitor (5 eval points)" in page
    assert "implicit_reward_accuracy" in page  # plotted and tabled
    assert "no CHES table of these 40 eval pairs" in page  # the scatter says what it needs


def test_a_displaced_run_reads_flagged(tmp_path):
    """(b) chosen log-probs fell: the section and the pitfalls box are flagged, with the mitigation."""
    page = build_report(make_dpo_run(tmp_path, displaced=True)).read_text()
    assert _verdicts(page) == {"training": "measured", "displacement": "flagged"}
    assert _box(page) == "flagged" and "Mitigation: filter high-CHES pairs" in page


def test_a_run_with_only_the_starting_eval_point_is_not_measured(tmp_path):
    make_dpo_run(tmp_path, displaced=False)
    rows = (tmp_path / "displacement.jsonl").read_text().splitlines()[:1]
    (tmp_path / "displacement.jsonl").write_text(rows[0] + "\n")
    (tmp_path / "eval_logps.jsonl").write_text((tmp_path / "eval_logps.jsonl").read_text().splitlines()[0] + "\n")
    page = build_report(tmp_path).read_text()
    assert _verdicts(page)["displacement"] == "not measured" and "eval_steps" in page and _box(page) == "not measured"


def test_a_run_without_the_monitor_names_how_to_turn_it_on(tmp_path):
    make_dpo_run(tmp_path, displaced=False)
    for name in ("displacement.jsonl", "eval_logps.jsonl"):
        (tmp_path / name).unlink()
    page = build_report(tmp_path).read_text()
    assert _verdicts(page)["displacement"] == "not measured" and "set eval_data:" in page


def test_an_audit_folder_reads_measured_with_its_confounds(tmp_path):
    """(c) `audit data --out DIR` without --filter: no pair flagged, and the report says why; the
    length confound is stated."""
    page = build_report(make_audit_dir(tmp_path / "audit")).read_text()
    assert _verdicts(page) == {"ches": "measured"}
    ches = page[page.index('<section id="ches"'):]
    assert "no filter was applied" in ches and "--filter drop:0.1" in ches
    assert "Spearman(LN-CHES, the length ratio |rejected|/|chosen|) = -0.9" in ches and "strong" in ches
    assert "Spearman(LN-CHES, edit distance)" in ches
    assert "The 20 highest LN-CHES pairs" in ches and ches.count("<tr>") == 21
    assert "ches_histogram" in _images(page)


def test_an_audit_table_written_to_a_file_path_is_found_by_its_manifest(tmp_path):
    _ches_csv(tmp_path / "my_table.csv", 12, flagged=3)
    (tmp_path / "my_table.alignscope.json").write_text(json.dumps(
        {"kind": "audit data", "command": "c", "files": {"ches_table": "my_table.csv"}, "filter": "drop:0.25"}))
    page = build_report(tmp_path).read_text()
    assert _verdicts(page) == {"ches": "flagged"} and "3 of 12 pairs flagged by --filter drop:0.25" in page


def make_all_three(root: Path) -> Path:
    make_dpo_run(root / "dpo_clean", displaced=False)
    make_dpo_run(root / "dpo_displaced", displaced=True, seed=2)
    make_audit_dir(root / "audit")
    return root


def test_a_folder_with_all_three_renders_each_with_its_verdicts(tmp_path):
    """(d) one page, one section group per output; the runs' per-pair scatter uses the audit of
    their (equally many) eval pairs, with the rank correlations."""
    page = build_report(make_all_three(tmp_path)).read_text()
    assert [m for m in re.findall(r'data-output="([^"]+)"', page)] == ["audit", "dpo_clean", "dpo_displaced"]
    assert _verdicts(_group(page, "audit")) == {"ches": "measured"}
    clean, displaced = _group(page, "dpo_clean"), _group(page, "dpo_displaced")
    assert _verdicts(clean) == {"o1-training": "measured", "o1-displacement": "clean"} and _box(clean) == "clean"
    assert _verdicts(displaced) == {"o2-training": "measured", "o2-displacement": "flagged"} and _box(displaced) == "flagged"
    for group in (clean, displaced):
        assert 'data-plot="pair_scatter"' in group and "matched by position" in group
        assert "Spearman(LN-CHES, Δ log p(chosen))" in group and "Spearman(edit distance, Δ log p(chosen))" in group
    assert "Outputs found" in page and page.count('data-plot="ches_histogram"') == 1


def test_scatter_uses_a_ches_table_in_the_same_folder(tmp_path):
    make_dpo_run(tmp_path, displaced=True)
    _ches_csv(tmp_path / "ches.csv", 40, flagged=0)
    page = build_report(tmp_path).read_text()
    assert 'data-plot="pair_scatter"' in page and "in the same folder" in page


def test_a_trl_dpo_output_dir_renders_its_log_history(tmp_path):
    """A TRL output dir: the log_history of the latest checkpoint's trainer_state.json is the
    training section, with TRL's metric names; the callbacks' files beside it are read as usual."""
    history = [{"step": s, "epoch": s / 40, "loss": 0.69 - s / 100, "rewards/margins": s / 20, "rewards/accuracies": 0.5 + s / 100,
                "logps/chosen": -30 - s / 10, "logps/rejected": -31 - s / 3, "learning_rate": 5e-7, "grad_norm": 1.0}
               for s in range(1, 41)] + [{"step": 40, "train_runtime": 12.0, "train_loss": 0.5, "total_flos": 0}]
    for ckpt, n in (("checkpoint-20", 20), ("checkpoint-41", 41)):
        (tmp_path / ckpt).mkdir()
        (tmp_path / ckpt / "trainer_state.json").write_text(json.dumps({"global_step": n, "log_history": history[:n]}))
    make_dpo_run(tmp_path / "unused", displaced=True)
    for name in ("displacement.jsonl", "eval_logps.jsonl", "pitfalls.jsonl"):
        (tmp_path / "unused" / name).rename(tmp_path / name)
    shutil.rmtree(tmp_path / "unused")
    page = build_report(tmp_path).read_text()
    assert "TRL run" in page and "checkpoint-41/trainer_state.json" in page and "40 logged steps" in page
    assert _verdicts(_group(page, "."))["displacement"] == "flagged"
    training = page[page.index('<section id="training"'): page.index('<section id="displacement"')]
    assert ">rewards/margins<" in training and ">train_runtime<" not in training and ">epoch<" not in training


def test_a_trl_grpo_output_dir_renders_rewards_and_completions(tmp_path):
    history = [{"step": s, "loss": 0.0, "reward": s / 30, "reward_std": 0.2, "kl": s / 300, "frac_reward_zero_std": 0.6,
                "rewards/my_reward/mean": s / 30} for s in range(1, 31)]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    _jsonl(tmp_path / "completions.jsonl", [{"step": s, "prompt": f"q{i}", "response": f"a <{i}>", "rewards": {"my_reward": i / 4},
                                             "gold": None} for s in (10, 30) for i in range(12)])
    _jsonl(tmp_path / "reward_variance.jsonl", [{"step": s, "variances": [0.0, 0.0, 0.0, 0.5]} for s in range(1, 11)])
    page = build_report(tmp_path).read_text()
    v = _verdicts(page)
    assert v["training"] == "measured" and v["rl-variance"] == "flagged" and v["completions"] == "measured"
    assert v["overoptimization"] == "not measured" and "RewardVarianceMonitor" in page
    comp = page[page.index('<section id="completions"'):]
    assert "at step 30 (8 of 24 rows" in comp and "a &lt;3&gt;" in comp and ">my_reward<" in comp
    assert ">frac_reward_zero_std<" in page and _box(page) == "clean"


def test_an_alignscope_rl_run_without_gold_says_how_to_measure_overoptimisation(tmp_path):
    _jsonl(tmp_path / "metrics.jsonl", [{"step": s, "reward/proxy_mean": s / 10, "kl": s / 100} for s in range(1, 11)])
    _jsonl(tmp_path / "rl_metrics.jsonl", [{"step": s, "proxy_reward": s / 10, "gold_reward": None, "kl": s / 100} for s in range(1, 11)])
    page = build_report(tmp_path).read_text()
    assert _verdicts(page)["overoptimization"] == "not measured" and "gold: in the RL config" in page
    assert "overoptimization" in _images(page)


def test_compare_rm_output_shows_n_intervals_and_the_length_confound(tmp_path):
    rows = [{"reward": "implicit (beta=0.1)", "set": "shifted", "pairs": 30, "accuracy": 0.6, "n_decisive": 30,
             "interval": [0.42, 0.75], "normalized_margin": 0.1},
            {"reward": "explicit (rm)", "set": "shifted", "pairs": 30, "accuracy": 0.7, "n_decisive": 29,
             "interval": [0.52, 0.83], "normalized_margin": 0.3}]
    (tmp_path / "cmp.json").write_text(json.dumps({"rows": rows, "length_bias": {"shifted": {"n": 30, "chosen_longer": 0.2, "chosen_shorter": 0.73}}}))
    (tmp_path / "cmp.alignscope.json").write_text(json.dumps({"kind": "compare-rm", "command": "c", "files": {"compare_rm": "cmp.json"}}))
    page = build_report(tmp_path).read_text()
    assert _verdicts(page) == {"compare-rm": "flagged"} and "length confound" in page
    assert "0.600 [0.42, 0.75], n = 30" in page and "within noise" in page and "shorter in 73%" in page


@pytest.mark.parametrize(
    "name, content, line, field",
    [
        ("metrics.jsonl", '{"step": 0, "loss": 1}\n{"step": 1, "loss": 0.9}\n{"step": 2, "loss": \n', 3, None),
        ("metrics.jsonl", '{"step": 0, "loss": 1}\n{"loss": 0.9}\n', 2, "step"),
        ("metrics.jsonl", '{"step": "one", "loss": 1}\n', 1, "step"),
        ("displacement.jsonl", '[1, 2]\n', 1, None),
        ("rl_metrics.jsonl", '{"step": 0, "kl": 0}\nnot json\n', 2, None),
        ("ches.csv", "index,ches,ln_ches,edit_distance,flagged\n0,1.0,0.1,0.5,1\n1,abc,0.2,0.5,0\n", 3, "ches"),
        ("ches.csv", "index,ches,edit_distance,flagged\n0,1.0,0.5,1\n", 1, "ln_ches"),
        ("ches.csv", "index,ches,ln_ches,edit_distance,flagged\n0,1.0,0.1,0.5,maybe\n", 2, "flagged"),
        ("reward_variance.json", '{"rm": [0.1, 0.2,\n', 2, None),
        ("pitfalls.json", '[{"size": 1}]', 1, "name"),
    ],
)
def test_malformed_input_names_file_and_line(tmp_path, name, content, line, field):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError) as err:
        build_report(tmp_path)
    assert name in str(err.value)
    if line is not None:
        assert err.value.line == line and f"line {line}" in str(err.value)
    if field is not None:
        assert err.value.field == field
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "a failed build must leave nothing behind"


def test_report_write_is_atomic_and_replaces(full_run):
    (full_run / "report.html").write_text("stale")
    build_report(full_run)
    assert (full_run / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert not [p for p in full_run.iterdir() if p.name.endswith(".tmp")]


def test_missing_run_dir_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="run directory not found"):
        build_report(tmp_path / "nope")


# ---------------------------------------------------------------- a real browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        if path := shutil.which(name):
            return path
    return None


class _DevTools:
    """Minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fd 3 in, fd 4 out), so
    the browser's own layout can be queried without any script in the page itself."""

    def __init__(self, binary: str, profile: str, url: str):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # the child moves its ends onto fds 3 and 4, so they must not already be 3 or 4
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]
        for fd in (to_chrome_r, from_chrome_w):
            os.close(fd)
        to_chrome_r, from_chrome_w = high
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1280,4000", url]
        move_fds = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execv(sys.argv[3], sys.argv[3:])"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", move_fds, str(to_chrome_r), str(from_chrome_w), binary, *flags],
            pass_fds=(to_chrome_r, from_chrome_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf, self._id = b"", 0

    def call(self, method: str, session: str | None = None, timeout: float = 20.0, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raise TimeoutError(method)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


VERDICTS_JS = """JSON.stringify(Object.fromEntries(Array.from(document.querySelectorAll('section[data-section]')).map(
  s => [s.id, s.querySelector('[data-verdict]').dataset.verdict])))"""

LAYOUT_JS = """JSON.stringify({url: location.href, ready: document.readyState, plots: Array.from(document.querySelectorAll('[data-plot]')).map(e => {
  const r = e.getBoundingClientRect();
  return {name: e.dataset.plot, w: r.width, h: r.height, natural: e.naturalWidth || 0, complete: e.complete};
})})"""


def _render_in_chromium(folder: Path) -> tuple[dict, np.ndarray, dict]:
    """Load the report of `folder` in headless Chromium: the plots' laid-out sizes, a screenshot,
    and each section's verdict as the browser reads it from the DOM."""
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary on PATH (apt-get install -y chromium)")
    url = build_report(folder).resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        tools = _DevTools(binary, profile, "about:blank")
        try:
            page = next(t for t in tools.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
            session = tools.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
            tools.call("Page.navigate", session, url=url)
            deadline = time.monotonic() + 20
            while True:
                result = tools.call("Runtime.evaluate", session, expression=LAYOUT_JS, returnByValue=True)
                layout = json.loads(result["result"]["value"])
                loaded = layout["url"] == url and layout["ready"] == "complete"
                if loaded and all(p["complete"] for p in layout["plots"]):
                    break
                assert time.monotonic() < deadline, f"page did not finish loading: {layout}"
                time.sleep(0.1)
            verdicts = json.loads(tools.call("Runtime.evaluate", session, expression=VERDICTS_JS, returnByValue=True)["result"]["value"])
            # The page's height at the screenshot's width: measured at the default (narrower) window, wrapped
            # text and scaled plots make it taller, and the screenshot would end in a blank tail of its own.
            tools.call("Emulation.setDeviceMetricsOverride", session, width=1280, height=800, deviceScaleFactor=1, mobile=False)
            height = tools.call("Runtime.evaluate", session, expression="document.documentElement.scrollHeight", returnByValue=True)["result"]["value"]
            tools.call("Emulation.setDeviceMetricsOverride", session, width=1280, height=min(int(height), 8000), deviceScaleFactor=1, mobile=False)
            shot = tools.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True)
        finally:
            tools.close()
    plots: dict[str, list] = {}
    for p in layout["plots"]:
        plots.setdefault(p["name"], []).append(p)
    pixels = imread(io.BytesIO(base64.b64decode(shot["data"])), format="png")
    return plots, pixels, verdicts


def _no_blank_tail(pixels: np.ndarray) -> None:
    """The last fifth of the full-page screenshot is not empty: no blank page tail."""
    tail = pixels[int(0.8 * pixels.shape[0]):, :, :3]
    assert tail.std() > 0.01, "the bottom of the page is blank"


def test_report_renders_in_headless_chromium(full_run):
    plots, pixels, _ = _render_in_chromium(full_run)
    assert sorted(plots) == sorted(PLOTS)
    for name, ps in plots.items():
        for p in ps:
            assert p["w"] > 0 and p["h"] > 0 and p["natural"] > 0, f"{name} rendered with no size: {p}"
    assert pixels[..., :3].std() > 0.01, "the screenshot is blank"
    _no_blank_tail(pixels)


@pytest.mark.parametrize("state", ["clean", "displaced", "audit", "all"])
def test_each_state_reads_right_in_headless_chromium(tmp_path, state):
    """(a)-(d) as a browser shows them: every section has its verdict, every plot a size, no blank tail."""
    folder = {"clean": lambda p: make_dpo_run(p, displaced=False), "displaced": lambda p: make_dpo_run(p, displaced=True),
              "audit": make_audit_dir, "all": make_all_three}[state](tmp_path / state)
    plots, pixels, verdicts = _render_in_chromium(folder)
    expected = {"clean": {"training": "measured", "displacement": "clean"},
                "displaced": {"training": "measured", "displacement": "flagged"},
                "audit": {"ches": "measured"},
                "all": {"ches": "measured", "o1-training": "measured", "o1-displacement": "clean",
                        "o2-training": "measured", "o2-displacement": "flagged"}}[state]
    assert verdicts == expected
    for ps in plots.values():
        assert all(p["w"] > 0 and p["h"] > 0 and p["natural"] > 0 for p in ps)
    if state == "all":
        assert len(plots["pair_scatter"]) == 2
    _no_blank_tail(pixels)


def test_ches_table_formats_the_audit_columns(tmp_path):
    # The audit's extra columns come back from CSV as text: numbers and booleans are shown as such, text is cut.
    from alignscope.report.discover import inspect_folder
    from alignscope.report.html import _ches_section

    with open(tmp_path / "ches.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "ches", "ln_ches", "edit_distance", "flagged", "logp_chosen", "model_ranks_correctly", "prompt_tokens", "note"])
        w.writerow([0, 5.0, 1.0, 0.5, "True", -10.664149284362793, "True", 16, "x" * 300])
        w.writerow([1, 1.0, 0.1, 0.9, "False", -3.0, "False", 12, "short"])
    html_text = _ches_section(tmp_path / "ches.csv", inspect_folder(tmp_path), "ches").body
    assert ">-10.66<" in html_text and ">yes<" in html_text and ">16<" in html_text
    assert "-10.664149284362793" not in html_text and "x" * 120 in html_text and "x" * 121 not in html_text
