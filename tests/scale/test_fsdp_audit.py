"""`audit data` under an FSDP launch: the model is sharded over the processes (it need not fit one device), every
process scores a share of every chunk in step with the others, and the outputs are byte for byte those of one
process. The processes start through fsdp_on_cpu.py (accelerate runs FSDP only on accelerators)."""

from __future__ import annotations

import json
import subprocess
import sys

from .test_distributed_audits import CLI, REPO, audit, outputs, pairs  # noqa: F401 (pairs: a fixture)
from .test_fsdp_rl import FSDP_ENV
from .test_fsdp_train import free_port


def test_a_sharded_audit_writes_what_one_process_writes(tmp_path, pairs):
    """Chunks of 9 pairs split 4 / 5 between the processes: 2 and 3 batches of 4 sequences, so the smaller share
    makes a stand-in forward (without it the processes fail on mismatched collectives: measured)."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
              str(REPO / "tests" / "scale" / "fsdp_on_cpu.py")]
    one = audit(CLI, pairs, tmp_path / "one", "--limit", "60", "--chunk-pairs", "9")
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(launch + ["audit", "data", "--model", "lab:tiny", "--data", str(pairs), "--out", str(tmp_path / "two"),
                                   "--chunk-pairs", "9", "--batch-size", "4", "--filter", "drop:0.25", "--limit", "60"],
                         env=FSDP_ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "FSDP: the model is sharded over 2 processes" in two.stdout
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two")
    manifest = json.loads((tmp_path / "two" / "alignscope.json").read_text())
    assert manifest["processes"] == 2 and manifest["sharded"] is True
    assert two.stdout.count("per-pair table:") == 1
