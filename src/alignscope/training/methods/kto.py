"""KTO on unpaired good/bad feedback (TRL's KTOTrainer), with its KL reference point.

The reference point is estimated on mismatched pairs: each completion scored after the next
item's prompt. Both the matched and the mismatched sequence get a cached reference log-prob.
"""

from __future__ import annotations

import torch

from alignscope.data.records import UnpairedExample
from alignscope.errors import DataError
from alignscope.losses.unpaired import kto_kl_estimate, kto_loss
from alignscope.training.items import Item
from alignscope.training.methods.base import Context, Method, Seq, reference, score


def mismatched(items: list[Item], i: int) -> Seq:
    """Item i's completion after the next item's prompt (the KL estimate's sample)."""
    return items[(i + 1) % len(items)].prompt_ids, items[i].responses[0]


class KTO(Method):
    name = "kto"

    def responses(self, example, i: int) -> list[str]:
        if not isinstance(example, UnpairedExample):
            raise DataError(f"example {i} is {type(example).__name__}; KTO needs unpaired prompt/completion/label data")
        return [example.completion]

    @property
    def needs_reference(self) -> bool:
        return True

    def reference_sequences(self, items: list[Item]) -> list[list[Seq]]:
        """Per item: (its own prompt, its completion) and (the next item's prompt, its completion)."""
        return [[(it.prompt_ids, it.responses[0]), mismatched(items, i)] for i, it in enumerate(items)]

    def loss(self, ctx: Context, items: list[Item], idx: list[int]):
        cfg = self.cfg
        out = score(ctx, items, [mismatched(items, i) for i in range(len(items))])
        b = len(items)
        lp, kl_lp = out.logps[:b], out.logps[b:]
        ref, ref_kl = reference(ctx, idx, 0, lp.device), reference(ctx, idx, 1, lp.device)
        labels = torch.tensor([bool(it.label) for it in items], device=lp.device)
        kl = kto_kl_estimate(kl_lp, ref_kl)
        o = kto_loss(lp, ref, labels, kl, beta=cfg.beta, desirable_weight=cfg.kto_desirable_weight,
                     undesirable_weight=cfg.kto_undesirable_weight)
        loss = o.losses.mean()
        metrics = {"loss": loss.detach(), "kl": kl.detach()}
        for name, mask in (("chosen", labels), ("rejected", ~labels)):
            if mask.any():
                metrics[f"logps/{name}"] = lp[mask].detach().mean()
                metrics[f"rewards/{name}"] = o.rewards[mask].detach().mean()
        return loss, metrics
