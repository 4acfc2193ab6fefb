"""Reward modelling: a Bradley-Terry loss on k scalar heads over the policy body (TRL's RewardTrainer).

The model trains wrapped in a `RewardModel` (its heads seeded, so a run is reproducible) and is
saved as one, with its heads and aggregation, for `ModelReward` and the audits to load.
"""

from __future__ import annotations

from pathlib import Path

import torch

from alignscope.diagnostics.accuracy import pair_wins
from alignscope.losses.reward import bt_loss
from alignscope.models.reward_model import RewardModel
from alignscope.models.scoring import layout_for, unwrap_model
from alignscope.training.items import Item
from alignscope.training.methods.base import Context, Method, held_out_pairs, pair_texts


class RM(Method):
    name = "rm"

    def responses(self, example, i: int) -> list[str]:
        return pair_texts(example, i, self.name)

    def eval_items(self, examples: list, tokenizer) -> list[Item]:
        return held_out_pairs(self, examples, tokenizer)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        rm = RewardModel(model, self.cfg.rm_heads, self.cfg.rm_aggregate)
        torch.manual_seed(self.cfg.seed)
        rm.head.reset_parameters()
        return rm

    def loss(self, ctx: Context, items: list[Item], idx: list[int]):
        rm = unwrap_model(ctx.model)
        prompts = [it.prompt_ids for it in items for _ in it.responses]
        responses = [r for it in items for r in it.responses]
        lay = layout_for(rm.lm, prompts, responses, ctx.pad_id, share_prompts=self.cfg.share_prompts,
                         padding_free=self.cfg.padding_free)
        per_head = ctx.model(per_head=True, layout=lay).view(len(items), 2, -1)  # [B, 2, k]
        margin = torch.tensor([it.scores[0] if it.scores else 0.0 for it in items], device=per_head.device)
        losses = bt_loss(per_head[:, 0], per_head[:, 1], margin.unsqueeze(-1), center_coef=self.cfg.rm_center_coef)
        loss = losses.mean()
        r_c, r_r = rm.aggregate_heads(per_head[:, 0]).detach(), rm.aggregate_heads(per_head[:, 1]).detach()
        return loss, {
            "loss": loss.detach(),
            "rewards/chosen": r_c.mean(),
            "rewards/rejected": r_r.mean(),
            "rewards/margins": (r_c - r_r).mean(),
            "rewards/accuracies": pair_wins(r_c, r_r).float().mean(),
        }

    def save(self, trained: torch.nn.Module, folder: Path, tensors: dict[str, torch.Tensor] | None = None) -> None:
        trained.save_pretrained(folder, tensors)
