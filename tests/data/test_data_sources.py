"""Every source type yields the same records, and unreadable input is reported by file and line."""

from __future__ import annotations

import gzip
import json

import pytest

from alignscope.data.loader import load_data
from alignscope.data.sources import read_rows
from alignscope.errors import DataError

ROWS = [
    {"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5", "source_id": 1},
    {"prompt": "Q: 3+3?", "chosen": " 6", "rejected": " 7", "source_id": 2},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _check(data, source_suffix=""):
    assert data.format == "pairwise" and data.n_rows == 2 and data.n_rejected == 0
    assert [(e.prompt, e.chosen, e.rejected) for e in data.examples] == [("Q: 2+2?", " 4", " 5"), ("Q: 3+3?", " 6", " 7")]
    assert data.source.endswith(source_suffix)


def test_jsonl_and_gzip(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    _check(load_data(path), "d.jsonl")
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(path.read_bytes()))
    _check(load_data(tmp_path / "d.jsonl.gz"), "d.jsonl.gz")


def test_json_list_and_wrapped(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(ROWS, indent=2))
    _check(load_data(tmp_path / "list.json"))
    for key in ("data", "train"):
        (tmp_path / f"{key}.json").write_text(json.dumps({"meta": {"v": 1}, key: ROWS}, indent=2))
        _check(load_data(tmp_path / f"{key}.json"))
    (tmp_path / "splits.json").write_text(json.dumps({"test": ROWS}))
    _check(load_data(tmp_path / "splits.json", split="test"))
    with pytest.raises(DataError, match="no list of records under 'train'.*lists under \\['test'\\]"):
        load_data(tmp_path / "splits.json")


def test_json_records_are_numbered_by_file_line(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"data": [ROWS[0], {**ROWS[1], "chosen": ""}]}, indent=2))
    rows = read_rows(tmp_path / "d.json").rows
    text = (tmp_path / "d.json").read_text().splitlines()
    assert [text[r.line - 1].strip() for r in rows] == ["{", "{"] and rows[0].line < rows[1].line
    with pytest.raises(DataError, match=f"d.json, line {rows[1].line}, field 'chosen'"):
        load_data(tmp_path / "d.json")


def test_json_file_holding_json_lines(tmp_path):
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    _check(load_data(tmp_path / "lines.json"))


def test_csv_with_json_cells(tmp_path):
    (tmp_path / "d.csv").write_text('prompt,chosen,rejected,source_id\n"Q: 2+2?", 4, 5,1\n"Q: 3+3?", 6, 7,2\n')
    _check(load_data(tmp_path / "d.csv"))
    (tmp_path / "m.csv").write_text('prompt,chosen,rejected,margin\n"multi\nline",a,b,0.5\np,a,b,\n')
    data = load_data(tmp_path / "m.csv")
    assert [e.margin for e in data.examples] == [0.5, None] and read_rows(tmp_path / "m.csv").rows[1].line == 4
    msgs = json.dumps([{"role": "user", "content": "Hi"}]).replace('"', '""')
    (tmp_path / "chat.csv").write_text(f'prompt,completion\n"{msgs}",Hello\n')
    assert load_data(tmp_path / "chat.csv").examples[0].prompt == [{"role": "user", "content": "Hi"}]


def test_parquet_saved_dataset_and_objects(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    _check(load_data(tmp_path / "d.parquet"), "d.parquet")
    ds.save_to_disk(str(tmp_path / "saved"))
    _check(load_data(tmp_path / "saved"), "saved")
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    _check(load_data(tmp_path / "dd"))
    assert len(load_data(tmp_path / "dd", split="test").examples) == 1
    with pytest.raises(DataError, match="no split 'tset' \\(did you mean 'test'\\?\\)"):
        load_data(tmp_path / "dd", split="tset")
    _check(load_data(ds), "<dataset>")
    _check(load_data(datasets.DatasetDict({"train": ds})))
    _check(load_data(ROWS), "<list>")
    assert load_data(ROWS).examples[0].meta == {"source_id": 1}


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{\"prompt\": oops}\n" + json.dumps(ROWS[1]) + "\n")
    with pytest.raises(DataError) as e:
        load_data(path)
    assert "bad.jsonl, line 2: malformed JSON" in str(e.value) and "1 row has a problem" in str(e.value)


def test_invalid_utf8_reports_line_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + '{"prompt": "café", "chosen": "a", "rejected": "b"}'.encode("latin-1") + b"\n")
    with pytest.raises(DataError) as e:
        load_data(path)
    assert "latin1.jsonl, line 2: invalid UTF-8 (byte 0xe9 at byte offset 15 of the line)" in str(e.value)
    assert "iconv" in str(e.value)
    (tmp_path / "latin1.csv").write_bytes("prompt,completion\nok,fine\ncafé,x\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.csv, line 3: invalid UTF-8 \\(byte 0xe9 at byte offset 3"):
        load_data(tmp_path / "latin1.csv")
    (tmp_path / "latin1.json").write_bytes('[\n{"prompt": "café"}\n]'.encode("latin-1"))
    with pytest.raises(DataError, match="latin1.json, line 2: invalid UTF-8"):
        load_data(tmp_path / "latin1.json")


def test_missing_empty_and_unknown_files(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    with pytest.raises(DataError, match="trian.jsonl: the file does not exist \\(did you mean 'train.jsonl'\\?\\)"):
        load_data(tmp_path / "trian.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl: the file is empty"):
        load_data(tmp_path / "empty.jsonl")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="blank.jsonl: the dataset has no records"):
        load_data(tmp_path / "blank.jsonl")
    (tmp_path / "d.txt").write_text("hello")
    with pytest.raises(DataError, match="d.txt: unknown file type '.txt'.*\n  fix: use one of .jsonl"):
        load_data(tmp_path / "d.txt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="not a dataset saved with save_to_disk"):
        load_data(tmp_path / "folder")
    with pytest.raises(DataError, match="the dataset has no records"):
        load_data([])
