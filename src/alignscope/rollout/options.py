"""Which engine samples rollouts, as config fields and as command-line flags (no torch import: `--help` stays fast)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from alignscope.errors import ConfigError
from alignscope.options import Options, opt


@dataclass
class RolloutOptions(Options):
    """Which engine samples rollouts, and vLLM's share of the GPU; configs adopt these fields, commands the flags."""

    rollout_backend: Literal["hf", "vllm"] = opt("hf", "the sampling engine: hf (transformers generate) or vllm (a GPU with vLLM installed)")
    vllm_gpu_memory_utilization: float = opt(
        0.3, "the fraction of the GPU's memory vLLM may take for weights and KV cache (colocated: leave the rest to training)", gt=0, le=1)
    vllm_tensor_parallel_size: int = opt(1, "GPUs one vLLM engine shards the model over", ge=1)
    vllm_enable_sleep_mode: bool = opt(False, "free vLLM's weights and KV cache between rollouts (sleep level 2); weights are re-sent before sampling")
    vllm_max_model_len: int | None = opt(None, "the longest prompt + completion vLLM plans its KV cache for; null = the model's", ge=1)

    def validate(self) -> None:
        super().validate()
        if self.vllm_enable_sleep_mode and self.rollout_backend != "vllm":
            raise ConfigError("vllm_enable_sleep_mode is set but rollout_backend is hf", "set rollout_backend=vllm, or drop the option")


def add_rollout_arguments(parser: argparse.ArgumentParser) -> None:
    """`--rollout-backend` and vLLM's options for an argparse command (read back with `rollout_options_from_args`)."""
    g = parser.add_argument_group("sampling engine")
    g.add_argument("--rollout-backend", default="hf", choices=["hf", "vllm"],
                   help="hf (transformers generate) or vllm (a GPU with vLLM installed)")
    g.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.9,
                   help="fraction of the GPU's memory vLLM may take (nothing else runs beside it in this command)")
    g.add_argument("--vllm-tensor-parallel-size", type=int, default=1, help="GPUs the vLLM engine shards the model over")


def rollout_options_from_args(args: argparse.Namespace) -> RolloutOptions:
    return RolloutOptions(rollout_backend=args.rollout_backend, vllm_gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                          vllm_tensor_parallel_size=args.vllm_tensor_parallel_size)
