"""LoRA for every trainer: the policy (or a reward model's body) wrapped in peft adapters."""

from __future__ import annotations

import copy
from pathlib import Path

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


def merged_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The merged model's tensors (what `merge_and_unload` leaves) of a peft-wrapped policy whose own weights are shards
    (FSDP), from its whole `state` gathered by `sharding.full_state`: peft merges them in an unsharded twin built on the
    meta device, so the merge is peft's own and no second copy of the weights exists before the run's end. The base
    tensors of `state` are merged in place."""
    from peft import get_peft_model

    base = model.get_base_model()
    with torch.device("meta"):
        twin = get_peft_model(type(base)(base.config), copy.deepcopy(model.peft_config[model.active_adapter]))
    twin.load_state_dict(state, assign=True)
    twin.tie_weights()  # assigned one by one, tied weights come apart: a model saved with both would differ from a DDP run's
    return twin.merge_and_unload().state_dict()


def save_adapter_and_merge(model: torch.nn.Module, adapter_dir: Path, state: dict[str, torch.Tensor] | None = None
                           ) -> tuple[torch.nn.Module, dict[str, torch.Tensor] | None]:
    """Write the adapter alone to `adapter_dir` (for peft users) and return the merged model that every alignscope
    command loads, with the tensors to save it from: where the policy holds shards (FSDP, DeepSpeed), `state` is its
    gathered whole state and the merge is `merged_state`'s (the sharded model lends its config); else peft merges
    the live model and its own tensors are saved (None)."""
    model.save_pretrained(adapter_dir, state_dict=state)
    if state is None:
        return model.merge_and_unload(), None
    return model.get_base_model(), merged_state(model, state)
