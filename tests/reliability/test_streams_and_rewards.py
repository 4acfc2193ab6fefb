"""Issue #21, the behaviours that need more than argv -> message: `data inspect` streams a file of any size in bounded
memory and gives the report a whole read gives; readers neither merge nor misread rows; user reward code that raises
or hangs is reported with the function and the prompt, and RL keeps the checkpoints written before it."""

from __future__ import annotations

import gzip
import json
import time
import tracemalloc
from pathlib import Path

import pytest

import alignscope.data.inspect as inspect_module
from alignscope.cli.main import main
from alignscope.data.inspect import collect, inspect_data, summarize
from alignscope.data.loader import load_data
from alignscope.errors import AlignscopeError, RewardError
from alignscope.rewards.sources import FunctionReward
from alignscope.training import checkpoint as ckpt

BAD = Path(__file__).parent / "bad_inputs"
DATA_FILES = sorted(p for p in BAD.iterdir() if p.suffix in (".jsonl", ".json", ".csv"))


def run(argv: list[str] | str, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv.split() if isinstance(argv, str) else argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _both(source, **kw):
    """The streamed report and the report of a whole read, or the error each raises."""
    results = []
    for fn in (lambda: inspect_data(source, **kw), lambda: summarize(collect(source, **kw))):
        try:
            results.append(fn())
        except AlignscopeError as e:
            results.append(("error", str(e)))
    return results


@pytest.mark.parametrize("path", DATA_FILES, ids=[p.name for p in DATA_FILES])
def test_streamed_report_equals_a_whole_read(path, monkeypatch):
    """Every corpus file, in chunks of 2 rows: the same report (or error) as reading the file whole."""
    monkeypatch.setattr(inspect_module, "CHUNK_ROWS", 2)
    streamed, whole = _both(path)
    assert streamed == whole


def test_streamed_report_equals_a_whole_read_across_chunks(tmp_path, monkeypatch):
    """Duplicates, problems, limits and a --map across chunk borders, with format detection settled past the head."""
    monkeypatch.setattr(inspect_module, "CHUNK_ROWS", 3)
    monkeypatch.setattr(inspect_module, "HEAD_ROWS", 4)
    rows = [{"q": f"p{i % 5}", "chosen": f"yes {i % 3}", "rejected": "no" if i % 7 else f"yes {i % 3}"} for i in range(40)]
    rows[33]["extra"] = 1
    lines = [json.dumps(r) for r in rows]
    lines[17] = "{broken"
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    for kw in ({"mapping": {"prompt": "q"}}, {"mapping": {"prompt": "q"}, "limit": 11}, {"mapping": {"prompt": "q"}, "format": "dpo"}):
        streamed, whole = _both(path, **kw)
        assert streamed == whole and streamed["rows"] == kw.get("limit", 40)
    late = tmp_path / "late.jsonl"  # the mapped column appears only after the head
    late.write_text("\n".join(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", **({"src": "x"} if i == 30 else {})})
                              for i in range(40)) + "\n")
    streamed, whole = _both(late, mapping={"source": "src"})
    assert streamed == whole and streamed["valid"] == 40


def test_inspect_memory_does_not_grow_with_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(inspect_module, "CHUNK_ROWS", 50)
    monkeypatch.setattr(inspect_module, "HEAD_ROWS", 50)
    row = lambda i: json.dumps({"prompt": f"q{i} " + "x" * 1500, "chosen": "yes " * 400 + str(i), "rejected": "no " * 400})  # noqa: E731
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    small.write_text("".join(row(i) + "\n" for i in range(60)))
    big.write_text("".join(row(i) + "\n" for i in range(2000)))
    inspect_data(small)  # imports and caches outside the measurement
    peaks = []
    for path in (small, big):
        tracemalloc.start()
        report = inspect_data(path)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert report["rows"] == 2000 and report["valid"] == 2000
    assert big.stat().st_size > 7_000_000
    assert peaks[1] < big.stat().st_size / 4, f"peak {peaks[1] / 1e6:.1f} MB for a {big.stat().st_size / 1e6:.1f} MB file"
    assert peaks[1] < 3 * peaks[0] + 1_000_000, "33 times the rows, about the same memory"


def test_inspect_limit_reads_only_the_first_rows(tmp_path, capsys):
    path = tmp_path / "d.jsonl.gz"
    good = "".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(50)).encode()
    path.write_bytes(gzip.compress(good) + b"\x1f\x8b\x08\x00broken stream")  # a second, corrupt gzip member after row 50
    code, out, err = run(f"data inspect {path} --limit 10 --json --no-progress", capsys)
    assert code == 0 and json.loads(out)["rows"] == 10
    code, out, err = run(f"data inspect {path} --no-progress", capsys)
    assert code == 2 and "cannot decompress" in err


def test_inspect_shows_progress_and_counts_on_stderr(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(30))
                    + '{"prompt": "q", "chosen": "same", "rejected": "same"}\n')
    code, out, err = run(f"data inspect {path}", capsys)
    assert code == 0 and f"reading {path}" in err and "inspecting" in err
    assert "read 31 rows: 30 valid, 1 with problems" in err and "line 31, field 'rejected'" in out
    code, out, err = run(f"data inspect {path} --strict --no-progress", capsys)
    assert code == 1 and err.strip().startswith("alignscope: --strict: 1 of 31 rows have problems")


def test_csv_cell_that_looks_like_json_stays_text(tmp_path):
    """A response '[1, 2, 3]' is an answer, not a list; a messages cell is still read as messages, scores as numbers."""
    msgs = json.dumps([{"role": "user", "content": "Hi"}]).replace('"', '""')
    (tmp_path / "d.csv").write_text('prompt,chosen,rejected\nlist three numbers,"[1, 2, 3]","{a}"\n'
                                    f'"{msgs}","{{""x"": 1}}",no\n')
    data = load_data(tmp_path / "d.csv")
    assert [(e.prompt, e.chosen, e.rejected) for e in data.examples] == [
        ("list three numbers", "[1, 2, 3]", "{a}"), ([{"role": "user", "content": "Hi"}], '{"x": 1}', "no")]
    (tmp_path / "r.csv").write_text('prompt,completions,scores\nq,"[""a"", ""b""]","[2, 1]"\n')
    (ex,) = load_data(tmp_path / "r.csv").examples
    assert list(ex.completions) == ["a", "b"]


def test_every_row_is_read_or_rejected_with_its_line(tmp_path, capsys):
    """on_error=skip: rows read + rows rejected = rows in the file, each rejected one with its own line."""
    lines = [json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) for i in range(12)]
    lines[3] = '{"prompt": "q", "chosen": "a", "chosen": "b", "rejected": "c"}'
    lines[7] = '{"prompt": "q", "chosen": "a", "rejected": "b", "margin": ' + "9" * 400 + "}"
    lines[9] = "not json"
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    data = load_data(path, on_error="skip", rejects_path=tmp_path / "rejects.jsonl", log=lambda m: None)
    rejected = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert data.n_rows == 12 and len(data.examples) + data.n_rejected == 12
    assert [r["line"] for r in rejected] == [4, 8, 10]


def test_reward_timeout_names_the_function_and_prompt():
    def slow(prompts, responses):
        time.sleep(5)
        return [0.0] * len(responses)

    reward = FunctionReward(slow, timeout=0.2)
    t0 = time.time()
    with pytest.raises(RewardError, match=r"reward 'slow' took longer than 0.2s on 2 responses \(first prompt 'Is it red\?'\)"):
        reward(["Is it red?", "Is it blue?"], ["yes", "no"])
    assert time.time() - t0 < 2


def test_reward_that_raises_names_the_first_prompt_it_fails_on():
    def picky(prompts, responses):
        return [1.0 / (len(r) - 2) for r in responses]

    with pytest.raises(RewardError, match=r"raised ZeroDivisionError: float division by zero on the response 'no' to prompt 'Q2'") as e:
        FunctionReward(picky)(["Q1", "Q2"], ["yes", "no"])
    assert "fix the reward function" in str(e.value)


REWARDS = """
import time

CALLS = []


def fails_late(prompts, responses):  # the grader goes down at the third step
    CALLS.append(len(responses))
    if len(CALLS) > 2:
        raise ValueError("the grader is down")
    return [float(len(r)) for r in responses]


def hangs(prompts, responses):
    time.sleep(30)
    return [0.0] * len(responses)
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    from alignscope.models.tiny import tiny_llama, train_bpe_tokenizer

    d = tmp_path_factory.mktemp("rl")
    prompts = [f"Question {i}: is the sky blue?" for i in range(8)]
    tok = train_bpe_tokenizer(prompts, vocab_size=150)
    tiny_llama(tok, hidden_size=16, num_layers=1, num_heads=2, seed=0).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    (d / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    (d / "rewards.py").write_text(REWARDS)
    return {"d": d, "model": d / "model", "prompts": d / "prompts.jsonl", "rewards": d / "rewards.py"}


def _rl(tiny, out: Path, reward: str, extra: str = "") -> str:
    return (f"train rl model={tiny['model']} prompts={tiny['prompts']} reward={tiny['rewards']}:{reward} output_dir={out} "
            f"progress=false steps=4 save_steps=1 prompts_per_step=2 samples_per_prompt=2 max_new_tokens=3 {extra}")


def test_rl_reward_failing_mid_run_keeps_its_checkpoints(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(_rl(tiny, out, "fails_late"), capsys)
    assert code == 2, err[-2000:]
    assert "reward 'fails_late' at step 3: reward" in err and "raised ValueError: the grader is down on the response" in err
    assert "to prompt 'Question" in err and "the last checkpoint is kept (resume with --resume)" in err
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]


def test_rl_reward_that_hangs_stops_at_the_timeout(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    t0 = time.time()
    code, _, err = run(_rl(tiny, out, "hangs", "reward_timeout=0.5"), capsys)
    assert code == 2 and time.time() - t0 < 20, err[-2000:]
    assert "reward 'hangs' at step 1 took longer than reward_timeout=0.5s on 4 responses (first prompt 'Question" in err


@pytest.mark.parametrize("command", ["bon", "select-prompts", "audit rm", "compare-rm"])
def test_reward_timeout_flag_stops_a_hanging_reward_in_every_command(tiny, tmp_path, capsys, command):
    reward, prompts, model = f"{tiny['rewards']}:hangs", tiny["prompts"], tiny["model"]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Question 1: is the sky blue?", "chosen": "yes", "rejected": "no"}) + "\n")
    argv = {
        "bon": f"bon --policy {model} --prompts {prompts} --reward {reward} --n 2 --max-new-tokens 3 --out {tmp_path / 'b.jsonl'}",
        "select-prompts": f"select-prompts --policy {model} --prompts {prompts} --reward {reward} --n 2 --max-new-tokens 3 "
                          f"--out {tmp_path / 's.jsonl'}",
        "audit rm": f"audit rm --rm {reward} --policy {model} --prompts {prompts} --n 2 --limit 2 --max-new-tokens 3 --out {tmp_path / 'a'}",
        "compare-rm": f"compare-rm --policy {model} --ref {model} --beta 0.1 --rm {reward} --pairs {pairs}",
    }[command]
    t0 = time.time()
    code, _, err = run(argv + " --reward-timeout 0.5", capsys)
    assert code == 2 and time.time() - t0 < 20, err[-2000:]
    assert "hangs" in err and "took longer than" in err and "Traceback" not in err
