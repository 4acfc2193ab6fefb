"""Supervised fine-tuning loss: negative log-likelihood of the response tokens only.

The caller has already masked out prompt tokens and passes per-sequence sums of response-token
log-probabilities with their token counts.
"""

from __future__ import annotations

from typing import Literal

import torch

from alignscope.errors import ConfigError


def sft_loss(
    token_logps_sum: torch.Tensor,
    n_tokens: torch.Tensor,
    reduction: Literal["token", "sequence"] = "token",
) -> torch.Tensor:
    """NLL of response tokens.

    `token`: total NLL over total tokens, a scalar; every token weighs the same, as in the usual
    causal-LM loss, so long responses count more. `sequence`: per-example mean NLL over its own
    tokens, shape [B] (the caller takes the mean); every response weighs the same. Sequences with
    no tokens contribute 0.
    """
    n = n_tokens.to(token_logps_sum.dtype)
    if reduction == "token":
        return -token_logps_sum.sum() / n.sum().clamp(min=1)
    if reduction == "sequence":
        return -token_logps_sum / n.clamp(min=1)
    raise ConfigError(f"unknown SFT reduction '{reduction}'", "choose 'token' or 'sequence'")
