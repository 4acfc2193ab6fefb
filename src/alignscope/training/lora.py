"""LoRA for every trainer: the policy (or a reward model's body) wrapped in peft adapters."""

from __future__ import annotations

import torch

from alignscope.errors import ConfigError
from alignscope.training.config import RLConfig, TrainConfig


def add_lora(model: torch.nn.Module, cfg: TrainConfig | RLConfig) -> torch.nn.Module:
    """Wrap the policy (or a reward model's body) in LoRA adapters; the base weights stay frozen.

    The reference is the initial policy, i.e. the adapter disabled (peft's `disable_adapter`), so no
    second copy of the weights is kept; offline training precomputes its log-probs before the first
    update, when the adapter is still the identity.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("LoRA needs the peft package", "pip install 'alignscope[peft]'") from None
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in cfg.lora.target_modules if m not in names]
    if missing:
        raise ConfigError(
            f"LoRA target modules {missing} are not in the model",
            f"set lora.target_modules to some of: {', '.join(sorted(n for n in names if n.endswith('proj')) or sorted(names)[:12])}",
        )
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, target_modules=cfg.lora.target_modules)
    return get_peft_model(model, lora)
