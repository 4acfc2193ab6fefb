"""One function per method: a batch of token items -> (loss, metrics).

Each objective makes ONE call to the scoring engine for the whole batch (chosen and rejected,
or all ranked responses, concatenated), then applies a pure loss from `alignscope.losses`.
Metric names follow TRL (`logps/chosen`, `rewards/margins`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignscope.losses.preference import (
    REFERENCE_FREE,
    combined_preference_loss,
    orpo_loss,
)
from alignscope.losses.ranking import plackett_luce_loss
from alignscope.losses.reward import bt_loss
from alignscope.losses.sft import sft_loss
from alignscope.losses.unpaired import kto_kl_estimate, kto_loss
from alignscope.models.scoring import layout_for, score_batch, unwrap_model
from alignscope.training.config import TrainConfig
from alignscope.training.items import Item


@dataclass
class Context:
    model: torch.nn.Module
    cfg: TrainConfig
    pad_id: int
    ref_logps: dict[int, list[float]] | None = None  # item index -> per-response reference log-probs


def needs_reference(cfg: TrainConfig) -> bool:
    if cfg.method == "dpo":
        return not cfg.orpo and any(t.type not in REFERENCE_FREE for t in cfg.loss)
    return cfg.method in ("kto", "rank")


def _score(ctx: Context, items: list[Item], extra: list[tuple[list[int], list[int]]] = ()):
    prompts = [it.prompt_ids for it in items for _ in it.responses] + [p for p, _ in extra]
    responses = [r for it in items for r in it.responses] + [r for _, r in extra]
    return score_batch(ctx.model, prompts, responses, pad_id=ctx.pad_id, share_prompts=ctx.cfg.share_prompts,
                       padding_free=ctx.cfg.padding_free)


def _ref(ctx: Context, idx: list[int], j: int, device) -> torch.Tensor:
    return torch.tensor([ctx.ref_logps[i][j] for i in idx], device=device)


def sft_objective(ctx: Context, items: list[Item], idx: list[int]):
    out = _score(ctx, items)
    loss = sft_loss(out.logps, out.n_tokens, reduction="token")
    return loss, {"loss": loss.detach(), "logps/chosen": out.logps.detach().mean()}


def dpo_objective(ctx: Context, items: list[Item], idx: list[int]):
    cfg = ctx.cfg
    out = _score(ctx, items)
    lp, n = out.logps.view(-1, 2), out.n_tokens.view(-1, 2)
    if cfg.orpo:
        mean = lp / n
        o = orpo_loss(mean[:, 0], mean[:, 1], -mean[:, 0], beta=cfg.beta)
        losses, r_c, r_r = o.losses, o.chosen_rewards, o.rejected_rewards
    else:
        ref_c = ref_r = None
        if ctx.ref_logps is not None:
            ref_c, ref_r = _ref(ctx, idx, 0, lp.device), _ref(ctx, idx, 1, lp.device)
        o = combined_preference_loss(
            [(t.type, t.weight) for t in cfg.loss],
            lp[:, 0],
            lp[:, 1],
            ref_c,
            ref_r,
            beta=cfg.beta,
            label_smoothing=cfg.label_smoothing,
            gamma=cfg.gamma,
            chosen_lengths=n[:, 0],
            rejected_lengths=n[:, 1],
        )
        losses, r_c, r_r = o.losses, o.chosen_rewards, o.rejected_rewards
    loss = losses.mean()
    return loss, {
        "loss": loss.detach(),
        "logps/chosen": lp[:, 0].detach().mean(),
        "logps/rejected": lp[:, 1].detach().mean(),
        "rewards/chosen": r_c.mean(),
        "rewards/rejected": r_r.mean(),
        "rewards/margins": (r_c - r_r).mean(),
        "rewards/accuracies": (r_c > r_r).float().mean(),
    }


def rm_objective(ctx: Context, items: list[Item], idx: list[int]):
    rm = unwrap_model(ctx.model)
    prompts = [it.prompt_ids for it in items for _ in it.responses]
    responses = [r for it in items for r in it.responses]
    lay = layout_for(rm.lm, prompts, responses, ctx.pad_id, share_prompts=ctx.cfg.share_prompts,
                     padding_free=ctx.cfg.padding_free)
    per_head = ctx.model(per_head=True, layout=lay).view(len(items), 2, -1)  # [B, 2, k]
    margin = torch.tensor([it.scores[0] if it.scores else 0.0 for it in items], device=per_head.device)
    losses = bt_loss(per_head[:, 0], per_head[:, 1], margin.unsqueeze(-1), center_coef=ctx.cfg.rm_center_coef)
    loss = losses.mean()
    r_c, r_r = rm.aggregate_heads(per_head[:, 0]).detach(), rm.aggregate_heads(per_head[:, 1]).detach()
    return loss, {
        "loss": loss.detach(),
        "rewards/chosen": r_c.mean(),
        "rewards/rejected": r_r.mean(),
        "rewards/margins": (r_c - r_r).mean(),
        "rewards/accuracies": ((r_c > r_r).float() + 0.5 * (r_c == r_r).float()).mean(),
    }


def kto_objective(ctx: Context, items: list[Item], idx: list[int]):
    cfg = ctx.cfg
    # KL reference point: each completion scored against the next item's prompt (mismatched pairs), as in KTO.
    shifted = [(items[(i + 1) % len(items)].prompt_ids, it.responses[0]) for i, it in enumerate(items)]
    out = _score(ctx, items, shifted)
    b = len(items)
    lp, kl_lp = out.logps[:b], out.logps[b:]
    ref = _ref(ctx, idx, 0, lp.device)
    ref_kl = torch.tensor([ctx.ref_logps[i][1] for i in idx], device=lp.device)
    labels = torch.tensor([bool(it.label) for it in items], device=lp.device)
    kl = kto_kl_estimate(kl_lp, ref_kl)
    o = kto_loss(lp, ref, labels, kl, beta=cfg.beta, desirable_weight=cfg.kto_desirable_weight, undesirable_weight=cfg.kto_undesirable_weight)
    loss = o.losses.mean()
    metrics = {"loss": loss.detach(), "kl": kl.detach()}
    for name, mask in (("chosen", labels), ("rejected", ~labels)):
        if mask.any():
            metrics[f"logps/{name}"] = lp[mask].detach().mean()
            metrics[f"rewards/{name}"] = o.rewards[mask].detach().mean()
    return loss, metrics


def kto_reference_sequences(items: list[Item]) -> list[tuple[list[int], list[int]]]:
    """Per item: (its own prompt, its completion) and (the next item's prompt, its completion)."""
    return [p for i, it in enumerate(items) for p in ((it.prompt_ids, it.responses[0]), (items[(i + 1) % len(items)].prompt_ids, it.responses[0]))]


def rank_objective(ctx: Context, items: list[Item], idx: list[int]):
    cfg = ctx.cfg
    out = _score(ctx, items)
    sizes = [len(it.responses) for it in items]
    n_max = max(sizes)
    device = out.logps.device
    lp = torch.full((len(items), n_max), 0.0, device=device)
    ref = torch.zeros_like(lp)
    mask = torch.zeros(len(items), n_max, dtype=torch.bool, device=device)
    pos = 0
    for b, (it, i) in enumerate(zip(items, idx)):
        k = sizes[b]
        lp[b, :k] = out.logps[pos : pos + k]
        ref[b, :k] = torch.tensor(ctx.ref_logps[i], device=device)
        mask[b, :k] = True
        pos += k
    scores = cfg.beta * (lp - ref)
    # Curry-DPO items are pairs (see `curry_items`); Plackett-Luce with n = 2 is exactly the DPO loss.
    losses = plackett_luce_loss(scores, mask)
    loss = losses.mean()
    top, bottom = scores[:, 0].detach(), scores[torch.arange(len(items)), torch.tensor(sizes) - 1].detach()
    return loss, {
        "loss": loss.detach(),
        "logps/chosen": lp[:, 0].detach().mean(),
        "rewards/chosen": top.mean(),
        "rewards/rejected": bottom.mean(),
        "rewards/margins": (top - bottom).mean(),
        "rewards/accuracies": (top > bottom).float().mean(),
    }


def curry_items(items: list[Item]) -> list[Item]:
    """Curry-DPO: every pair (i better than j) of each ranking, ordered easy to hard (largest score gap first)."""
    pairs = []
    for it in items:
        for i in range(len(it.responses)):
            for j in range(i + 1, len(it.responses)):
                gap = it.scores[i] - it.scores[j] if len(it.scores) == len(it.responses) else 0.0
                pairs.append(Item(it.prompt_ids, [it.responses[i], it.responses[j]], [gap]))
    return sorted(pairs, key=lambda p: -p.scores[0])


OBJECTIVES = {"sft": sft_objective, "dpo": dpo_objective, "rm": rm_objective, "kto": kto_objective, "rank": rank_objective}
