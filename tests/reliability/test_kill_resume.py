"""kill -9 at several points, including in the middle of a checkpoint write, for SFT, RM, DPO and
RL: resuming gives the same final parameters (<= 1e-6) and the same metrics as a run that was
never interrupted. Only the last `keep_last` checkpoints stay, and a corrupt or partial newest
checkpoint is reported and the previous one used.

Each killed run is a separate process (forked from the test, running the CLI's `main`) that
ends by SIGKILL: no cleanup, no flush, no atexit. Kills inside a checkpoint write are made
deterministic by ALIGNSCOPE_TEST_DIE_IN_CHECKPOINT=STEP:PHASE (training/checkpoint.py), with
which the process SIGKILLs itself; a kill between steps is sent from outside. Uninterrupted and
final resumed runs call the same `main` in this process.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tqdm import tqdm
from tqdm.auto import tqdm as tqdm_auto
from tqdm.std import TqdmDefaultWriteLock

from alignscope.cli.main import main
from alignscope.training.checkpoint import list_checkpoints

PAIRS = [
    {"prompt": f"Is the {thing} fine? ({i})", "chosen": good, "rejected": bad}
    for i, (thing, good, bad) in enumerate(
        zip(["cat", "sky", "tree", "sea", "car", "sun", "book", "road"] * 6,
            ["yes it is good", "sure that works", "indeed very good", "yes good answer"] * 12,
            ["no it is bad", "never that fails", "nope very bad", "no bad answer"] * 12)
    )
]
REWARD = "def reward(prompts, responses):\n    return [r.count('e') - 0.1 * len(r) for r in responses]\n"


@pytest.fixture(autouse=True)
def no_tokenizer_threads(monkeypatch):
    """Forked runs must not inherit the Rust tokenizer's thread pool (it deadlocks after fork)."""
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def run_here(argv: list[str]) -> None:
    assert main(argv) == 0


def run_killed(argv: list[str], die_at: str | None = None, kill_when: Path | None = None) -> None:
    """Run the CLI in a child process that ends by SIGKILL: its own, at checkpoint point `die_at`
    (STEP:PHASE), or ours, sent as soon as the file `kill_when` exists.

    The child is forked from this process, so it starts with every module imported: a kill costs
    the training steps only, not the seconds `python -m alignscope...` spends importing.
    """
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 70
        try:
            for bar in (tqdm, tqdm_auto):  # a lock another thread of ours may have held at the fork
                bar.set_lock(TqdmDefaultWriteLock())
            if die_at:
                os.environ["ALIGNSCOPE_TEST_DIE_IN_CHECKPOINT"] = die_at
            code = main(argv)
        finally:
            os._exit(code)
    deadline, status = time.time() + 300, None
    while status is None and time.time() < deadline:
        if kill_when is not None and kill_when.exists():
            os.kill(pid, signal.SIGKILL)
        done, st = os.waitpid(pid, os.WNOHANG)
        status = st if done else time.sleep(0.005)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the killed run neither died nor finished in 300 s")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"the run was not killed (status {status})"


def offline_argv(method: str, data: Path, out: Path, **over) -> list[str]:
    opts = {"model": "tiny", "data": data, "output_dir": out, "batch_size": 4, "max_length": 48, "lr": 3e-3,
            "max_steps": 8, "save_steps": 2, "keep_last": 2, "progress": "false", **over}
    return ["train", method, *(f"{k}={v}" for k, v in opts.items())]


def rl_argv(prompts: Path, reward: Path, out: Path) -> list[str]:
    opts = {"model": "tiny", "prompts": prompts, "reward": f"{reward}:reward", "output_dir": out, "steps": 6,
            "save_steps": 2, "keep_last": 2, "prompts_per_step": 4, "samples_per_prompt": 2, "max_new_tokens": 6,
            "lr": 1e-2, "progress": "false"}
    return ["train", "rl", *(f"{k}={v}" for k, v in opts.items())]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("kill_data")
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    (d / "prompts.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in PAIRS))
    (d / "reward_fn.py").write_text(REWARD)
    return {"pairs": d / "pairs.jsonl", "prompts": d / "prompts.jsonl", "reward": d / "reward_fn.py"}


def assert_same_run(full: Path, resumed: Path) -> None:
    """Same final parameters (<= 1e-6), same metrics at every step, same checkpoints kept."""
    assert [p.name for p in list_checkpoints(resumed)] == [p.name for p in list_checkpoints(full)]
    a = load_file(str(list_checkpoints(full)[-1] / "model.safetensors"))
    b = load_file(str(list_checkpoints(resumed)[-1] / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0, msg=k)
    rows_a = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a]
    for ra, rb in zip(rows_a, rows_b):
        assert ra.keys() == rb.keys()
        for k, v in ra.items():
            if isinstance(v, float):
                assert rb[k] == pytest.approx(v, abs=1e-6), (ra["step"], k)
            else:
                assert rb[k] == v, (ra["step"], k)
    assert (resumed / "final" / "model.safetensors").exists()


@pytest.mark.slow
def test_sft_killed_in_checkpoint_write_then_between_steps(files, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_here(offline_argv("sft", files["pairs"], full, max_steps=10))
    argv = offline_argv("sft", files["pairs"], killed, max_steps=10)
    # 1. In the middle of the first checkpoint write: weights half written, nothing complete.
    run_killed(argv, die_at="2:weights")
    assert (killed / ".tmp-checkpoint-2" / "model.safetensors").exists() and list_checkpoints(killed) == []
    # 2. Resumed (from scratch), then killed from outside between steps, once checkpoint-4 is complete.
    run_killed(argv + ["--resume"], kill_when=killed / "checkpoint-4" / "complete.json")
    assert not (killed / "final").exists()
    run_here(argv + ["--resume"])
    assert_same_run(full, killed)


@pytest.mark.slow
def test_rm_killed_before_rename_and_before_pruning(files, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_here(offline_argv("rm", files["pairs"], full))
    argv = offline_argv("rm", files["pairs"], killed)
    # 1. checkpoint-4 fully written in its temp folder, not yet renamed: resuming uses checkpoint-2.
    run_killed(argv, die_at="4:rename")
    assert (killed / ".tmp-checkpoint-4" / "complete.json").exists()
    assert [p.name for p in list_checkpoints(killed)] == ["checkpoint-2"]
    # 2. checkpoint-6 renamed into place but the old ones not yet pruned: three on disk.
    run_killed(argv + ["--resume"], die_at="6:prune")
    assert [p.name for p in list_checkpoints(killed)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    run_here(argv + ["--resume"])
    assert [p.name for p in list_checkpoints(killed)] == ["checkpoint-6", "checkpoint-8"]  # keep_last=2
    assert_same_run(full, killed)
    assert (killed / "final" / "reward_head.safetensors").exists()


@pytest.mark.slow
def test_dpo_killed_writing_the_last_checkpoint(files, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_here(offline_argv("dpo", files["pairs"], full))
    argv = offline_argv("dpo", files["pairs"], killed)
    run_killed(argv, die_at="8:weights")
    assert [p.name for p in list_checkpoints(killed)] == ["checkpoint-4", "checkpoint-6"] and not (killed / "final").exists()
    run_here(argv + ["--resume"])
    assert_same_run(full, killed)


@pytest.mark.slow
def test_rl_killed_in_checkpoint_write(files, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_here(rl_argv(files["prompts"], files["reward"], full))
    argv = rl_argv(files["prompts"], files["reward"], killed)
    run_killed(argv, die_at="4:weights")
    assert [p.name for p in list_checkpoints(killed)] == ["checkpoint-2"]
    run_here(argv + ["--resume"])
    assert_same_run(full, killed)


@pytest.mark.parametrize("damage", ["corrupt", "partial"])
def test_damaged_newest_checkpoint_falls_back_with_a_message(files, tmp_path, capsys, damage):
    """A truncated weights file, or a missing completion marker, in the newest checkpoint: resuming
    says so, starts from the one before, and still ends where the undamaged run ended."""
    full, damaged = tmp_path / "full", tmp_path / "damaged"
    run_here(offline_argv("sft", files["pairs"], full, max_steps=4))
    run_here(offline_argv("sft", files["pairs"], damaged, max_steps=4))
    newest = damaged / "checkpoint-4"
    if damage == "corrupt":
        weights = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    else:
        (newest / "complete.json").unlink()
    capsys.readouterr()
    run_here(offline_argv("sft", files["pairs"], damaged, max_steps=4) + ["--resume"])
    out = capsys.readouterr().out
    assert f"checkpoint {newest} is {damage}" in out and "using the previous one" in out
    assert "resumed from step 2 of 4" in out
    assert_same_run(full, damaged)
