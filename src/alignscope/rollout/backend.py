"""One entry point for sampling with either engine: `generate_with(backend, ...)`.

`bon`, `select-prompts`, `audit rm` and `train rl` call it with `rollout_backend` (hf or vllm);
the caller that samples repeatedly from a changing policy (RL) keeps the `VLLMGenerator` and
passes it as the backend, calling its `sync(policy)` after each optimizer step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from alignscope.data.records import Prompt
from alignscope.errors import ConfigError
from alignscope.models.device import Placement, load_placed, resolve_placement
from alignscope.rollout.generation import GenerationConfig, Rollout, generate
from alignscope.rollout.options import RolloutOptions
from alignscope.rollout.vllm import VLLMGenerator


def generate_with(
    backend: str | VLLMGenerator,
    model: nn.Module | str,
    tokenizer,
    prompts: list[Prompt],
    cfg: GenerationConfig,
    *,
    options: RolloutOptions | None = None,
    placement: Placement | None = None,
    batch_size: int = 64,
    progress: str | None = None,
) -> Rollout:
    """Sample `cfg.n` responses per prompt from `model` (a loaded model or a model spec) with `backend`.

    "hf": transformers `generate` (a spec is loaded with `placement`); "vllm": a vLLM engine built on
    the model for this call; a `VLLMGenerator`: that engine as it is.
    """
    if isinstance(backend, VLLMGenerator):
        return backend.generate(prompts, cfg)
    if backend == "hf":
        if isinstance(model, str):
            model, tokenizer = load_placed(model, placement or resolve_placement())
        return generate(model, tokenizer, prompts, cfg, batch_size=batch_size, progress=progress)
    if backend == "vllm":
        opts = options or RolloutOptions(rollout_backend="vllm")
        dtype = placement.dtype_name if placement is not None else "auto"
        engine = VLLMGenerator.for_model(model, tokenizer, options=opts, dtype=dtype, seed=cfg.seed or 0)
        try:
            return engine.generate(prompts, cfg)
        finally:
            engine.close()
    raise ConfigError(f"unknown rollout backend '{backend}'", "use rollout_backend=hf or vllm")


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
