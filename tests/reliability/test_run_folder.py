"""Run folders, checkpoints and outputs under stress (issue #21): a stale lock, --overwrite, damaged
but parseable checkpoints, a wrong reference cache, write failures mid-run, identical pairs after
truncation, and `data inspect`'s exit status. Each trains a tiny model for a few steps in-process."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from alignscope import run_files as rf
from alignscope.atomic import write_text
from alignscope.cli.main import main
from alignscope.errors import OutputError
from alignscope.training import checkpoint as ckpt

PAIRS = [{"prompt": f"Question {i}: is it {w}?", "chosen": f"yes it is {w} and good", "rejected": f"no it is not {w} at all"}
         for i, w in enumerate(["red", "blue", "green", "big", "small", "hot", "cold", "new"])]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    from alignscope.models.tiny import tiny_llama, train_bpe_tokenizer

    d = tmp_path_factory.mktemp("runs")
    texts = [r[k] for r in PAIRS for k in ("prompt", "chosen", "rejected")]
    tok = train_bpe_tokenizer(texts, vocab_size=200)
    tiny_llama(tok, hidden_size=16, num_layers=1, num_heads=2, seed=0).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return {"d": d, "model": d / "model", "data": d / "pairs.jsonl"}


def run(argv: str, capsys) -> tuple[int, str]:
    try:
        code = main(argv.split())
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out + err


def sft(base, out: Path, extra: str = "") -> str:
    return (f"train sft model={base['model']} data={base['data']} output_dir={out} progress=false batch_size=4 "
            f"max_steps=4 save_steps=2 keep_last=3 lr=1e-3 {extra}")


@pytest.fixture(scope="module")
def finished(base, tmp_path_factory) -> Path:
    """One complete SFT run (checkpoint-2, checkpoint-4, final/) that the tests copy and damage."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(sft(base, out).split()) == 0
    return out


def test_stale_lock_of_a_dead_process_is_removed(base, finished, tmp_path, capsys):
    out = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out.mkdir()
    (out / rf.LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
    code, text = run(sft(base, out), capsys)
    assert code == 0, text[-2000:]
    assert f"removing the stale lock of process {dead.pid}" in text
    assert not (out / rf.LOCK).exists() and (out / "final").is_dir()


def test_overwrite_replaces_a_finished_run(base, finished, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "checkpoint-2" / "marker").write_text("old run")
    code, text = run(sft(base, out, "max_steps=2") + " --overwrite", capsys)
    assert code == 0, text[-2000:]
    assert "--overwrite: replacing a finished run" in text
    assert not (out / "checkpoint-4").exists() and not (out / "checkpoint-2" / "marker").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_overwrite_that_fails_validation_keeps_the_old_run(base, finished, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    code, text = run(sft(base, out, "batch_size=64") + " --overwrite", capsys)
    assert code == 2 and "fewer than one global batch" in text
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_resume_may_change_the_safe_keys(base, finished, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    code, text = run(sft(base, out, "max_steps=6 logging_steps=2 save_steps=3") + " --resume", capsys)
    assert code == 0, text[-2000:]
    assert "resumed from step 4 of 6" in text


DAMAGE = {
    "state.json is {}": lambda p: (p / "state.json").write_text("{}"),
    "state.json is a list": lambda p: (p / "state.json").write_text("[4]"),
    "state.json has another step": lambda p: (p / "state.json").write_text(
        json.dumps({**json.loads((p / "state.json").read_text()), "step": 3})),
    "trainer state without optimizer": lambda p: torch.save(
        {k: v for k, v in torch.load(p / "trainer_state.pt", weights_only=True).items() if k != "optimizer"}, p / "trainer_state.pt"),
    "trainer state without RNG": lambda p: torch.save(
        {k: v for k, v in torch.load(p / "trainer_state.pt", weights_only=True).items() if k != "torch_rng"}, p / "trainer_state.pt"),
    "trainer state is a list": lambda p: torch.save([1, 2], p / "trainer_state.pt"),
    "weights file with no tensors": lambda p: save_file({}, str(p / "model.safetensors")),
    "a weight of another shape": lambda p: _edit_weights(p, lambda t: {**t, "lm.lm_head.weight": t["lm.lm_head.weight"][:, :3].contiguous()}),
    "a weight missing": lambda p: _edit_weights(p, lambda t: {k: v for k, v in t.items() if k != "lm.model.norm.weight"}),
    "an unexpected weight": lambda p: _edit_weights(p, lambda t: {**t, "model.layers.9.mlp.up_proj.weight": torch.zeros(2, 2)}),
    "a weight holding NaN": lambda p: _edit_weights(p, lambda t: {**t, "lm.model.norm.weight": torch.full_like(t["lm.model.norm.weight"], float("nan"))}),
    "optimizer state of another model": lambda p: _edit_trainer(p, lambda s: s["optimizer"]["param_groups"][0].update(params=[0, 1])),
    "optimizer moment of another shape": lambda p: _edit_trainer(p, lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(2))),
}


def _edit_weights(path: Path, edit) -> None:
    save_file(edit(load_file(str(path / "model.safetensors"))), str(path / "model.safetensors"))


def _edit_trainer(path: Path, edit) -> None:
    state = torch.load(path / "trainer_state.pt", weights_only=True)
    edit(state)
    torch.save(state, path / "trainer_state.pt")


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_damaged_checkpoint_falls_back_to_the_previous(base, finished, tmp_path, capsys, damage):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    DAMAGE[damage](out / "checkpoint-4")
    code, text = run(sft(base, out) + " --resume", capsys)
    assert code == 0, text[-2000:]
    assert "checkpoint-4 is incomplete (" in text and "using the previous one" in text
    assert "resumed from step 2 of 4" in text


CACHE_DAMAGE = {
    "too short": (lambda path, good: save_file({"logps": good[:3].contiguous()}, str(path)), "(3,) values for {n} responses"),
    "NaN values": (lambda path, good: save_file({"logps": torch.full_like(good, float("nan"))}, str(path)), "non-finite values"),
    "a matrix": (lambda path, good: save_file({"logps": good.reshape(-1, 1).contiguous()}, str(path)), "({n}, 1) values for {n} responses"),
    "not safetensors": (lambda path, good: path.write_bytes(b"\x00" * 64), "SafetensorError"),
    "another tensor name": (lambda path, good: save_file({"values": good}, str(path)), "KeyError"),
}


@pytest.fixture(scope="module")
def cached_dpo(base, tmp_path_factory) -> tuple[Path, torch.Tensor, str]:
    """One DPO run that filled a reference log-prob cache: (cache file, its values, the command to run again)."""
    d = tmp_path_factory.mktemp("cache")
    dpo = (f"train dpo model={base['model']} data={base['data']} progress=false batch_size=4 max_steps=1 "
           f"ref_cache_dir={d / 'cache'} output_dir=")
    assert main((dpo + str(d / "a")).split()) == 0
    (path,) = (d / "cache").glob("*.safetensors")
    return path, load_file(str(path))["logps"], dpo


@pytest.mark.parametrize("damage", list(CACHE_DAMAGE), ids=list(CACHE_DAMAGE))
def test_wrong_reference_cache_is_recomputed(cached_dpo, tmp_path, capsys, damage):
    path, good, dpo = cached_dpo
    spoil, why = CACHE_DAMAGE[damage]
    spoil(path, good)
    code, text = run(dpo + str(tmp_path / "b"), capsys)
    assert code == 0, text[-2000:]
    assert f"the reference log-prob cache {path} is wrong (" in text and "); recomputing it" in text
    assert why.format(n=len(good)) in text
    assert torch.equal(load_file(str(path))["logps"], good)


@pytest.mark.parametrize("where", ["torch.save", "save_file"])
def test_write_failure_keeps_the_last_good_checkpoint(base, tmp_path, capsys, monkeypatch, where):
    out = tmp_path / "run"
    real = getattr(ckpt.torch, "save") if where == "torch.save" else ckpt.save_file
    calls = []

    def full_disk(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint (step 4)
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/0: file write failed")
        return real(*a, **k)

    if where == "torch.save":
        monkeypatch.setattr(ckpt.torch, "save", full_disk)
    else:
        monkeypatch.setattr(ckpt, "save_file", full_disk)
    code, text = run(sft(base, out, "max_steps=6"), capsys)
    assert code == 2, text[-2000:]
    assert "could not write checkpoint-4" in text and "the last good checkpoint, checkpoint-2, is kept" in text
    assert "fix: free disk space" in text
    assert [p.name for p in out.iterdir() if "checkpoint" in p.name] == ["checkpoint-2"]
    assert ckpt.load_latest(out) is not None and not (out / rf.LOCK).exists()


def test_final_folder_write_failure_keeps_the_checkpoint_and_resume_writes_it(base, tmp_path, capsys, monkeypatch):
    """save_pretrained failing half-way (a full disk mid-file) leaves no half-written final/: the last checkpoint is
    kept, and --resume writes final/ from it."""
    from transformers import PreTrainedModel

    out = tmp_path / "run"
    real = PreTrainedModel.save_pretrained

    def full_disk(self, folder, *a, **k):
        real(self, folder, *a, **k)
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("SafetensorError: No space left on device (os error 28)")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk)
    code, text = run(sft(base, out), capsys)
    assert code == 2, text[-2000:]
    assert f"could not write {out / 'final'} (RuntimeError: SafetensorError: No space left on device (os error 28)); checkpoint-4 is kept" in text
    assert "run again with --resume (it starts from checkpoint-4 and writes final/)" in text
    assert not (out / "final").exists() and not (out / ".tmp-final").exists() and not (out / rf.LOCK).exists()
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    monkeypatch.undo()
    code, text = run(sft(base, out) + " --resume", capsys)
    assert code == 0 and "resumed from step 4 of 4" in text, text[-2000:]
    assert (out / "final" / "model.safetensors").stat().st_size > 100


def test_final_folder_failure_keeps_an_older_final(base, finished, tmp_path, capsys, monkeypatch):
    """A resumed run that cannot write its new final/ keeps the previous one whole."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = (out / "final" / "model.safetensors").read_bytes()

    def broken(self, folder, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("transformers.PreTrainedTokenizerBase.save_pretrained", broken)
    code, text = run(sft(base, out, "max_steps=6") + " --resume", capsys)
    assert code == 2 and "No space left on device" in text and "checkpoint-6 is kept" in text, text[-2000:]
    assert (out / "final" / "model.safetensors").read_bytes() == before
    assert not [p.name for p in out.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_metrics_write_failure_ends_cleanly_with_the_checkpoint_kept(base, tmp_path, capsys, monkeypatch):
    import errno

    out = tmp_path / "run"
    real = rf.append_jsonl

    def append(path, row):
        if Path(path).name == rf.METRICS and row.get("step") == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, row)

    monkeypatch.setattr(rf, "append_jsonl", append)
    code, text = run(sft(base, out), capsys)
    assert code == 2, text[-2000:]
    assert "No space left on device" in text and "fix: free disk space" in text and "resumes with --resume" in text
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-2"] and not (out / rf.LOCK).exists()
    assert [json.loads(line)["step"] for line in (out / rf.METRICS).read_text().splitlines()] == [1, 2]


def test_reference_cache_write_failure_leaves_no_folder(base, tmp_path, capsys, monkeypatch):
    from alignscope.training import loop

    def full_disk(*a, **k):
        raise RuntimeError("No space left on device")

    monkeypatch.setattr(loop, "save_file", full_disk)
    out = tmp_path / "run"
    code, text = run(f"train dpo model={base['model']} data={base['data']} progress=false batch_size=4 max_steps=1 "
                     f"output_dir={out}", capsys)
    assert code == 2, text[-2000:]
    assert f"could not write {out / 'ref_cache'}" in text and "(RuntimeError: No space left on device); nothing was written" in text
    assert not out.exists(), "no run folder, no empty ref_cache folder"


def test_rejects_write_failure_is_a_message(base, tmp_path, capsys, monkeypatch):
    data = tmp_path / "mixed.jsonl"
    data.write_text(base["data"].read_text() + '{"prompt": "q", "chosen": "a", "rejected": "a"}\n')

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("alignscope.atomic.os.replace", full_disk)
    out = tmp_path / "run"
    code, text = run(f"train dpo model={base['model']} data={data} on_error=skip progress=false batch_size=4 max_steps=1 "
                     f"output_dir={out}", capsys)
    assert code == 2, text[-2000:]
    assert "could not write" in text and "rejects" in text and "nothing was written" in text
    assert not out.exists()


@pytest.mark.parametrize("method", ["rank", "rm", "dpo"])
def test_identical_after_truncation_is_counted_for_every_method_with_groups(base, tmp_path, capsys, method):
    if method == "rank":
        rows = [{"prompt": f"q{i}", "completions": ["same start then a", "same start then b", "same start then c"],
                 "scores": [3, 2, 1]} for i in range(4)]
    else:
        rows = [{"prompt": f"q{i}", "chosen": "same start then yes", "rejected": "same start then no"} for i in range(4)]
    data = tmp_path / "cut.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, text = run(f"train {method} model={base['model']} data={data} output_dir={tmp_path / 'r'} progress=false batch_size=4 "
                     "max_steps=1 max_length=4 max_prompt_length=2", capsys)
    assert code == 0, text[-2000:]
    assert "warning: 4 pairs (or rankings) have responses that are identical after truncation" in text


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "table.json"
    path.write_text("old")

    def broken(*a, **k):
        raise RuntimeError("ArrowIOError: No space left on device")

    monkeypatch.setattr("alignscope.atomic.os.replace", broken)
    with pytest.raises(OutputError, match="could not write .*table.json .*the previous file is kept"):
        write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["table.json"]


def test_inspect_exit_status(base, tmp_path, capsys):
    bad = Path(__file__).parent / "bad_inputs" / "identical_pair.jsonl"
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(base["data"].read_text() + '{"prompt": "q", "chosen": "a", "chosen": "b", "rejected": "c"}\n')
    tok = f"--tokenizer {base['model']}"
    code, text = run(f"data inspect {bad} {tok} --no-progress", capsys)
    assert code == 1 and "no row of 1 is valid" in text
    code, text = run(f"data inspect {mixed} {tok}", capsys)
    assert code == 0 and "line 9: the key 'chosen' appears twice" in text and f"reading {mixed}" in text
    code, text = run(f"data inspect {mixed} {tok} --strict --no-progress", capsys)
    assert code == 1 and "--strict: 1 of 9 rows have problems" in text and "reading" not in text


def test_long_csv_cell_is_read(base, tmp_path, capsys):
    data = tmp_path / "long.csv"
    data.write_text("prompt,chosen,rejected\nq," + "y" * 200_000 + ",no\n")
    code, text = run(f"data inspect {data} --tokenizer {base['model']} --json --no-progress", capsys)
    assert code == 0, text[-2000:]
    assert json.loads(text)["valid"] == 1
