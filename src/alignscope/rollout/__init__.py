"""Sampling responses from a policy: batched Hugging Face generation or vLLM, with per-token log-probabilities.

Names are imported on first use, so `alignscope.rollout.options` (argparse flags, config fields)
loads without torch.
"""

import importlib

_HOMES = {
    "GenerationConfig": "generation", "Rollout": "generation", "generate": "generation",
    "VLLMGenerator": "vllm", "policy_weights": "vllm", "RolloutOptions": "options", "generate_with": "backend",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'alignscope.rollout' has no attribute '{name}'")
    return getattr(importlib.import_module(f"alignscope.rollout.{_HOMES[name]}"), name)
