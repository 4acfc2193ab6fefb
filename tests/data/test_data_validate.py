"""Every validation error names the file, line and field, says what is wrong and how to fix it;
the skip policy sets bad rows aside in a complete rejects file."""

from __future__ import annotations

import json

import pytest

from alignscope.data.loader import load_data
from alignscope.errors import ConfigError, DataError

GOOD = {"prompt": "p", "chosen": "a", "rejected": "b"}
GOOD_LIKE = {"completions": {"prompt": "p", "completions": ["a", "b"], "scores": [1, 2]}, "label": {"prompt": "p", "completion": "c", "label": 1}}
USER = {"role": "user", "content": "Hi"}


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row,field,problem,fix", [
    ({"prompt": "p", "chosen": "a", "rejected": None}, "rejected", "is missing", "--map rejected=YOUR_COLUMN"),
    ({"prompt": "p", "chosen": "", "rejected": "b"}, "chosen", "is empty", "fill in the text"),
    ({"prompt": "p", "chosen": "a", "rejected": " \n\t"}, "rejected", "is only whitespace", "fill in the text"),
    ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "prompt", "is only whitespace", "fill in the text"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected", "chosen is identical to rejected", "carries no preference"),
    ({"prompt": "p", "chosen": "a  b", "rejected": "a b\n"}, "rejected", "differ only in whitespace", "carries no preference"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "chosen", "expected text, got int", "store this field as a string"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}, "margin", "expected a number, got str", "store a number"),
    ({"prompt": [{"role": "usr", "content": "x"}], "chosen": "a", "rejected": "b"}, "prompt[0]",
     "unknown chat role 'usr' (did you mean 'user'?)", "use one of system, user, assistant, tool"),
    ({"prompt": [{"text": "x"}], "chosen": "a", "rejected": "b"}, "prompt[0]", "malformed message: no role", '{"role": "user"'),
    ({"prompt": [USER, "hello"], "chosen": "a", "rejected": "b"}, "prompt[1]", "the message is str, not an object", '{"role": ...'),
    ({"prompt": [USER], "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "chosen",
     "ends with user, not an assistant message", "end the conversation with the assistant's response"),
    ({"conversations": [{"from": "human", "value": "x"}], "chosen": {"from": "human", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}},
     "chosen", "is a user message, not the assistant's response", "give the assistant's message"),
    ({"prompt": "p", "completions": ["a", "b"], "ranks": [1, 1]}, "ranks", "ranks have ties [1, 1]", "distinct rank"),
    ({"prompt": "p", "completions": ["a", "b", "c"], "scores": [1, 2]}, "scores", "has 2 values for 3 completions", "one value per completion"),
    ({"prompt": "p", "completions": ["a"], "scores": [1]}, "completions", "at least 2 completions, got 1", "add completions"),
    ({"prompt": "p", "completions": ["a", "b"], "scores": [1, "x"]}, "scores[1]", "expected a number", "store a number"),
    ({"prompt": "p", "completion": "c", "label": "maybe"}, "label", "label must be boolean, got 'maybe'", "use true/false"),
    ({"messages": [{"role": "assistant", "content": "x"}], "label": True}, "messages", "no prompt turns", "start the conversation"),
])
def test_each_error_names_file_line_field_problem_and_fix(tmp_path, row, field, problem, fix):
    good = next((g for key, g in GOOD_LIKE.items() if key in row), GOOD)
    path = write(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataError) as e:
        load_data(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}, line 2, field '{field}': "), msg
    assert problem in msg and "\n  fix: " in msg and fix in msg, msg


@pytest.mark.parametrize("label,expected", [(True, True), (0, False), (1.0, True), ("true", True), ("False", False), ("1", True), ("0", False)])
def test_boolean_like_labels(label, expected):
    assert load_data([{"prompt": "p", "completion": "c", "label": label}]).examples[0].label is expected


def test_fail_policy_raises_the_first_error_with_a_count(tmp_path):
    path = write(tmp_path / "d.jsonl", [GOOD, {**GOOD, "chosen": ""}, GOOD, {**GOOD, "rejected": "a"}, "{oops"])
    with pytest.raises(DataError) as e:
        load_data(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}, line 2, field 'chosen': is empty")
    assert "3 of 5 rows have problems" in msg and f"alignscope data inspect {path}" in msg and "on_error='skip'" in msg
    assert not list(tmp_path.glob("*rejects*")), "fail must not write anything"


def test_skip_policy_writes_rejects_atomically(tmp_path):
    path = write(tmp_path / "d.jsonl", [GOOD, {**GOOD, "chosen": ""}, GOOD, {**GOOD, "rejected": "a"}, "{oops"])
    messages = []
    data = load_data(path, on_error="skip", rejects_path=tmp_path / "out" / "rejects.jsonl", log=messages.append)
    assert (len(data.examples), data.n_rows, data.n_rejected) == (2, 5, 3)
    assert data.rejects_path == tmp_path / "out" / "rejects.jsonl"
    rejects = [json.loads(x) for x in data.rejects_path.read_text().splitlines()]
    assert [(r["line"], r["field"], r["kind"]) for r in rejects] == [(2, "chosen", "empty"), (4, "rejected", "identical"), (5, None, "json")]
    assert rejects[0]["row"] == {**GOOD, "chosen": ""} and rejects[2]["row"] == "{oops" and rejects[0]["fix"]
    assert messages == [f"alignscope: skipped 3 of 5 rows with problems; they are in {data.rejects_path}"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["rejects.jsonl"], "no temp file left behind"


def test_skip_policy_default_rejects_path_and_printed_count(tmp_path, capsys, monkeypatch):
    path = write(tmp_path / "data" / "d.jsonl", [GOOD, {**GOOD, "chosen": ""}])
    monkeypatch.chdir(tmp_path)
    data = load_data(path, on_error="skip")
    # The rejects go to the working directory: the data folder (maybe shared or read-only) is never written.
    assert data.rejects_path == tmp_path / "d.jsonl.rejects.jsonl" and data.rejects_path.exists()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["d.jsonl"]
    assert "skipped 1 of 2 rows" in capsys.readouterr().err


def test_skip_policy_with_invalid_utf8_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "\xff", "chosen": "a", "rejected": "b"}\n')
    data = load_data(path, on_error="skip", rejects_path=tmp_path / "r.jsonl", log=lambda m: None)
    assert data.n_rejected == 1 and "invalid UTF-8 (byte 0xff at byte offset 12" in json.loads((tmp_path / "r.jsonl").read_text())["error"]


def test_no_valid_rows_is_an_error(tmp_path):
    path = write(tmp_path / "d.jsonl", [{**GOOD, "chosen": ""}, {**GOOD, "rejected": "a"}])
    with pytest.raises(DataError, match="no valid records: all 2 rows were rejected .* the first, line 1: is empty"):
        load_data(path, on_error="skip", rejects_path=tmp_path / "r.jsonl", log=lambda m: None)
    with pytest.raises(ConfigError, match="unknown error policy on_error='skp' \\(did you mean 'skip'\\?\\)"):
        load_data(path, on_error="skp")
