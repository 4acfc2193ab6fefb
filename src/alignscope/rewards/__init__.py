"""Reward sources behind one `(prompts, responses) -> tensor [N]` interface, and reward transforms."""

from alignscope.rewards.sources import (
    EnsembleReward,
    FunctionReward,
    ImplicitReward,
    ModelReward,
    RewardSource,
    import_reward_function,
    load_reward_source,
)
from alignscope.rewards.transforms import (
    RewardTransform,
    Standardizer,
    clip,
    log_sigmoid_centring,
)

__all__ = [
    "EnsembleReward",
    "FunctionReward",
    "ImplicitReward",
    "ModelReward",
    "RewardSource",
    "RewardTransform",
    "Standardizer",
    "clip",
    "import_reward_function",
    "load_reward_source",
    "log_sigmoid_centring",
]
