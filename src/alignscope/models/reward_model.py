"""A reward model: a causal LM body plus k scalar heads on the final token's hidden state.

Keeping the body a causal LM (not a separate classification class) lets the same scoring
engine serve reward models, and k heads give a cheap ensemble (mean, min, mean - k*std).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alignscope.errors import ModelError
from alignscope.losses.reward import ENSEMBLE_AGGREGATIONS, aggregate_ensemble
from alignscope.models.scoring import AroundLM, Layout, body_and_head, run_body


class RewardModel(AroundLM):
    def __init__(self, lm: nn.Module, num_heads: int = 1, aggregate: str = "mean", k_std: float = 1.0):
        super().__init__()
        self.lm = lm
        # The unembedding plays no part in a reward; freeze it (unless tied) so DDP sees no unused parameters.
        out_emb, in_emb = lm.get_output_embeddings(), lm.get_input_embeddings()
        if out_emb is not None and out_emb.weight is not in_emb.weight:
            out_emb.weight.requires_grad_(False)
        d = lm.config.hidden_size
        self.head = nn.Linear(d, num_heads)
        nn.init.normal_(self.head.weight, std=1.0 / (d + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)
        if aggregate not in ENSEMBLE_AGGREGATIONS:
            raise ModelError(f"unknown ensemble aggregate '{aggregate}'", f"use one of {ENSEMBLE_AGGREGATIONS}")
        self.aggregate, self.k_std = aggregate, k_std

    @property
    def config(self):
        return self.lm.config

    def aggregate_heads(self, per_head: torch.Tensor) -> torch.Tensor:
        """[B, k] head rewards -> [B] ensemble reward (`losses.reward.aggregate_ensemble`, population std)."""
        return aggregate_ensemble(per_head.movedim(-1, 0), self.aggregate, self.k_std)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, per_head: bool = False,
                layout: Layout | None = None) -> torch.Tensor:
        """[B] rewards (or [B, k] per head) of right- or left-padded full sequences, or of a `Layout`'s sequences.

        Training passes a `Layout` (`models.scoring.layout_for`), so chosen and rejected share their
        prompt's forward and the batch can run without padding; the reward is read at each `last_index`.
        """
        body, _ = body_and_head(self.lm)
        if layout is not None:
            hidden = run_body(body, layout)
            h = hidden.reshape(-1, hidden.shape[-1])[layout.last_index]
        else:
            pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=False).last_hidden_state
            last = torch.where(attention_mask[:, -1].bool(), attention_mask.shape[1] - 1, attention_mask.sum(-1) - 1)
            h = hidden[torch.arange(len(last), device=hidden.device), last]
        heads = self.head(h.to(self.head.weight.dtype))
        return heads if per_head else self.aggregate_heads(heads)

    def save_pretrained(self, path: str | Path, tensors: dict[str, torch.Tensor] | None = None) -> None:
        """The LM (a transformers folder) beside the head; `tensors`: this module's whole state where it holds shards (FSDP)."""
        path = Path(path)
        tensors = tensors if tensors is not None else {"head.weight": self.head.weight, "head.bias": self.head.bias}
        lm_state = {k.removeprefix("lm."): v for k, v in tensors.items() if k.startswith("lm.")}
        self.lm.save_pretrained(path, state_dict=lm_state or None)
        save_file({name: tensors[f"head.{name}"].detach().contiguous() for name in ("weight", "bias")}, str(path / "reward_head.safetensors"))
        (path / "alignscope_reward.json").write_text(
            json.dumps({"num_heads": self.head.out_features, "aggregate": self.aggregate, "k_std": self.k_std})
        )

    @classmethod
    def from_pretrained(cls, path: str | Path) -> RewardModel:
        from transformers import AutoModelForCausalLM

        path = Path(path)
        meta_file = path / "alignscope_reward.json"
        if not meta_file.exists():
            raise ModelError(f"'{path}' is not an alignscope reward model (no alignscope_reward.json)", "train one with alignscope train rm")
        meta = json.loads(meta_file.read_text())
        rm = cls(AutoModelForCausalLM.from_pretrained(path), meta["num_heads"], meta["aggregate"], meta["k_std"])
        rm.head.load_state_dict(load_file(str(path / "reward_head.safetensors")))
        return rm


def is_reward_model_dir(path: str | Path) -> bool:
    return (Path(path) / "alignscope_reward.json").exists()


