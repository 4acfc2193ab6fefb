"""The displacement monitor inside a TRL DPOTrainer under FSDP (v2): every process scores the sharded policy and
reference in step, the main one writes, and the numbers are those of a one-process run of the same global batch.
The processes start through tests/scale/fsdp_on_cpu.py (accelerate runs FSDP only on accelerators)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("trl", reason="TRL is not installed (pip install 'alignscope[trl]')")

from accelerate.utils import DistributedType  # noqa: E402

from alignscope import run_files as rf  # noqa: E402
from alignscope.errors import ConfigError  # noqa: E402
from alignscope.integrations.trl import _shards  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests"))
from scale.test_fsdp_rl import FSDP_ENV  # noqa: E402
from scale.test_fsdp_train import ENV, free_port  # noqa: E402

SCRIPT = str(HERE / "trl_dpo_run.py")


def test_the_monitor_scores_a_sharded_trl_run_as_one_process_does(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    a = subprocess.run([sys.executable, SCRIPT, str(one), "4"], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert a.returncode == 0, a.stderr[-3000:]
    b = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
                        str(REPO / "tests" / "scale" / "fsdp_on_cpu.py"), SCRIPT, str(two), "2"],
                       env=FSDP_ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stderr[-3000:]
    assert "sharded: FSDPLlamaForCausalLM and FSDPLlamaForCausalLM" in b.stdout
    ra, rb = rf.read_jsonl(one / rf.DISPLACEMENT), rf.read_jsonl(two / rf.DISPLACEMENT)
    assert [r["step"] for r in rb] == [r["step"] for r in ra] == [0, 2, 4]
    # lr 0.1 for 4 steps moves the log-probs by tens of nats; the two runs differ by float reduction order only
    # (measured: 2e-3 nats at step 4, on changes of 35-120).
    for x, y in zip(ra, rb):
        for key in ("mean_chosen_change", "mean_rejected_change"):
            assert y[key] == pytest.approx(x[key], rel=1e-3, abs=1e-4), key
        for key in ("fraction_chosen_fell", "ranking_accuracy", "implicit_reward_accuracy"):
            assert y[key] == x[key], key
    assert [p["name"] for p in rf.read_jsonl(two / rf.PITFALLS)] == [p["name"] for p in rf.read_jsonl(one / rf.PITFALLS)]
    assert b.stdout.count("likelihood displacement") == a.stdout.count("likelihood displacement") > 0  # printed once, by the main process


@pytest.mark.parametrize(("trainer", "message"), [
    (SimpleNamespace(accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)))), "ZeRO-3"),
    (SimpleNamespace(is_fsdp_enabled=True, accelerator=SimpleNamespace(state=None, distributed_type=DistributedType.FSDP, is_fsdp2=False)),
     "FSDP version 2"),
])
def test_launches_the_monitor_cannot_score_are_refused(trainer, message):
    with pytest.raises(ConfigError, match=message):
        _shards(trainer)


def test_data_parallel_and_fsdp2_trainers_are_taken():
    plain = SimpleNamespace(accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=None)))
    assert _shards(plain) is False
    fsdp2 = SimpleNamespace(is_fsdp_enabled=True, accelerator=SimpleNamespace(state=None, distributed_type=DistributedType.FSDP, is_fsdp2=True))
    assert _shards(fsdp2) is True
