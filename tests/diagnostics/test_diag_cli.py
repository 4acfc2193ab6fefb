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
    out = capsys.readouterr().out
    assert "teacher table" in out and "95% Wilson interval" in out
    gold_row = by_name["lab:gold"]
    n_gold = gold_row["onpolicy_n"]
    assert 0 < n_gold <= 12 * 6 and f"rests on {n_gold} sample pairs" in out
    assert gold_row["offpolicy_n"] == 24 and gold_row["offpolicy_interval"][0] < 1.0 == gold_row["offpolicy_interval"][1]
    samples = [json.loads(line) for line in (tmp / "audit" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12 * 4 and {s["row"] for s in samples} == set(range(1, 13))
    assert set(samples[0]["rewards"]) == {"lab:gold", "my_rms:noisy"} and samples[0]["gold"] == samples[0]["rewards"]["lab:gold"]
    assert json.loads((tmp / "audit" / "alignscope.json").read_text())["kind"] == "audit rm"


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
    assert "Spearman(LN-CHES, the length ratio" in out and "Spearman(LN-CHES, edit distance)" in out
    assert [int(r["row"]) for r in table] == list(range(1, 25))  # 1-based record numbers
    manifest = json.loads((tmp / "a" / "ches.alignscope.json").read_text())
    assert manifest["kind"] == "audit data" and manifest["files"]["ches_table"] == "ches.csv" and "1-based" in manifest["rows"]


def test_audit_data_out_folder_is_found_by_the_report(task, capsys):
    tmp, _, pairs = task
    rc = main(["audit", "data", "--model", "lab:tiny", "--data", str(pairs), "--out", str(tmp / "audit_dir"), "--limit", "10"])
    assert rc == 0
    assert "no --filter given" in capsys.readouterr().out
    manifest = json.loads((tmp / "audit_dir" / "alignscope.json").read_text())
    assert manifest["files"] == {"ches_table": "ches.csv"} and manifest["summary"]["pairs"] == 10
    assert "confounds" in manifest["summary"]
    assert main(["report", str(tmp / "audit_dir")]) == 0
    page = (tmp / "audit_dir" / "report.html").read_text()
    assert 'data-section="ches"' in page and "no filter was applied" in page and "Spearman(LN-CHES" in page


@pytest.mark.parametrize("argv, message", [
    (["audit", "data", "--data", "PAIRS", "--out", "FILE"], "is a file, but a folder is needed"),
    (["audit", "data", "--data", "PAIRS", "--out", "FILE/sub"], "cannot be written"),
    (["audit", "data", "--data", "PAIRS", "--out", "FILE/t.csv"], "cannot be written"),
    (["audit", "data", "--data", "PAIRS", "--filter", "drop:0.1", "--filtered-out", "DIR"], "is a folder, but a file is needed"),
    (["audit", "data", "--data", "PAIRS", "--filtered-out", "DIR/f.jsonl"], "without --filter"),
    (["audit", "data", "--data", "PAIRS", "--limit", "0"], "--limit must be at least 1"),
    (["audit", "rm", "--rm", "lab:gold", "--prompts", "PAIRS", "--n", "1"], "variance needs at least 2"),
    (["audit", "rm", "--rm", "lab:gold", "--prompts", "PAIRS", "--out", "FILE"], "is a file, but a folder is needed"),
    (["compare-rm", "--rm", "lab:gold", "--pairs", "PAIRS", "--beta", "0"], "--beta must be positive"),
    (["compare-rm", "--rm", "lab:gold", "--pairs", "PAIRS", "--out", "DIR/x.txt"], "must end in .json"),
    (["compare-rm", "--rm", "lab:gold", "--pairs", "PAIRS", "--beta", "0.1"], "--ref not given and not found"),
])
def test_bad_arguments_fail_before_any_model_loads(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "file").write_text("x")
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    subs = {"PAIRS": str(tmp_path / "pairs.jsonl"), "FILE": str(tmp_path / "file"), "DIR": str(tmp_path)}
    argv = [next((a.replace(k, v) for k, v in subs.items() if a.startswith(k)), a) for a in argv]
    model = ["--policy", "no-such-model-folder"] if argv[0] == "compare-rm" or argv[1] == "rm" else ["--model", "no-such-model-folder"]
    assert main(argv + model) == 2
    err = capsys.readouterr().err
    assert message in err  # a model load would have failed on the missing model with another message


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
    rc = main(["compare-rm", "--policy", str(tmp / "policy"), "--ref", str(tmp / "policy"), "--beta", "0.1", "--rm", "lab:gold",
               "--pairs", str(pairs), "--shifted", str(pairs), "--out", str(tmp / "cmp.json")])
    assert rc == 0
    doc = json.loads((tmp / "cmp.json").read_text())
    rows = doc["rows"]
    assert all(r["n_decisive"] == 0 and r["interval"][0] < 0.5 < r["interval"][1] for r in rows if r["reward"].startswith("implicit"))
    assert set(doc["length_bias"]) == {"in-distribution", "shifted"} and doc["settings"]["beta_from"] == "--beta"
    assert "length bias of shifted" in capsys.readouterr().out
    implicit = [r for r in rows if r["reward"].startswith("implicit")]
    assert all(r["accuracy"] == 0.5 for r in implicit)  # policy == reference: every implicit reward ties
    assert all(r["accuracy"] == 1.0 for r in rows if r["reward"].startswith("explicit"))
