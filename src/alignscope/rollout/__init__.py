"""Sampling responses from a policy: batched Hugging Face generation (or vLLM) with per-token log-probabilities."""

from alignscope.rollout.generation import (
    GenerationConfig,
    Rollout,
    VLLMGenerator,
    generate,
)

__all__ = ["GenerationConfig", "Rollout", "VLLMGenerator", "generate"]
