"""Padding-free attention: a batch as one row of tokens, each sequence attending only to itself.

A padded batch runs every layer over `rows x longest` tokens; on real preference data (lengths
from tens to a thousand tokens) most of them can be padding. Packing the batch into one row of
exactly the real tokens removes that work, but a plain causal mask over the row would let a
sequence see the ones before it. `PackedPlan` says which query positions see which keys; the
attention function below runs scaled-dot-product attention once per sequence (one span), so no
score outside a span is ever computed, which a block-diagonal mask over the whole row could not
avoid. A response that shares its prompt with an earlier response of the same group attends to
[prompt, itself] (the prompt is run once for the whole group).

The function is registered under transformers' "sdpa" name and passes every call without a plan
straight to the original, so models and generation behave exactly as before. Each call with a
plan is counted, so a model whose layers bypass the registry is caught rather than silently
attending across sequences (`check_plan_ran`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from alignscope.errors import ModelError


@dataclass
class PackedPlan:
    """The attention plan of one packed row, passed to every layer as the model kwarg `alignscope_plan`.

    The row is cut into `lengths` (one piece per span, in order). A span whose `prompt` is 0 is
    plain causal attention within its piece. A span with `prompt` p > 0 is a further response of a
    group: its queries see the first p positions of piece `head` (the group's prompt) and, causally,
    themselves; `mask` is that [m, p + m] pattern.
    """

    lengths: list[int]
    spans: list[tuple[int, int, torch.Tensor | None]]  # (head piece, prompt length, mask)
    calls: int = field(default=0, compare=False)


def packed_sdpa(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask, dropout: float = 0.0,
                scaling: float | None = None, is_causal: bool | None = None, alignscope_plan: PackedPlan | None = None,
                **kwargs):
    """transformers' sdpa attention with a packed-row path; [B, H, T, d] in, [B, T, H, d] out like the original."""
    if alignscope_plan is None:
        return _ORIGINAL_SDPA(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                              is_causal=is_causal, **kwargs)
    plan = alignscope_plan
    plan.calls += 1
    gqa = query.shape[1] != key.shape[1]
    qs, ks, vs = (t.split(plan.lengths, dim=2) for t in (query, key, value))
    outs = []
    for j, (head, p, mask) in enumerate(plan.spans):
        if mask is None:
            k, v = ks[j], vs[j]
        else:
            k = torch.cat([ks[head][:, :, :p], ks[j]], dim=2)
            v = torch.cat([vs[head][:, :, :p], vs[j]], dim=2)
        outs.append(F.scaled_dot_product_attention(qs[j], k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None,
                                                   scale=scaling, enable_gqa=gqa))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


_ORIGINAL_SDPA = None


def register_packed_attention() -> bool:
    """Put `packed_sdpa` in front of transformers' sdpa attention (idempotent). False where transformers is
    older than 5, whose models are not verified to pass layer kwargs through to the attention function."""
    global _ORIGINAL_SDPA
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        return False
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    current = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if current is not packed_sdpa:
        _ORIGINAL_SDPA = current
        AttentionInterface.register("sdpa", packed_sdpa)
        if "sdpa" in ALL_ATTENTION_FUNCTIONS._local_mapping:
            ALL_ATTENTION_FUNCTIONS["sdpa"] = packed_sdpa
    return True


def check_plan_ran(plan: PackedPlan, n_layers: int) -> None:
    """Refuse results from a forward whose layers did not all take the packed path (they would mix sequences)."""
    if plan.calls != n_layers:
        raise ModelError(
            f"padding-free attention ran in {plan.calls} of the model's {n_layers} layers (another 'sdpa' attention "
            "function may be registered, or this architecture bypasses transformers' attention registry)",
            "set padding_free=false (train and rl option; padding_free=False in the scoring functions) to score padded batches",
        )
