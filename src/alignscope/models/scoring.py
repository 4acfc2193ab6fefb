"""The one scoring engine: batched forward passes over (prompt, response) token sequences.

Training, CHES, implicit rewards and evaluation all call `score_batch` (with or without grad)
or `score_sequences` (no grad, length-bucketed). It runs the transformer body once, gathers the
hidden states at the |y| positions that predict response tokens, and applies the unembedding
only there (in chunks), so no full-vocabulary logits are ever built for prompt positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from alignscope.errors import ModelError


@dataclass
class ScoreOutput:
    """Per-sequence results; every tensor is indexed like the input sequences."""

    logps: torch.Tensor  # [N] sum of response-token log-probabilities
    n_tokens: torch.Tensor  # [N] number of response tokens (EOS included when appended)
    token_logps: list[torch.Tensor] | None = None  # N tensors of shape [|y_i|]
    hidden_sum: torch.Tensor | None = None  # [N, d] sum of final-norm hidden states predicting y
    last_hidden: torch.Tensor | None = None  # [N, d] final-norm hidden state at the last token
    token_hidden: list[torch.Tensor] | None = None  # N tensors [|y_i|, d]: per-token states (value heads)

    @property
    def mean_logps(self) -> torch.Tensor:
        return self.logps / self.n_tokens.clamp(min=1)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The causal LM under DDP/FSDP/accelerate/peft wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model") and callable(model.get_base_model):
            return model.get_base_model()
        else:
            return model


def body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer body (returns final-norm hidden states) and the unembedding of a causal LM."""
    lm = unwrap_model(model)
    body = getattr(lm, lm.base_model_prefix, None) if hasattr(lm, "base_model_prefix") else None
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if body is None or head is None:
        raise TypeError(f"{type(lm).__name__} is not a causal LM with a body and an output embedding")
    return body, head


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's position table covers, when its config says."""
    config = getattr(unwrap_model(model), "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context(model: nn.Module, longest: int) -> None:
    """Refuse sequences longer than the model's positions: learned position embeddings (GPT-2
    style) would otherwise fail deep in the forward pass with an index error."""
    limit = max_positions(model)
    if limit is not None and longest > limit:
        raise ModelError(f"a sequence of {longest} tokens is longer than the model's {limit} positions",
                         f"set max_length (--max-length on the command line) to at most {limit}")


def pad_batch(
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    pad_id: int,
    padding_side: str = "right",
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask, position_ids, and the mask of positions that predict response tokens."""
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    n, t = len(lengths), max(lengths)
    input_ids = torch.full((n, t), pad_id, dtype=torch.long)
    attn = torch.zeros((n, t), dtype=torch.long)
    pred = torch.zeros((n, t), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        off = 0 if padding_side == "right" else t - lengths[i]
        input_ids[i, off : off + lengths[i]] = torch.tensor(p + r, dtype=torch.long)
        attn[i, off : off + lengths[i]] = 1
        start = off + len(p) - 1
        pred[i, max(start, 0) : start + len(r)] = True
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    return input_ids.to(device), attn.to(device), position_ids.to(device), pred.to(device)


class Scorer(nn.Module):
    """Makes scoring the forward of a module, so DDP/FSDP wrappers see it and sync gradients.

    Train a `Scorer(lm)` (wrapped by accelerate) and pass it to `score_batch`; a bare causal LM
    works too wherever no wrapper is involved (evaluation, audits).
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, position_ids, pred, compute_logps: bool, chunk_tokens: int):
        return _score_forward(self.lm, input_ids, attention_mask, position_ids, pred, compute_logps, chunk_tokens)


def _score_forward(lm, input_ids, attn, pos, pred, compute_logps: bool, chunk_tokens: int):
    body, head = body_and_head(lm)
    hidden = body(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
    targets = torch.roll(input_ids, shifts=-1, dims=1)[pred]
    flat_h = hidden[pred]
    cap = getattr(unwrap_model(lm).config, "final_logit_softcapping", None)
    parts = [flat_h.new_zeros(0 if compute_logps else flat_h.shape[0], dtype=torch.float32)]
    for s in range(0, flat_h.shape[0] if compute_logps else 0, chunk_tokens):
        logits = head(flat_h[s : s + chunk_tokens]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        parts.append(torch.log_softmax(logits, dim=-1).gather(-1, targets[s : s + chunk_tokens, None]).squeeze(-1))
    return torch.cat(parts), flat_h, hidden


def score_batch(
    model: nn.Module,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    *,
    pad_id: int,
    padding_side: str = "right",
    return_token_logps: bool = False,
    return_hidden: bool = False,
    return_token_hidden: bool = False,
    compute_logps: bool = True,
    chunk_tokens: int = 2048,
) -> ScoreOutput:
    """Score a batch; differentiable when called under grad (training), cheap under no_grad.

    `model` is a causal LM or a (possibly wrapped) `Scorer`. `compute_logps=False` skips the
    unembedding. Every response must be non-empty and every prompt must have at least one
    token (the first response token needs a position that predicts it).
    """
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token (add a BOS token to empty prompts)")
    if any(len(r) == 0 for r in response_ids):
        raise ValueError("every response needs at least one token")
    inner = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    lm = inner.lm if isinstance(inner, Scorer) else model
    check_context(lm, max((len(p) + len(r) for p, r in zip(prompt_ids, response_ids)), default=0))
    device = body_and_head(lm)[1].weight.device
    input_ids, attn, pos, pred = pad_batch(prompt_ids, response_ids, pad_id, padding_side, device)
    if isinstance(inner, Scorer):
        tok_lp, flat_h, hidden = model(input_ids, attn, pos, pred, compute_logps, chunk_tokens)
    else:
        tok_lp, flat_h, hidden = _score_forward(model, input_ids, attn, pos, pred, compute_logps, chunk_tokens)
    n = len(prompt_ids)
    seq_idx = torch.arange(n, device=device).unsqueeze(1).expand_as(pred)[pred]
    counts = torch.tensor([len(r) for r in response_ids], device=device)
    logps = torch.zeros(n, device=device, dtype=tok_lp.dtype).index_add(0, seq_idx, tok_lp)
    out = ScoreOutput(logps=logps, n_tokens=counts)
    if return_token_logps:
        out.token_logps = list(torch.split(tok_lp, counts.tolist()))
    if return_token_hidden:
        out.token_hidden = list(torch.split(flat_h, counts.tolist()))
    if return_hidden:
        hf = flat_h.float()
        out.hidden_sum = torch.zeros(n, hf.shape[-1], device=device, dtype=hf.dtype).index_add(0, seq_idx, hf)
        if padding_side == "left":
            idx = torch.full((n,), attn.shape[1] - 1, device=device)
        else:
            idx = attn.sum(-1) - 1
        out.last_hidden = hidden[torch.arange(n, device=device), idx].float()
    return out


@torch.no_grad()
def score_sequences(
    model: nn.Module,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    *,
    pad_id: int,
    batch_size: int = 16,
    max_tokens_per_batch: int | None = None,
    return_token_logps: bool = False,
    return_hidden: bool = False,
    progress: str | None = None,
) -> ScoreOutput:
    """No-grad scoring of many sequences, bucketed by length so padding stays small; results in input order."""
    n = len(prompt_ids)
    order = sorted(range(n), key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        length = len(prompt_ids[i]) + len(response_ids[i])
        too_many = max_tokens_per_batch is not None and (len(cur) + 1) * length > max_tokens_per_batch
        if cur and (len(cur) >= batch_size or too_many):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    was_training = model.training
    model.eval()
    logps = torch.zeros(n)
    hidden_sum = last_hidden = None
    token_logps: list[torch.Tensor | None] = [None] * n
    try:
        for b in tqdm(batches, desc=progress, disable=progress is None, unit="batch"):
            out = score_batch(
                model,
                [prompt_ids[i] for i in b],
                [response_ids[i] for i in b],
                pad_id=pad_id,
                return_token_logps=return_token_logps,
                return_hidden=return_hidden,
            )
            idx = torch.tensor(b)
            logps[idx] = out.logps.float().cpu()
            if return_hidden:
                if hidden_sum is None:
                    d = out.hidden_sum.shape[-1]
                    hidden_sum, last_hidden = torch.zeros(n, d), torch.zeros(n, d)
                hidden_sum[idx] = out.hidden_sum.cpu()
                last_hidden[idx] = out.last_hidden.cpu()
            if return_token_logps:
                for j, i in enumerate(b):
                    token_logps[i] = out.token_logps[j].float().cpu()
    finally:
        model.train(was_training)
    return ScoreOutput(
        logps=logps,
        n_tokens=torch.tensor([len(r) for r in response_ids]),
        token_logps=token_logps if return_token_logps else None,
        hidden_sum=hidden_sum,
        last_hidden=last_hidden,
    )


def sequence_logps(model: nn.Module, tokenizer, prompts: list, responses: list[str], batch_size: int = 16, **enc_kw) -> torch.Tensor:
    """log π(y|x) for text (prompt, response) pairs: tokenizes with the exact boundary, then scores."""
    from alignscope.data.tokenize import encode_response

    encs = [encode_response(tokenizer, p, r, **enc_kw) for p, r in zip(prompts, responses)]
    return score_sequences(
        model,
        [e.prompt_ids for e in encs],
        [e.response_ids for e in encs],
        pad_id=pad_token_id(tokenizer),
        batch_size=batch_size,
    ).logps


def pad_token_id(tokenizer) -> int:
    """The pad id to use: the tokenizer's pad, else EOS (padding is masked, so any id works)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return 0
