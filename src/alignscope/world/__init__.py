"""The synthetic world: a synthetic instruction language with a computable gold reward, data generators
for every preference format, and tiny base models pretrained on it.

Pitfalls of alignment can only be measured when the true quality of a response is known;
here it is (`gold_reward`), so reward variance, likelihood displacement, implicit-vs-explicit
reward models and over-optimisation can all be checked against ground truth on a CPU.

The pretraining helpers import torch and transformers, so they load on first use.
"""

from __future__ import annotations

from typing import Any

from alignscope.world.generate import (
    Style,
    candidate_responses,
    corpus,
    good_response,
    pairwise_data,
    paraphrase,
    paraphrased_pairs,
    prompt_data,
    ranked_data,
    refusal_pairs,
    render_chat,
    respond,
    sft_data,
    single_token_pairs,
    unpaired_data,
)
from alignscope.world.gold import (
    GoldReward,
    GoldWeights,
    bt_probability,
    gold_components,
    gold_reward,
    gold_rewards,
    is_refusal,
    refusal_rate,
)
from alignscope.world.language import (
    KINDS,
    World,
    chat,
    default_world,
    is_wellformed,
    parse_prompt,
    parse_response,
)

_LAZY = {
    "pretrained_lab_model",
    "load_lab_model",
    "lab_model_dir",
    "load_pretrain_info",
    "generate_responses",
    "generation_quality",
    "PretrainConfig",
}

__all__ = [
    "KINDS",
    "GoldReward",
    "GoldWeights",
    "Style",
    "World",
    "bt_probability",
    "candidate_responses",
    "chat",
    "corpus",
    "default_world",
    "gold_components",
    "gold_reward",
    "gold_rewards",
    "good_response",
    "is_refusal",
    "is_wellformed",
    "pairwise_data",
    "paraphrase",
    "paraphrased_pairs",
    "parse_prompt",
    "parse_response",
    "prompt_data",
    "ranked_data",
    "refusal_pairs",
    "refusal_rate",
    "render_chat",
    "respond",
    "sft_data",
    "single_token_pairs",
    "unpaired_data",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from alignscope.world import pretrain

        return getattr(pretrain, name)
    raise AttributeError(f"module 'alignscope.world' has no attribute {name!r}")
