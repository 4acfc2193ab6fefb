"""Reward sources behind one interface: `(prompts, responses) -> tensor [N]`.

A Python function (imported from 'module:function', never evaluated), a reward model (an
alignscope RM folder or a Hugging Face sequence classifier), the implicit reward of a DPO
policy, or an ensemble of these.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from alignscope.data.records import Prompt
from alignscope.data.tokenize import encode_response
from alignscope.errors import ConfigError, ModelError
from alignscope.models.scoring import pad_batch, pad_token_id


class RewardSource(Protocol):
    def __call__(self, prompts: list[Prompt], responses: list[str]) -> torch.Tensor: ...


def _as_rewards(values: Any, n: int, where: str) -> torch.Tensor:
    try:
        r = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"reward {where} returned something that is not a list of numbers ({e})") from None
    if r.numel() != n:
        raise ConfigError(f"reward {where} returned {r.numel()} values for {n} responses", "return one float per (prompt, response)")
    if not torch.isfinite(r).all():
        raise ConfigError(f"reward {where} returned non-finite values (NaN or inf)", "make the reward finite for every response")
    return r


class FunctionReward:
    """`fn(prompts, responses) -> list of floats`, given as a callable or imported from 'module:function'."""

    def __init__(self, spec: str | Callable):
        if callable(spec):
            self.fn, self.name = spec, getattr(spec, "__name__", repr(spec))
            return
        module, sep, attr = str(spec).partition(":")
        if not sep or not module or not attr:
            raise ConfigError(f"reward function '{spec}' is not of the form module:function", "write e.g. my_rewards:score")
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"cannot import module '{module}' for reward '{spec}': {e}", "check PYTHONPATH and the module name") from None
        if not hasattr(mod, attr):
            raise ConfigError(f"module '{module}' has no attribute '{attr}'", "check the function name after the colon")
        self.fn, self.name = getattr(mod, attr), str(spec)

    def __call__(self, prompts, responses):
        return _as_rewards(self.fn(list(prompts), list(responses)), len(responses), f"'{self.name}'")


class ModelReward:
    """A reward model scoring (prompt, response) with the same tokenization the trainers use."""

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 32, max_length: int | None = 1024):
        self.model, self.tok, self.batch_size, self.max_length = model.eval(), tokenizer, batch_size, max_length

    @torch.no_grad()
    def __call__(self, prompts, responses):
        from alignscope.models.reward_model import RewardModel

        encs = [encode_response(self.tok, p, r, max_length=self.max_length) for p, r in zip(prompts, responses)]
        device = next(self.model.parameters()).device
        out = []
        for s in range(0, len(encs), self.batch_size):
            chunk = encs[s : s + self.batch_size]
            ids, attn, _, _ = pad_batch([e.prompt_ids or [self.tok.eos_token_id] for e in chunk], [e.response_ids for e in chunk], pad_token_id(self.tok), device=device)
            if isinstance(self.model, RewardModel):
                out.append(self.model(ids, attn).float().cpu())
            else:
                out.append(self.model(input_ids=ids, attention_mask=attn).logits[:, 0].float().cpu())
        return _as_rewards(torch.cat(out) if out else torch.zeros(0), len(responses), "model")


class ImplicitReward:
    """beta * (log pi(y|x) - log pi_ref(y|x)): the reward a DPO policy defines."""

    def __init__(self, policy, reference, tokenizer, beta: float = 0.1, batch_size: int = 16):
        self.policy, self.reference, self.tok, self.beta, self.batch_size = policy, reference, tokenizer, beta, batch_size

    def __call__(self, prompts, responses):
        from alignscope.models.scoring import sequence_logps

        lp = sequence_logps(self.policy, self.tok, prompts, responses, self.batch_size)
        lr = sequence_logps(self.reference, self.tok, prompts, responses, self.batch_size)
        return (self.beta * (lp - lr)).float()


class EnsembleReward:
    """Mean, min, or mean - k*std over several sources (a hedge against over-optimising one RM)."""

    def __init__(self, sources: list[Callable], how: str = "mean", k: float = 1.0):
        if how not in ("mean", "min", "mean_minus_std"):
            raise ConfigError(f"unknown ensemble aggregation '{how}'", "use mean, min or mean_minus_std")
        self.sources, self.how, self.k = sources, how, k

    def __call__(self, prompts, responses):
        r = torch.stack([_as_rewards(s(prompts, responses), len(responses), "ensemble member") for s in self.sources])
        if self.how == "mean":
            return r.mean(0)
        if self.how == "min":
            return r.min(0).values
        return r.mean(0) - self.k * r.std(0, unbiased=False)


def load_reward_source(spec: str | Callable, batch_size: int = 32) -> RewardSource:
    """'module:function', a callable, 'lab:gold', an alignscope RM folder, or a sequence-classifier folder."""
    if callable(spec):
        return FunctionReward(spec)
    if spec == "lab:gold":
        from alignscope.lab.gold import gold_rewards

        return FunctionReward(gold_rewards)
    path = Path(spec)
    if path.is_dir():
        from alignscope.models.reward_model import RewardModel, is_reward_model_dir

        if is_reward_model_dir(path):
            from transformers import AutoTokenizer

            return ModelReward(RewardModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), batch_size)
        try:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            return ModelReward(AutoModelForSequenceClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path), batch_size)
        except (OSError, ValueError) as e:
            raise ModelError(f"'{spec}' is not a reward model folder: {e}", "train one with alignscope train rm") from None
    if ":" in str(spec) and not path.exists():
        return FunctionReward(spec)
    raise ConfigError(f"reward '{spec}' is neither a folder nor module:function", "give a reward-model folder, module:function, or lab:gold")
