"""Options: every config field is described and bounded, the bounds hold however a config is built,
and `train METHOD --help` shows each option's sentence."""

from __future__ import annotations

import dataclasses
import math

import pytest

from alignscope.cli.main import main
from alignscope.errors import ConfigError
from alignscope.options import build_config, range_text
from alignscope.training.config import LoraConfig, LossTerm, RLConfig, TrainConfig

CONFIGS = (TrainConfig, RLConfig, LoraConfig, LossTerm)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_option_has_a_sentence(cls):
    for f in dataclasses.fields(cls):
        assert len(f.metadata.get("help", "").split()) >= 3, f"{cls.__name__}.{f.name} has no description"


@pytest.mark.parametrize("method, cls", [("dpo", TrainConfig), ("rl", RLConfig)])
def test_help_describes_every_option(method, cls, capsys):
    with pytest.raises(SystemExit):
        main(["train", method, "--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(cls):
        assert f"  {f.name}: " in out and f.metadata["help"] in out
        if range_text(f):
            assert range_text(f) in out


def test_range_text():
    by_name = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert range_text(by_name["lr"]) == "in (0, 1]"
    assert range_text(by_name["eval_fraction"]) == "in [0, 1)"
    assert range_text(by_name["batch_size"]) == ">= 1"
    assert range_text(by_name["model"]) == ""


@pytest.mark.parametrize("cls, bad", [
    (TrainConfig, {"max_grad_norm": -1.0}), (TrainConfig, {"seed": -1}), (TrainConfig, {"lr": math.nan}),
    (TrainConfig, {"weight_decay": -1.0}), (TrainConfig, {"beta": 0.0}), (TrainConfig, {"lr": math.inf}),
    (RLConfig, {"kl_coef": -0.1}), (RLConfig, {"value_lr": -1e-3}), (RLConfig, {"epsilon": -0.2}),
    (RLConfig, {"gae_lambda": 1.5}), (RLConfig, {"top_p": 0.0}), (LoraConfig, {"r": 0}), (LossTerm, {"weight": -1.0}),
])
def test_bounds_hold_when_built_in_code(cls, bad):
    required = {TrainConfig: {"data": "x"}, RLConfig: {"prompts": "x", "reward": "x"}}.get(cls, {})
    name = next(iter(bad))
    with pytest.raises(ConfigError, match=f"'{name}' must be"):
        cls(**required, **bad)


def test_nested_errors_name_the_full_key():
    with pytest.raises(ConfigError, match=r"'lora\.r' must be in \[1, 4096\], got 0"):
        build_config(TrainConfig, {"data": "x", "lora": {"r": 0}})


def test_list_defaults_are_not_shared():
    a, b = TrainConfig(data="x"), TrainConfig(data="x")
    a.report_to.append("wandb")
    assert b.report_to == [] and a.loss is not b.loss
