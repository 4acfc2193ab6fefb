"""The displacement monitor names the tokens that gained probability mass on short responses."""

from __future__ import annotations

import json
import random

import torch

from alignscope.data.records import PairExample
from alignscope.options import build_config
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


def test_displacement_warning_printed_once_unless_it_grows_but_logged_every_time(tmp_path):
    from alignscope.training.metrics import MetricsLogger

    said = []
    logger = MetricsLogger(tmp_path, log=said.append)
    start = {"chosen": [0.0] * 20, "rejected": [0.0] * 20}
    fell = lambda k: {"chosen": [-1.0] * k + [1.0] * (20 - k), "rejected": [-2.0] * 20}  # noqa: E731
    logger.eval_point(0, start, start)
    for step, k in ((4, 12), (8, 12), (12, 13), (16, 15)):
        logger.eval_point(step, fell(k), start)
    printed = [s for s in said if "likelihood displacement" in s]
    assert [s.rsplit("(step ", 1)[1] for s in printed] == ["4)", "16)"]  # 0.6 printed; 0.65 is not +0.1 over it; 0.75 is
    logged = [json.loads(line) for line in (tmp_path / "pitfalls.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [4, 8, 12, 16] and logged[-1]["size"] == 0.75
