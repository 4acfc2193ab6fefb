"""Kill -9 and resume ends where an uninterrupted run ends; 2-process DDP matches 1 process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from . import synthetic

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "alignscope.cli.main", "train", *args]


def common(data: Path, out: Path, **over) -> list[str]:
    opts = {"model": "tiny", "data": str(data), "output_dir": str(out), "batch_size": 4, "max_length": 64,
            "lr": 3e-3, "progress": "false", "save_steps": 2, "keep_last": 2, "eval_fraction": 0.0, **over}
    return [f"{k}={v}" for k, v in opts.items()]


def final_params(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1] / "model.safetensors"))


def newest_complete(out: Path) -> int:
    """The step of the newest checkpoint whose write finished (0 when there is none)."""
    return max((int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/complete.json")), default=0)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_kill_and_resume_is_exact(tmp_path):
    data = synthetic.write_jsonl(tmp_path / "pairs.jsonl", synthetic.pairs(48))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    steps = 20
    subprocess.run(cli("dpo", *common(data, full, max_steps=steps)), check=True, env=env, cwd=REPO, capture_output=True)
    proc = subprocess.Popen(cli("dpo", *common(data, killed, max_steps=steps)), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # Any complete checkpoint from step 4 on: keep_last=2 prunes older ones, so one name can come and go between two polls.
    while time.time() < deadline and newest_complete(killed) < 4:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert newest_complete(killed) < steps and not (killed / "final").exists(), "the run finished before it could be killed"
    subprocess.run(cli("dpo", "--resume", *common(data, killed, max_steps=steps)), check=True, env=env, cwd=REPO, capture_output=True)
    a, b = final_params(full), final_params(killed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    ma, mb = metrics(full), metrics(killed)
    assert [r["step"] for r in mb] == list(range(1, steps + 1))
    for ra, rb in zip(ma, mb):
        assert abs(ra["loss"] - rb["loss"]) < 1e-6


def test_two_process_ddp_matches_one_process(tmp_path):
    data = synthetic.write_jsonl(tmp_path / "pairs.jsonl", synthetic.pairs(48))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(cli("dpo", *common(data, one, max_steps=5, batch_size=8, save_steps=100)), check=True, env=env, cwd=REPO, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                "-m", "alignscope.cli.main", "train", "dpo"]
    r = subprocess.run(torchrun + common(data, two, max_steps=5, batch_size=4, save_steps=100), env=env, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sequences scored by 2 processes" in r.stdout  # the reference pass is split between the processes, not repeated
    la, lb = [m["loss"] for m in metrics(one)], [m["loss"] for m in metrics(two)]
    assert len(la) == len(lb) == 5
    # Same global batch (8): the curves agree up to float reduction order.
    for x, y in zip(la, lb):
        assert abs(x - y) < 1e-4, (la, lb)
