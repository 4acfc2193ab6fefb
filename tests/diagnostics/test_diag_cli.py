"""The audit, comparison and RL-tool commands run end to end on the lab's synthetic task."""

from __future__ import annotations

import json

import pytest

from alignscope.cli.main import main
from alignscope.world.generate import pairwise_data, prompt_data
from alignscope.world.language import default_world

NOISY_RM = '''
import random
from alignscope.world.gold import gold_rewards

def noisy(prompts, responses):
    rng = random.Random(0)
    return [g + rng.gauss(0, 2.0) for g in gold_rewards(prompts, responses)]

def first_varies(prompts, responses):
    first = prompts[0]
    return [float(i % 2) if p == first else 1.0 for i, p in enumerate(prompts)]
'''


@pytest.fixture()
def task(tmp_path, monkeypatch, lab_tiny):
    world = default_world(0)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p.prompt}) + "\n" for p in prompt_data(world, 12, seed=2)))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                             for p in pairwise_data(world, 24, seed=3, noise=0.0)))
    (tmp_path / "my_rms.py").write_text(NOISY_RM)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path, prompts, pairs


def test_audit_rm_two_rms_and_gold(task, capsys):
    tmp, prompts, pairs = task
    rc = main(["audit", "rm", "--rm", "lab:gold", "my_rms:noisy", "--policy", "lab:tiny", "--prompts", str(prompts),
               "--pairs", str(pairs), "--gold", "lab:gold", "--n", "4", "--max-new-tokens", "12", "--out", str(tmp / "audit")])
    assert rc == 0
    table = json.loads((tmp / "audit" / "teacher_table.json").read_text())
    by_name = {row["name"]: row for row in table}
    assert by_name["lab:gold"]["onpolicy_accuracy"] == 1.0 and by_name["lab:gold"]["offpolicy_accuracy"] == 1.0
    assert by_name["my_rms:noisy"]["onpolicy_accuracy"] < 1.0
    assert set(json.loads((tmp / "audit" / "reward_variance.json").read_text())) == {"lab:gold", "my_rms:noisy"}
    assert "teacher table" in capsys.readouterr().out


def test_audit_data_writes_table_and_filter(task, capsys):
    tmp, _, pairs = task
    rc = main(["audit", "data", "--model", "lab:tiny", "--data", str(pairs), "--out", str(tmp / "a" / "ches.csv"), "--filter", "drop:0.25"])
    assert rc == 0
    kept = (tmp / "a" / "ches.filtered.jsonl").read_text().splitlines()
    dropped = (tmp / "a" / "ches.filtered.dropped.jsonl").read_text().splitlines()
    assert (len(kept), len(dropped)) == (18, 6)
    import csv

    table = list(csv.DictReader(open(tmp / "a" / "ches.csv")))
    flagged = [float(r["ln_ches"]) for r in table if r["flagged"] == "True"]
    others = [float(r["ln_ches"]) for r in table if r["flagged"] != "True"]
    assert len(flagged) == 6 and min(flagged) >= max(others)  # the filter dropped the highest LN-CHES pairs
    out = capsys.readouterr().out
    assert "length-normalised CHES" in out and "filter drop:0.25" in out


def test_select_prompts_and_bon(task, capsys):
    tmp, prompts, _ = task
    assert main(["select-prompts", "--policy", "lab:tiny", "--prompts", str(prompts), "--reward", "lab:gold", "--n", "4",
                 "--max-new-tokens", "12", "--keep", "0.5", "--out", str(tmp / "sel.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp / "sel.jsonl").read_text().splitlines()]
    all_var = json.loads((tmp / "sel.variances.json").read_text())
    assert len(rows) == 6 and min(r["reward_variance"] for r in rows) >= sorted(all_var)[len(all_var) // 2 - 1]
    assert main(["bon", "--policy", "lab:tiny", "--prompts", str(prompts), "--reward", "my_rms:noisy", "--gold", "lab:gold",
                 "--n", "4", "--max-new-tokens", "12", "--out", str(tmp / "bon.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "log n - (n-1)/n = 0.6363" in out and "gold reward" in out
    assert len((tmp / "bon.jsonl").read_text().splitlines()) == 12


def test_select_prompts_maps_columns_and_warns_on_flat_kept(task, capsys):
    tmp, prompts, _ = task
    questions = tmp / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": json.loads(line)["prompt"], "answer": "1"}) + "\n"
                                 for line in prompts.read_text().splitlines()))
    argv = ["select-prompts", "--policy", "lab:tiny", "--prompts", str(questions), "--reward", "my_rms:first_varies",
            "--n", "6", "--max-new-tokens", "12", "--keep", "3", "--out", str(tmp / "sel.jsonl")]
    assert main(argv) != 0
    assert "--map prompt=question" in capsys.readouterr().err
    assert main(argv + ["--map", "prompt=question"]) == 0
    out = capsys.readouterr().out
    variances = json.loads((tmp / "sel.variances.json").read_text())
    assert len(variances) == 12 and variances[0] > 0 and not any(variances[1:])
    assert "warning: 2 of the 3 kept prompts have zero reward variance" in out and "--keep 1)" in out


def test_compare_rm(task, tmp_path, capsys, lab_tiny):
    tmp, _, pairs = task
    model, tok = lab_tiny
    model.save_pretrained(tmp / "policy")
    tok.save_pretrained(tmp / "policy")
    rc = main(["compare-rm", "--policy", str(tmp / "policy"), "--ref", str(tmp / "policy"), "--rm", "lab:gold",
               "--pairs", str(pairs), "--shifted", str(pairs), "--out", str(tmp / "cmp.json")])
    assert rc == 0
    rows = json.loads((tmp / "cmp.json").read_text())
    implicit = [r for r in rows if r["reward"].startswith("implicit")]
    assert all(r["accuracy"] == 0.5 for r in implicit)  # policy == reference: every implicit reward ties
    assert all(r["accuracy"] == 1.0 for r in rows if r["reward"].startswith("explicit"))
