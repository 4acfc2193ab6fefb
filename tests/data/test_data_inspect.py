"""`alignscope data inspect`: the report's figures on small files, the CLI, and every shared data file."""

from __future__ import annotations

import json

import pytest

from alignscope.cli.main import main
from alignscope.data.inspect import format_report, inspect_data

ROWS = [
    {"prompt": "Q1", "chosen": "a much longer answer", "rejected": "short"},
    {"prompt": "Q2", "chosen": "ok", "rejected": "a longer rejected answer"},
    {"prompt": "Q1", "chosen": "a much longer answer", "rejected": "short"},
    {"prompt": "Q3", "chosen": "same  text", "rejected": "same text"},
    {"prompt": "Q4", "chosen": "", "rejected": "x"},
]


@pytest.fixture()
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.fixture()
def tok_dir(tmp_path, bpe_tokenizer):
    bpe_tokenizer.save_pretrained(str(tmp_path / "tok"))
    return str(tmp_path / "tok")


def test_report_figures(pairs_file, char_tok):
    r = inspect_data(pairs_file, char_tok)
    assert (r["format"], r["rows"], r["valid"], r["problems_total"]) == ("pairwise", 5, 3, 2)
    assert r["problems_by_kind"] == {"near-identical": 1, "empty": 1}
    assert [(p["line"], p["field"]) for p in r["problems"]] == [(4, "rejected"), (5, "chosen")]
    assert (r["duplicate_prompts"], r["duplicate_pairs"], r["identical_pairs"], r["near_identical_pairs"]) == (1, 1, 0, 1)
    assert r["length_bias_chars"] == pytest.approx(2 / 3, abs=1e-3) and r["length_bias_tokens"] == pytest.approx(2 / 3, abs=1e-3)
    assert r["token_lengths"]["chosen"]["max"] == len("a much longer answer")
    assert set(r["token_lengths"]) == {"prompt", "chosen", "rejected"}
    text = format_report(r)
    assert "length bias: chosen is longer than rejected in 66.7% of pairs" in text
    assert "problems: 2 (near-identical 1, empty 1):" in text and "line 5, field 'chosen': is empty" in text


def test_limit_and_other_formats(tmp_path, pairs_file, char_tok):
    r = inspect_data(pairs_file, char_tok, limit=2)
    assert (r["rows"], r["valid"], r["problems_total"]) == (2, 2, 0)
    kto = tmp_path / "kto.jsonl"
    kto.write_text("".join(json.dumps({"prompt": "p", "completion": "c" * (i + 1), "label": i % 4 == 0}) + "\n" for i in range(8)))
    r = inspect_data(kto, char_tok)
    assert r["format"] == "unpaired" and r["desirable_fraction"] == 0.25 and r["token_lengths"]["completion"]["max"] == 8
    ranked = [{"prompt": "p", "completions": ["aaa", "b", "cc"], "scores": [3, 1, 2]}]
    r = inspect_data(ranked, char_tok)
    assert r["format"] == "ranked" and r["length_bias_chars"] == 1.0 and r["token_lengths"]["completions"]["mean"] == 2.0


def test_cli_inspect_text_and_json(pairs_file, tok_dir, capsys):
    assert main(["data", "inspect", str(pairs_file), "--tokenizer", tok_dir]) == 0
    out = capsys.readouterr().out
    assert "format: pairwise (columns prompt/chosen/rejected)" in out and "rows: 5 (3 valid, 2 with problems)" in out
    assert "token lengths" in out and "length bias" in out
    assert main(["data", "inspect", str(pairs_file), "--tokenizer", tok_dir, "--json", "--limit", "3"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["rows"], r["valid"], r["duplicate_pairs"]) == (3, 3, 1)


def test_cli_map_and_format(tmp_path, tok_dir, capsys):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "What?", "answer": "That."}) + "\n")
    assert main(["data", "inspect", str(path), "--tokenizer", tok_dir, "--map", "prompt=question", "--map", "completion=answer", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "sft"
    assert main(["data", "inspect", str(path), "--tokenizer", tok_dir, "--map", "prompt=question", "--format", "prompt", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["format"], r["detected_by"]) == ("prompt", "given as 'prompt'")
    assert main(["data", "inspect", str(path), "--map", "prompt"]) == 2
    assert "--map 'prompt' is not NEW=OLD" in capsys.readouterr().err


def test_cli_errors_exit_2_before_loading_a_tokenizer(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "missing.jsonl"), "--tokenizer", str(tmp_path / "no-tokenizer")]) == 2
    assert "missing.jsonl: the file does not exist" in capsys.readouterr().err


def test_cli_help(capsys):
    with pytest.raises(SystemExit):
        main(["data", "inspect", "--help"])
    out = capsys.readouterr().out
    assert "--map NEW=OLD" in out and "--tokenizer PATH_OR_NAME" in out and "--limit N" in out and "--json" in out



def test_cli_parser_is_built_without_importing_torch():
    # `alignscope --help` and every `--help` answer in a fraction of a second: torch loads only to run a command.
    import subprocess
    import sys

    code = "import sys; from alignscope.cli.main import build_parser; build_parser(); print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

SHARED = {
    "hh_rlhf_harmless/test.jsonl.gz": ("pairwise", 2312, []),
    "ultrafeedback_sample/train_clean.jsonl": ("pairwise", 1000, []),
    "ultrafeedback_sample/eval_clean.jsonl": ("pairwise", 200, []),
    "llamafactory_demo/dpo_en_demo.json": ("pairwise", 300, []),
    "llamafactory_demo/kto_en_demo.json": ("unpaired", 300, []),
    "xstest/xstest_prompts.csv": ("prompt", 450, []),
    "gsm8k/test.jsonl": ("prompt", 1319, ["--map", "prompt=question"]),
}


@pytest.mark.shared
@pytest.mark.parametrize("name", sorted(SHARED))
def test_inspect_every_shared_file(shared_data, name, capsys):
    from alignscope.models.loading import byte_tokenizer

    fmt, rows, extra = SHARED[name]
    mapping = dict([extra[1].split("=")]) if extra else None
    r = inspect_data(shared_data / name, byte_tokenizer(), mapping=mapping)
    assert (r["format"], r["rows"]) == (fmt, rows)
    assert r["valid"] >= 0.99 * rows and r["token_lengths"]["prompt"]["min"] > 0
    if fmt == "pairwise":
        assert 0.3 < r["length_bias_tokens"] < 0.7


@pytest.mark.shared
@pytest.mark.slow
def test_cli_inspect_hh_with_default_tokenizer(shared_data, capsys):
    assert main(["data", "inspect", str(shared_data / "hh_rlhf_harmless/test.jsonl.gz"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["format"], r["rows"], r["valid"]) == ("pairwise", 2312, 2303)
    assert r["problems_by_kind"] == {"prefix": 5, "empty": 4}
