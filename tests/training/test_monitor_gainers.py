"""The displacement monitor names the tokens that gained probability mass on short responses."""

from __future__ import annotations

import json
import random

import torch

from alignscope.config import build_config
from alignscope.data.records import PairExample
from alignscope.training.config import TrainConfig
from alignscope.training.loop import train

from . import synthetic


def short_pairs(n: int, seed: int) -> list[PairExample]:
    rng = random.Random(seed)
    words = [("good", "bad"), ("yes", "no"), ("fine", "poor")]
    return [PairExample(p, *rng.choice(words)) for p in synthetic.prompts(n, seed)]


def test_mass_gainers_logged_for_short_responses_with_stored_start(tmp_path):
    raw = {"method": "dpo", "model": "tiny", "data": "<memory>", "output_dir": str(tmp_path / "run"), "batch_size": 8,
           "max_steps": 6, "lr": 3e-3, "progress": False, "max_length": 32, "eval_steps": 3, "save_steps": 3}
    cfg = build_config(TrainConfig, raw)
    out = train(cfg, train_examples=short_pairs(48, 0), eval_examples=short_pairs(12, 1), log=lambda *a: None)
    rows = [json.loads(line) for line in (out / "displacement.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 3, 6]
    assert "mass_gainers" not in rows[0]
    for r in rows[1:]:
        gainers = r["mass_gainers"]
        assert 1 <= len(gainers) <= 5
        assert all(g["gain"] > 0 and isinstance(g["token"], str) for g in gainers)
        assert [g["gain"] for g in gainers] == sorted((g["gain"] for g in gainers), reverse=True)
    # The start distribution is stored, so a resumed run measures gains against the same start.
    start = (out / "eval_start_probs.safetensors")
    assert start.exists()
    from safetensors.torch import load_file

    probs = load_file(str(start))["probs"]
    assert torch.isclose(probs.sum(), torch.tensor(1.0), atol=1e-4)
