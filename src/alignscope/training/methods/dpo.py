"""DPO and its family (TRL's `loss_type` names), RPO mixtures, SimPO and ORPO: all of it in this file.

Read top to bottom: the records it takes (pairs), what the monitor scores (held-out pairs), when it
needs reference log-probs (any term that is not reference-free), and the loss: ONE scoring call
for chosen and rejected, then a pure loss from `alignscope.losses.preference`. Metric names follow
TRL (`logps/chosen`, `rewards/margins`, ...); `rewards/accuracies` counts a tie as ½
(`diagnostics.accuracy.pair_wins`), so it reads 0.5, not 0, while the policy still equals the reference.
"""

from __future__ import annotations

from alignscope.diagnostics.accuracy import pair_wins
from alignscope.losses.preference import (
    REFERENCE_FREE,
    combined_preference_loss,
    orpo_loss,
)
from alignscope.training.items import Item
from alignscope.training.methods.base import (
    Context,
    Method,
    held_out_pairs,
    pair_texts,
    reference,
    score,
)


class DPO(Method):
    name = "dpo"

    def responses(self, example, i: int) -> list[str]:
        return pair_texts(example, i, self.name)

    def eval_items(self, examples: list, tokenizer) -> list[Item]:
        return held_out_pairs(self, examples, tokenizer)

    @property
    def needs_reference(self) -> bool:
        return not self.cfg.orpo and any(t.type not in REFERENCE_FREE for t in self.cfg.loss)

    def loss(self, ctx: Context, items: list[Item], idx: list[int]):
        cfg = self.cfg
        out = score(ctx, items)
        lp, n = out.logps.view(-1, 2), out.n_tokens.view(-1, 2)
        if cfg.orpo:
            mean = lp / n
            o = orpo_loss(mean[:, 0], mean[:, 1], -mean[:, 0], beta=cfg.beta)
        else:
            ref_c = ref_r = None
            if ctx.ref_logps is not None:
                ref_c, ref_r = reference(ctx, idx, 0, lp.device), reference(ctx, idx, 1, lp.device)
            o = combined_preference_loss(
                [(t.type, t.weight) for t in cfg.loss], lp[:, 0], lp[:, 1], ref_c, ref_r,
                beta=cfg.beta, label_smoothing=cfg.label_smoothing, simpo_gamma=cfg.simpo_gamma,
                chosen_lengths=n[:, 0], rejected_lengths=n[:, 1],
            )
        r_c, r_r = o.chosen_rewards, o.rejected_rewards
        loss = o.losses.mean()
        return loss, {
            "loss": loss.detach(),
            "logps/chosen": lp[:, 0].detach().mean(),
            "logps/rejected": lp[:, 1].detach().mean(),
            "rewards/chosen": r_c.mean(),
            "rewards/rejected": r_r.mean(),
            "rewards/margins": (r_c - r_r).mean(),
            "rewards/accuracies": pair_wins(r_c, r_r).float().mean(),
        }
