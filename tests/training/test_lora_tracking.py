"""LoRA through peft (base weights frozen, adapter + merged model saved) and TensorBoard logging."""

from __future__ import annotations

import json

import pytest
import torch

from alignscope.errors import ConfigError
from alignscope.options import build_config
from alignscope.training.config import TrainConfig
from alignscope.training.loop import train

from . import synthetic

pytest.importorskip("peft")


def cfg(tmp_path, method, **over):
    raw = {"method": method, "model": "tiny", "data": "<memory>", "output_dir": str(tmp_path / method), "batch_size": 8,
           "max_steps": 10, "lr": 1e-2, "progress": False, "max_length": 64, "seed": 0,
           "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, **over}
    return build_config(TrainConfig, raw)


def test_lora_dpo_trains_adapter_only_and_saves_merged(tmp_path):
    from alignscope.training.loop import _texts, build_policy

    examples = synthetic.pairs()
    model, tok = build_policy(cfg(tmp_path, "dpo"), _texts(examples))
    base = {k: v.clone() for k, v in model.state_dict().items()}
    out = train(cfg(tmp_path, "dpo"), train_examples=examples, model=model, tokenizer=tok, log=lambda *a: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["loss"] for r in rows[-3:]) < sum(r["loss"] for r in rows[:3])
    assert (out / "final" / "adapter" / "adapter_config.json").exists()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "final").state_dict()
    assert set(merged) == set(base), "the merged model has the base model's parameter names"
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed), changed


def test_lora_reward_model(tmp_path):
    out = train(cfg(tmp_path, "rm", lr=5e-3), train_examples=synthetic.pairs(), log=lambda *a: None)
    from alignscope.models.reward_model import RewardModel

    assert (out / "final" / "adapter" / "adapter_config.json").exists()
    rm = RewardModel.from_pretrained(out / "final")
    assert rm.head.weight.abs().sum() > 0


def test_lora_unknown_target_module_is_a_config_error(tmp_path):
    bad = cfg(tmp_path, "sft", lora={"target_modules": ["qproj"]})
    with pytest.raises(ConfigError, match="qproj"):
        train(bad, train_examples=synthetic.sft(), log=lambda *a: None)


def test_tensorboard_events_written(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = train(cfg(tmp_path, "sft", lora=None, max_steps=4, report_to=["tensorboard"]), train_examples=synthetic.sft(), log=lambda *a: None)
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "loss" in tags
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]
