"""The likelihood-displacement monitor: per-pair log-probs of held-out pairs now against the start,
and for short responses the tokens that gained probability mass. Offline training and the TRL
callback (`integrations.trl`) both call these."""

from __future__ import annotations

from typing import Any

import torch

from alignscope.diagnostics.accuracy import pair_wins
from alignscope.diagnostics.displacement import mass_gainers
from alignscope.models.scoring import body_and_head, score_sequences
from alignscope.training.items import Item
from alignscope.training.metrics import MetricsLogger


def evaluate(model, eval_items: list[Item], ref: dict[int, list[float]] | None, pad_id: int, beta: float, batch_size: int) -> dict[str, Any]:
    """Per-pair chosen/rejected log-probs on held-out pairs, ranking and implicit-reward accuracy (ties count ½)."""
    out = score_sequences(
        model, [it.prompt_ids for it in eval_items for _ in it.responses[:2]],
        [r for it in eval_items for r in it.responses[:2]], pad_id=pad_id, batch_size=batch_size,
    )
    lp = out.logps.view(-1, 2)
    res = {"chosen": lp[:, 0].tolist(), "rejected": lp[:, 1].tolist(), "ranking_accuracy": float(pair_wins(lp[:, 0], lp[:, 1]).mean())}
    if ref is not None:
        r = torch.tensor([ref[i][:2] for i in range(len(eval_items))])
        res["implicit_reward_accuracy"] = float(pair_wins(beta * (lp[:, 0] - r[:, 0]), beta * (lp[:, 1] - r[:, 1])).mean())
    short = [it for it in eval_items if len(it.responses[0]) <= SHORT_RESPONSE_TOKENS]
    if short:
        res["first_token_probs"] = first_token_probs(model, short, pad_id, batch_size)
    return res


SHORT_RESPONSE_TOKENS = 3  # chosen responses this short (EOS included) get the "where did the mass go" monitor


@torch.no_grad()
def first_token_probs(model, items: list[Item], pad_id: int, batch_size: int) -> torch.Tensor:
    """Mean next-token distribution [V] at the first response position of `items`.

    Scoring a one-token response makes the engine's `hidden_sum` exactly the hidden state that
    predicts it, so the full-vocabulary softmax is taken at that one position only.
    """
    out = score_sequences(model, [it.prompt_ids for it in items], [it.responses[0][:1] for it in items],
                          pad_id=pad_id, batch_size=batch_size, return_hidden=True)
    _, head = body_and_head(model)
    logits = head(out.hidden_sum.to(device=head.weight.device, dtype=head.weight.dtype)).float()
    return torch.softmax(logits, dim=-1).mean(0).cpu()


def log_eval_point(metrics_log: MetricsLogger, step: int, now: dict[str, Any], start: dict[str, Any], start_probs, tokenizer) -> dict[str, Any]:
    """One monitor point: displacement against the start and, for short responses, the tokens that gained mass.
    Returns the row written to displacement.jsonl (the TRL callback forwards it to the trainer's loggers)."""
    probs = now.pop("first_token_probs", None)
    gainers = None
    if probs is not None and start_probs is not None and step > 0:
        gainers = [{"token": tokenizer.decode([i]), "id": i, "gain": round(g, 6)} for i, g in mass_gainers(start_probs, probs, top_k=5)]
    return metrics_log.eval_point(step, now, start, mass_gainers=gainers)
