"""NaN/Inf guard: a non-finite loss or gradient stops the run with a report naming the step, the
micro-batch and the items, and keeps the last good checkpoint; `nan_policy=skip` skips the batch
(no update) and counts the skips in metrics.jsonl.

The non-finite values are injected by wrapping the SFT objective, so the test exercises the
loop's guard and not the luck of a diverging learning rate.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from alignscope.cli.main import main
from alignscope.training.checkpoint import list_checkpoints, load_latest
from alignscope.training.loop import step_batches
from alignscope.training.methods.sft import SFT

N_PAIRS = 32
BATCH = 4


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("nan") / "pairs.jsonl"
    rows = [{"prompt": f"question {i}?", "chosen": "yes it is good", "rejected": "no it is bad"} for i in range(N_PAIRS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def poison(monkeypatch, bad: dict[int, str]) -> None:
    """Make the SFT objective non-finite at the given steps: 'loss' (a NaN loss) or 'grad' (a finite
    loss whose gradient is NaN: d sqrt(x)/dx is infinite at 0, times 0 upstream)."""
    original, calls = SFT.loss, {"n": 0}

    def objective(self, ctx, items, idx):
        calls["n"] += 1
        loss, metrics = original(self, ctx, items, idx)
        kind = bad.get(calls["n"])
        if kind == "loss":
            loss = loss * float("nan")
        elif kind == "grad":
            loss = loss + (next(ctx.model.parameters()).sum() * 0).sqrt()
        return loss, metrics

    monkeypatch.setattr(SFT, "loss", objective)


def argv(data, out, **over) -> list[str]:
    opts = {"model": "tiny", "data": data, "output_dir": out, "batch_size": BATCH, "max_length": 32, "lr": 3e-3,
            "max_steps": 6, "save_steps": 2, "progress": "false", **over}
    return ["train", "sft", *(f"{k}={v}" for k, v in opts.items())]


@pytest.mark.parametrize("kind, report", [("loss", "loss is nan at step 3, micro-batch 0, items"),
                                          ("grad", "non-finite loss or gradient at step 3 (grad norm nan), items")])
def test_non_finite_stops_with_a_report_and_keeps_the_last_good_checkpoint(pairs, tmp_path, monkeypatch, capsys, kind, report):
    poison(monkeypatch, {3: kind})
    assert main(argv(pairs, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    items = step_batches(N_PAIRS, 2, N_PAIRS // BATCH, BATCH, seed=0, shuffle=True)
    assert f"{report} {items}" in err and "the last good checkpoint" in err and "Traceback" not in err
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-2"]
    assert load_latest(tmp_path / "run") is not None and not (tmp_path / "run" / "final").exists()


def test_skip_policy_skips_the_batch_and_counts_it(pairs, tmp_path, monkeypatch):
    poison(monkeypatch, {2: "loss", 4: "grad"})
    out = tmp_path / "run"
    assert main(argv(pairs, out, nan_policy="skip", save_steps=1, keep_last=10)) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped_batches", 0) for r in rows] == [0, 1, 1, 2, 2, 2]
    weights = {s: load_file(str(out / f"checkpoint-{s}" / "model.safetensors")) for s in range(1, 7)}
    for before, after, skipped in [(1, 2, True), (3, 4, True), (2, 3, False), (4, 5, False)]:
        same = all(torch.equal(weights[before][k], weights[after][k]) for k in weights[before])
        assert same == skipped, (before, after)
    assert all(torch.isfinite(t).all() for t in weights[6].values())
