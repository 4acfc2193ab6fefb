"""Sampling with either engine: `sampling_engine` picks "hf" or builds one vLLM engine for a block of
calls, and `generate_with` samples with it. `bon`, `select-prompts` and `audit rm` use both; `train rl`
keeps its own `VLLMGenerator` and calls its `sync(policy)` after each step's updates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from alignscope.data.records import Prompt
from alignscope.errors import ConfigError
from alignscope.models.device import Placement
from alignscope.rollout.generation import GenerationConfig, Rollout, generate
from alignscope.rollout.options import RolloutOptions
from alignscope.rollout.vllm import VLLMGenerator


def generate_with(
    backend: str | VLLMGenerator,
    model: nn.Module,
    tokenizer,
    prompts: list[Prompt],
    cfg: GenerationConfig,
    *,
    batch_size: int = 64,
    progress: str | None = None,
) -> Rollout:
    """Sample `cfg.n` responses per prompt from `model`: "hf" with transformers `generate`, or with a
    `VLLMGenerator` (from `sampling_engine`) as it is."""
    if isinstance(backend, VLLMGenerator):
        return backend.generate(prompts, cfg)
    if backend == "hf":
        return generate(model, tokenizer, prompts, cfg, batch_size=batch_size, progress=progress)
    raise ConfigError(f"unknown rollout backend '{backend}'", "use rollout_backend=hf, or a vLLM engine from sampling_engine")


@contextlib.contextmanager
def sampling_engine(options: RolloutOptions, policy: nn.Module, tokenizer, placement: Placement, seed: int = 0
                    ) -> Iterator[str | VLLMGenerator]:
    """What `generate_with` should sample with for a block of calls: "hf", or one vLLM engine on the policy's
    weights (built once, closed after the block)."""
    if options.rollout_backend != "vllm":
        yield "hf"
        return
    engine = VLLMGenerator.for_model(policy, tokenizer, options=options, dtype=placement.dtype_name, seed=seed)
    try:
        yield engine
    finally:
        engine.close()
