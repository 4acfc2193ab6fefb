"""Ranked feedback `y1 > y2 > ... > yn`: the Plackett-Luce DPO loss, PRO, or Curry-DPO's pair curriculum.

`rank_objective`:
- `plackett_luce`: DPO's Plackett-Luce generalisation on implicit rewards `β·(logp - ref_logp)`
  (`losses.ranking.plackett_luce_dpo_loss`);
- `pro`: PRO, Plackett-Luce over per-token mean log-probs, reference-free (`losses.ranking.pro_loss`);
- `curry`: every strictly ordered pair of each ranking (`losses.ranking.curry_pairs`: tied pairs are
  dropped), easy to hard by score gap, trained in that order with the n = 2 Plackett-Luce (= DPO) loss.
"""

from __future__ import annotations

import torch

from alignscope.data.records import PairExample, RankedExample
from alignscope.diagnostics.accuracy import pair_wins
from alignscope.errors import DataError
from alignscope.losses.ranking import curry_pairs, plackett_luce_dpo_loss, pro_loss
from alignscope.training.items import Item
from alignscope.training.methods.base import Context, Method, held_out_pairs, score


def curry_items(items: list[Item]) -> list[Item]:
    """Curry-DPO's curriculum: one pair item per strictly ordered pair, largest score gap first.

    Items without a score per response (pairwise records) are ordered by position, best first.
    The sort is stable, so equal gaps keep the data's order and the curriculum is deterministic.
    """
    pairs = []
    for it in items:
        scores = it.scores if len(it.scores) == len(it.responses) else [-k for k in range(len(it.responses))]
        pairs += [Item(it.prompt_ids, [it.responses[i], it.responses[j]], [gap]) for i, j, gap in curry_pairs(scores)]
    return sorted(pairs, key=lambda p: -p.scores[0])


class Rank(Method):
    name = "rank"

    def responses(self, example, i: int) -> list[str]:
        if isinstance(example, RankedExample):
            return list(example.completions)
        if isinstance(example, PairExample):
            return [example.chosen, example.rejected]
        raise DataError(f"example {i} is {type(example).__name__}; ranking needs prompt/completions/scores data")

    @property
    def curry(self) -> bool:
        return self.cfg.rank_objective == "curry"

    def items(self, examples: list, tokenizer):
        items, stats = super().items(examples, tokenizer)
        return (curry_items(items) if self.curry else items), stats

    def eval_items(self, examples: list, tokenizer) -> list[Item]:
        return held_out_pairs(self, examples, tokenizer)

    @property
    def shuffle(self) -> bool:
        return not self.curry  # the curriculum is the order

    @property
    def needs_reference(self) -> bool:
        return self.cfg.rank_objective != "pro"

    def loss(self, ctx: Context, items: list[Item], idx: list[int]):
        cfg = self.cfg
        out = score(ctx, items)
        sizes = [len(it.responses) for it in items]
        device = out.logps.device
        lp = torch.zeros(len(items), max(sizes), device=device, dtype=out.logps.dtype)
        n = torch.ones_like(lp)
        mask = torch.zeros(len(items), max(sizes), dtype=torch.bool, device=device)
        pos = 0
        for b, k in enumerate(sizes):
            lp[b, :k], n[b, :k] = out.logps[pos : pos + k], out.n_tokens[pos : pos + k].to(lp.dtype)
            mask[b, :k] = True
            pos += k
        if cfg.rank_objective == "pro":
            o = pro_loss(lp, n, mask, sft_weight=cfg.pro_sft_weight)
        else:
            ref = torch.zeros_like(lp)
            for b, (k, i) in enumerate(zip(sizes, idx)):
                ref[b, :k] = torch.tensor(ctx.ref_logps[i], device=device, dtype=lp.dtype)
            o = plackett_luce_dpo_loss(lp, ref, mask, beta=cfg.beta)
        loss = o.losses.mean()
        top, bottom = o.scores[:, 0], o.scores[torch.arange(len(items)), torch.tensor(sizes) - 1]
        return loss, {
            "loss": loss.detach(),
            "logps/chosen": lp[:, 0].detach().mean(),
            "rewards/chosen": top.mean(),
            "rewards/rejected": bottom.mean(),
            "rewards/margins": (top - bottom).mean(),
            "rewards/accuracies": pair_wins(top, bottom).float().mean(),
        }
