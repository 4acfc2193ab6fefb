"""`audit data` in chunks: 2 processes (torchrun, gloo) write what 1 writes, and a killed audit resumes from its chunks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "alignscope.cli.main"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531", "-m", "alignscope.cli.main"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture()
def pairs(tmp_path, lab_tiny) -> Path:
    from alignscope.world.generate import pairwise_data
    from alignscope.world.language import default_world

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in pairwise_data(default_world(0), 120, seed=3, noise=0.0)))
    return path


def audit(launcher: list[str], pairs: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = launcher + ["audit", "data", "--model", "lab:tiny", "--data", str(pairs), "--out", str(out), "--chunk-pairs", "8",
                       "--batch-size", "4", "--filter", "drop:0.25", *extra]
    return subprocess.run(argv, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)


def outputs(out: Path) -> tuple[str, str]:
    return (out / "ches.csv").read_text(), (out / "ches.filtered.jsonl").read_text()


def test_two_processes_write_what_one_writes(tmp_path, pairs):
    one, two = audit(CLI, pairs, tmp_path / "one", "--limit", "60"), audit(TORCHRUN, pairs, tmp_path / "two", "--limit", "60")
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two")  # chunks hold the same pairs in both runs: same numbers
    assert json.loads((tmp_path / "two" / "alignscope.json").read_text())["processes"] == 2
    assert two.stdout.count("per-pair table:") == 1  # written once, by the main process
    assert not (tmp_path / "two" / ".audit_chunks").exists()


def test_a_killed_audit_resumes_from_its_chunks(tmp_path, pairs):
    whole = audit(CLI, pairs, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    argv = CLI + ["audit", "data", "--model", "lab:tiny", "--data", str(pairs), "--out", str(out), "--chunk-pairs", "8",
                  "--batch-size", "4", "--filter", "drop:0.25"]
    proc = subprocess.Popen(argv, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chunks = out / ".audit_chunks"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(chunks.glob("chunk-*.json"))) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(chunks.glob("chunk-*.json")))
    assert 2 <= done < 15 and not (out / "ches.csv").exists(), "the audit finished before it could be killed"
    changed = audit(CLI, pairs, out, "--resume", "--max-length", "512")
    assert changed.returncode == 2 and "other settings (max_length)" in changed.stderr and "Traceback" not in changed.stderr
    resumed = audit(CLI, pairs, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming: {done} of 15 chunks" in resumed.stdout
    assert outputs(out) == outputs(tmp_path / "whole")


@pytest.fixture()
def rm_prompts(tmp_path, lab_tiny) -> Path:
    from alignscope.world.generate import prompt_data
    from alignscope.world.language import default_world

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p.prompt}) + "\n" for p in prompt_data(default_world(0), 16, seed=1)))
    return path


def audit_rm(launcher: list[str], prompts: Path, out: Path, *extra: str, limit: int = 8, chunk: int = 2) -> list[str]:
    return launcher + ["audit", "rm", "--rm", "lab:gold", "--policy", "lab:tiny", "--prompts", str(prompts), "--gold", "lab:gold",
                       "--samples-per-prompt", "4", "--limit", str(limit), "--max-new-tokens", "8", "--chunk-prompts", str(chunk), "--out", str(out), *extra]


def rm_results(out: Path) -> tuple[str, str]:
    return (out / "samples.jsonl").read_text(), (out / "teacher_table.json").read_text()


def test_audit_rm_two_processes_write_what_one_writes(tmp_path, rm_prompts):
    one = subprocess.run(audit_rm(CLI, rm_prompts, tmp_path / "one"), env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    two = subprocess.run(audit_rm(TORCHRUN, rm_prompts, tmp_path / "two"), env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    assert rm_results(tmp_path / "one") == rm_results(tmp_path / "two")  # each chunk has its own seed: same samples, same rewards
    assert len((tmp_path / "one" / "samples.jsonl").read_text().splitlines()) == 8 * 4


def test_a_killed_audit_rm_resumes_from_its_chunks(tmp_path, rm_prompts):
    whole = subprocess.run(audit_rm(CLI, rm_prompts, tmp_path / "whole", limit=16, chunk=1), env=ENV, cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(audit_rm(CLI, rm_prompts, out, limit=16, chunk=1), env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / ".audit_chunks").glob("chunk-*.json"))) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / ".audit_chunks").glob("chunk-*.json")))
    assert 2 <= done < 16 and not (out / "samples.jsonl").exists(), "the audit finished before it could be killed"
    resumed = subprocess.run(audit_rm(CLI, rm_prompts, out, "--resume", limit=16, chunk=1), env=ENV, cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming: {done} of 16 chunks" in resumed.stdout
    assert rm_results(out) == rm_results(tmp_path / "whole")


@pytest.mark.parametrize("command", ["bon", "select-prompts"])
def test_sampling_commands_two_processes_write_what_one_writes(tmp_path, rm_prompts, command):
    def argv(launcher: list[str], out: Path) -> list[str]:
        return launcher + [command, "--policy", "lab:tiny", "--prompts", str(rm_prompts), "--reward", "lab:gold",
                           "--samples-per-prompt", "4", "--max-new-tokens", "8", "--chunk-prompts", "3", "--out", str(out)]

    outs = []
    for name, launcher in (("one", CLI), ("two", TORCHRUN)):
        out = tmp_path / name / "out.jsonl"
        done = subprocess.run(argv(launcher, out), env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert not list(out.parent.glob(".*.chunks"))
        outs.append(out.read_text())
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == (16 if command == "bon" else 8)


def test_compare_rm_two_processes_write_what_one_writes(tmp_path, pairs):
    docs = []
    for name, launcher in (("one", CLI), ("two", TORCHRUN)):
        out = tmp_path / name / "cmp.json"
        argv = launcher + ["compare-rm", "--policy", "lab:tiny", "--ref", "lab:tiny", "--beta", "0.1", "--rm", "lab:gold",
                           "--pairs", str(pairs), "--limit", "40", "--chunk-pairs", "7", "--out", str(out)]
        done = subprocess.run(argv, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert not list(out.parent.glob(".*.chunks"))
        docs.append(json.loads(out.read_text())["rows"])
    assert docs[0] == docs[1] and len(docs[0]) == 2
