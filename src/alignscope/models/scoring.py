"""The one scoring engine: batched forward passes over (prompt, response) token sequences.

Training, CHES, implicit rewards and evaluation all call `score_batch` (with or without grad)
or `score_sequences` (no grad, length-bucketed). It runs the transformer body once, gathers the
hidden states at the |y| positions that predict response tokens, and applies the unembedding
only there (in chunks), so no full-vocabulary logits are ever built for prompt positions.
Responses of one prompt can share a row behind a single copy of it (`build_layout`), so the
prompt is run once per pair or group instead of once per response; with sdpa attention the whole
batch is one row of real tokens and no padding (`build_packed_layout`, `models.attention`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from alignscope.errors import ModelError
from alignscope.models.attention import (
    PackedPlan,
    check_plan_ran,
    register_packed_attention,
)


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


def embedding_rows(model: nn.Module) -> int | None:
    """How many token ids the model's input embedding has rows for, when it has one."""
    lm = unwrap_model(model)
    emb = lm.get_input_embeddings() if hasattr(lm, "get_input_embeddings") else None
    weight = getattr(emb, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def largest_id(*token_lists: list[list[int]]) -> int:
    """The largest token id in some lists of token-id sequences (-1 when there are none)."""
    return max((max(seq) for lists in token_lists for seq in lists if seq), default=-1)


def check_vocab(model: nn.Module, largest: int, tokenizer_size: int | None = None) -> None:
    """Refuse token ids the model has no embedding row for (a tokenizer larger than the model's vocabulary):
    the embedding would otherwise fail deep in the forward pass with an index error."""
    rows = embedding_rows(model)
    if rows is not None and largest >= rows:
        size = f" ({tokenizer_size} tokens)" if tokenizer_size is not None else ""
        raise ModelError(
            f"token id {largest} is outside the model's embedding, which has {rows} rows: the tokenizer{size} is larger "
            "than the model's vocabulary",
            "use the tokenizer saved with this model; if tokens were added to the tokenizer, resize the model's embedding "
            "(model.resize_token_embeddings(len(tokenizer))) and save both again",
        )


# Verified on these architectures (tests/models/test_shared_prompts.py): they build their attention
# masks with transformers' masking utilities, which take a custom 4D mask as it is.
SHARED_PROMPT_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def _verified(model: nn.Module, implementations: tuple[str, ...], length: int) -> bool:
    """A verified architecture, with one of `implementations` as its attention, whose sliding window
    (if any) covers `length` tokens: the custom layouts apply no window of their own."""
    config = getattr(unwrap_model(model), "config", None)
    if config is None or getattr(config, "model_type", None) not in SHARED_PROMPT_MODEL_TYPES:
        return False
    if getattr(config, "_attn_implementation", None) not in implementations:
        return False
    window = getattr(config, "sliding_window", None)
    return not (isinstance(window, int) and length > window)


def can_share_prompts(model: nn.Module, row_length: int) -> bool:
    """Whether `model` can score several responses in one row behind one copy of their prompt.

    That needs a block-causal 4D attention mask (each response sees the prompt and itself, not its
    siblings) and explicit position ids, which sdpa and eager attention accept on the verified
    architectures; a sliding window shorter than the row would be silently dropped, so it opts out.
    """
    return _verified(model, ("sdpa", "eager"), row_length)


@dataclass
class Layout:
    """Where every sequence of a batch sits in the model input: padded rows, or one padding-free row.

    Sequences that share a prompt may share a row ([prompt, r1, r2, ...]); in padded rows the
    attention mask is then 4D and block-causal, in the padding-free row `plan` says who sees whom.
    Indices are flat positions into the [rows * length] input.
    """

    input_ids: torch.Tensor  # [rows, T]
    attention_mask: torch.Tensor  # [rows, T]; [rows, 1, T, T] when prompts share padded rows; [1, 1, 1, 0] placeholder when packed
    position_ids: torch.Tensor  # [rows, T]
    pred_index: torch.Tensor  # [sum |y|] positions predicting each response token, in sequence order
    targets: torch.Tensor  # [sum |y|] the response tokens themselves
    last_index: torch.Tensor  # [N] position of each sequence's last token
    seq_index: torch.Tensor  # [sum |y|] which sequence each predicted token belongs to
    counts: list[int]  # |y| per sequence
    plan: PackedPlan | None = None  # set for a padding-free row: which keys each sequence attends to


def run_body(body: nn.Module, layout: Layout) -> torch.Tensor:
    """The transformer body's final hidden states for a layout, [rows, T, d]."""
    plan = layout.plan
    if plan is None:
        extra = {}
    else:
        plan.calls = 0
        extra = {"alignscope_plan": plan}
    hidden = body(input_ids=layout.input_ids, attention_mask=layout.attention_mask, position_ids=layout.position_ids,
                  use_cache=False, **extra).last_hidden_state
    if plan is not None:
        check_plan_ran(plan, body.config.num_hidden_layers)
    return hidden


def prompt_groups(prompt_ids: list[list[int]]) -> list[list[int]]:
    """Runs of consecutive sequences with the same prompt (chosen/rejected of a pair, a ranked list, a GRPO group)."""
    groups: list[list[int]] = []
    for i, p in enumerate(prompt_ids):
        if groups and (p is prompt_ids[groups[-1][0]] or p == prompt_ids[groups[-1][0]]):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def group_length(prompt_ids: list[list[int]], response_ids: list[list[int]], group: list[int]) -> int:
    """Tokens of one shared row: the group's prompt once, then every response."""
    return len(prompt_ids[group[0]]) + sum(len(response_ids[i]) for i in group)


def can_pack(model: nn.Module, longest_group: int) -> bool:
    """Whether `model` can score a batch padding-free: a verified architecture with sdpa attention whose
    sliding window (if any) covers every group, since the packed attention applies no window."""
    return _verified(model, ("sdpa",), longest_group) and register_packed_attention()


def build_packed_layout(prompt_ids: list[list[int]], response_ids: list[list[int]], groups: list[list[int]],
                        device: torch.device | str = "cpu") -> Layout:
    """The whole batch as one row of real tokens: each group is [prompt, r1, r2, ...], no padding.

    Every response attends to its group's prompt and itself (`PackedPlan`); position ids restart
    per sequence, so every number equals scoring each sequence in a row of its own.
    """
    n = len(prompt_ids)
    ids: list[int] = []
    pos: list[int] = []
    pred: list[list[int]] = [[] for _ in range(n)]
    last = [0] * n
    lengths: list[int] = []
    spans: list[tuple[int, int, torch.Tensor | None]] = []
    masks: dict[tuple[int, int], torch.Tensor] = {}
    for g in groups:
        p = prompt_ids[g[0]]
        start, head = len(ids), len(spans)
        ids.extend(p)
        pos.extend(range(len(p)))
        for k, i in enumerate(g):
            r = response_ids[i]
            o, m = len(ids), len(r)
            ids.extend(r)
            pos.extend(range(len(p), len(p) + m))
            pred[i] = [start + len(p) - 1, *range(o, o + m - 1)]
            last[i] = o + m - 1
            if k == 0:
                lengths.append(len(p) + m)
                spans.append((head, 0, None))
            else:
                if (m, len(p)) not in masks:
                    masks[(m, len(p))] = torch.ones(m, len(p) + m, dtype=torch.bool, device=device).tril(len(p))
                lengths.append(m)
                spans.append((head, len(p), masks[(m, len(p))]))
    counts = [len(r) for r in response_ids]
    return Layout(
        input_ids=torch.tensor([ids], dtype=torch.long, device=device),
        # A 4D placeholder: transformers passes a 4D mask through untouched instead of building a [T, T] one,
        # and any attention that ignored the plan would fail on its shape instead of mixing sequences.
        attention_mask=torch.ones((1, 1, 1, 0), dtype=torch.bool, device=device),
        position_ids=torch.tensor([pos], dtype=torch.long, device=device),
        pred_index=torch.tensor([x for q in pred for x in q], dtype=torch.long, device=device),
        targets=torch.tensor([x for r in response_ids for x in r], dtype=torch.long, device=device),
        last_index=torch.tensor(last, dtype=torch.long, device=device),
        seq_index=torch.repeat_interleave(torch.arange(n), torch.tensor(counts)).to(device),
        counts=counts,
        plan=PackedPlan(lengths, spans),
    )


def build_layout(
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    pad_id: int,
    *,
    padding_side: str = "right",
    groups: list[list[int]] | None = None,
    mask_dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> Layout:
    """The model input for a batch: one sequence a row, or one row per prompt group (`groups`, from `prompt_groups`).

    With shared prompts each prompt is run once for all its responses, which cuts the tokens of a
    DPO pair by |x| / (2|x| + |y_w| + |y_l|). `mask_dtype` None gives a boolean 4D mask (sdpa);
    a float dtype gives an additive one (eager attention).
    """
    n = len(prompt_ids)
    shared = groups is not None and any(len(g) > 1 for g in groups)
    if not shared:
        groups = [[i] for i in range(n)]
    lengths = [group_length(prompt_ids, response_ids, g) for g in groups]
    rows, t = len(groups), max(lengths)
    input_ids = torch.full((rows, t), pad_id, dtype=torch.long)
    attn = torch.zeros((rows, t), dtype=torch.long)
    pos = torch.zeros((rows, t), dtype=torch.long)
    seg = torch.full((rows, t), -1, dtype=torch.long)
    pred: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)] * n
    last = [0] * n
    for row, g in enumerate(groups):
        p = prompt_ids[g[0]]
        off = t - lengths[row] if padding_side == "left" and not shared else 0
        base = row * t + off
        input_ids[row, off : off + lengths[row]] = torch.tensor(p + [x for i in g for x in response_ids[i]], dtype=torch.long)
        attn[row, off : off + lengths[row]] = 1
        pos[row, off : off + len(p)] = torch.arange(len(p))
        seg[row, off : off + len(p)] = 0
        o = off + len(p)
        for k, i in enumerate(g):
            m = len(response_ids[i])
            pos[row, o : o + m] = torch.arange(len(p), len(p) + m)
            seg[row, o : o + m] = k + 1
            pred[i] = torch.cat([torch.tensor([base + len(p) - 1]), torch.arange(row * t + o, row * t + o + m - 1)])
            last[i] = row * t + o + m - 1
            o += m
    counts = [len(r) for r in response_ids]
    mask: torch.Tensor = attn
    if shared:
        q, k = seg[:, :, None], seg[:, None, :]
        allowed = torch.ones(t, t, dtype=torch.bool).tril() & ((k == 0) | (k == q)) & (k >= 0) & (q >= 0)
        allowed |= torch.eye(t, dtype=torch.bool)  # padding rows attend to themselves: no all-masked row, no NaN
        mask = allowed[:, None]
        if mask_dtype is not None:
            mask = torch.zeros(mask.shape, dtype=mask_dtype).masked_fill_(~mask, torch.finfo(mask_dtype).min)
    return Layout(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        position_ids=pos.to(device),
        pred_index=torch.cat(pred).to(device),
        targets=torch.tensor([x for r in response_ids for x in r], dtype=torch.long, device=device),
        last_index=torch.tensor(last, dtype=torch.long, device=device),
        seq_index=torch.repeat_interleave(torch.arange(n), torch.tensor(counts)).to(device),
        counts=counts,
    )


class AroundLM(nn.Module):
    """A module built around a causal LM (`self.lm`). FSDP's TRANSFORMER_BASED_WRAP reads the block classes to shard
    one by one (`_no_split_modules`) off the module accelerate prepares: without the LM's, the whole model would be
    one unit, gathered whole for every forward."""

    lm: nn.Module

    @property
    def _no_split_modules(self) -> list[str] | None:
        return getattr(self.lm, "_no_split_modules", None)


class Scorer(AroundLM):
    """Makes scoring the forward of a module, so DDP/FSDP wrappers see it and sync gradients.

    Train a `Scorer(lm)` (wrapped by accelerate) and pass it to `score_batch`; a bare causal LM
    works too wherever no wrapper is involved (evaluation, audits).
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, layout: Layout, compute_logps: bool, chunk_tokens: int | None):
        return _score_forward(self.lm, layout, compute_logps, chunk_tokens)


def default_chunk_tokens(vocab_size: int) -> int:
    """Rows of logits per unembedding chunk. Measured on CPU (fp32, forward + backward): with an 8k
    vocabulary 256-512 rows beat 2048 by 15-20% (the chunk stays in cache); with 49k, 2048 is best."""
    return 512 if vocab_size <= 16384 else 2048


def _score_forward(lm, layout: Layout, compute_logps: bool, chunk_tokens: int | None):
    body, head = body_and_head(lm)
    chunk_tokens = chunk_tokens or default_chunk_tokens(head.weight.shape[0])
    hidden = run_body(body, layout)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_h = hidden[layout.pred_index]
    targets = layout.targets
    cap = getattr(unwrap_model(lm).config, "final_logit_softcapping", None)
    parts = [flat_h.new_zeros(0 if compute_logps else flat_h.shape[0], dtype=torch.float32)]
    for s in range(0, flat_h.shape[0] if compute_logps else 0, chunk_tokens):
        logits = head(flat_h[s : s + chunk_tokens]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        parts.append(torch.log_softmax(logits, dim=-1).gather(-1, targets[s : s + chunk_tokens, None]).squeeze(-1))
    return torch.cat(parts), flat_h, hidden[layout.last_index]


def sharing_pays(config, prompt_ids: list[list[int]], response_ids: list[list[int]], groups: list[list[int]]) -> bool:
    """Whether one row per prompt group costs fewer FLOPs than one row per sequence.

    Sharing drops the repeated prompt tokens but lengthens the rows, and attention under a custom
    mask costs rows x T^2 (no block is skipped): with a short prompt and long responses (33 + 2 x 517
    tokens in the benchmark's `long` scale) the longer rows cost more than the prompt tokens saved.
    """
    d = config.hidden_size
    ff = getattr(config, "intermediate_size", None) or 4 * d
    per_token = 8 * d * d + 6 * d * ff  # q, k, v, o and the gated MLP, 2 FLOPs a multiply-add
    per_pair = 4 * d  # QK^T and AV for one query-key pair

    def cost(lengths: list[int]) -> int:
        t = max(lengths)
        return len(lengths) * t * (per_token + per_pair * t)

    shared = [group_length(prompt_ids, response_ids, g) for g in groups]
    return cost(shared) < cost([len(p) + len(r) for p, r in zip(prompt_ids, response_ids)])


def layout_for(lm: nn.Module, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int, *,
               padding_side: str = "right", share_prompts: bool = True, padding_free: bool = True) -> Layout:
    """The cheapest exact layout on `lm`'s device: padding-free when asked for and the model supports it
    (`can_pack`), else padded rows that share prompts when asked for, supported and cheaper (`sharing_pays`)."""
    groups = prompt_groups(prompt_ids) if share_prompts else [[i] for i in range(len(prompt_ids))]
    longest = max((group_length(prompt_ids, response_ids, g) for g in groups), default=0)
    device = body_and_head(lm)[1].weight.device
    if padding_free and can_pack(lm, longest):
        return build_packed_layout(prompt_ids, response_ids, groups, device)
    config = unwrap_model(lm).config
    share = (any(len(g) > 1 for g in groups) and can_share_prompts(lm, longest)
             and sharing_pays(config, prompt_ids, response_ids, groups))
    dtype = None if getattr(config, "_attn_implementation", None) == "sdpa" else next(lm.parameters()).dtype
    return build_layout(prompt_ids, response_ids, pad_id, padding_side=padding_side, groups=groups if share else None,
                        mask_dtype=dtype, device=device)


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
    chunk_tokens: int | None = None,
    share_prompts: bool = True,
    padding_free: bool = True,
) -> ScoreOutput:
    """Score a batch; differentiable when called under grad (training), cheap under no_grad.

    `model` is a causal LM or a (possibly wrapped) `Scorer`. `compute_logps=False` skips the
    unembedding. Consecutive sequences with the same prompt share one forward of it when
    `share_prompts` and the model allow (see `can_share_prompts`), and the batch is one row without
    padding when `padding_free` and the model allow (`can_pack`); results are the same either way.
    Every response must be non-empty and every prompt must have at least one token (the first
    response token needs a position that predicts it).
    """
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token (add a BOS token to empty prompts)")
    if any(len(r) == 0 for r in response_ids):
        raise ValueError("every response needs at least one token")
    inner = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    lm = inner.lm if isinstance(inner, Scorer) else model
    check_context(lm, max((len(p) + len(r) for p, r in zip(prompt_ids, response_ids)), default=0))
    check_vocab(lm, max(largest_id(prompt_ids, response_ids), pad_id))
    layout = layout_for(lm, prompt_ids, response_ids, pad_id, padding_side=padding_side, share_prompts=share_prompts,
                        padding_free=padding_free)
    if isinstance(inner, Scorer):
        tok_lp, flat_h, last_h = model(layout, compute_logps, chunk_tokens)
    else:
        tok_lp, flat_h, last_h = _score_forward(model, layout, compute_logps, chunk_tokens)
    n, device = len(prompt_ids), tok_lp.device
    # float32 sums whatever the weights' dtype: bfloat16 keeps 8 significant bits, so a sum near -300 would round to a multiple of 2.
    logps = torch.zeros(n, device=device, dtype=torch.float32).index_add(0, layout.seq_index, tok_lp.float())
    out = ScoreOutput(logps=logps, n_tokens=torch.tensor(layout.counts, device=device))
    if return_token_logps:
        out.token_logps = list(torch.split(tok_lp, layout.counts))
    if return_token_hidden:
        out.token_hidden = list(torch.split(flat_h, layout.counts))
    if return_hidden:
        hf = flat_h.float()
        out.hidden_sum = torch.zeros(n, hf.shape[-1], device=device, dtype=hf.dtype).index_add(0, layout.seq_index, hf)
        out.last_hidden = last_h.float()
    return out


def scoring_batches(prompt_ids: list[list[int]], response_ids: list[list[int]], batch_size: int) -> list[list[int]]:
    """`score_sequences`' batches (indices into the sequences): a prompt's consecutive sequences stay together and
    groups are taken shortest first, so each batch holds sequences of similar length."""
    batches: list[list[int]] = []
    cur: list[int] = []
    for g in sorted(prompt_groups(prompt_ids), key=lambda g: group_length(prompt_ids, response_ids, g)):
        if cur and len(cur) + len(g) > batch_size:
            batches.append(cur)
            cur = []
        cur.extend(g)
    if cur:
        batches.append(cur)
    return batches


@torch.no_grad()
def score_sequences(
    model: nn.Module,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    *,
    pad_id: int,
    batch_size: int = 16,
    return_token_logps: bool = False,
    return_hidden: bool = False,
    progress: str | None = None,
    share_prompts: bool = True,
    padding_free: bool = True,
    forwards: int = 0,
) -> ScoreOutput:
    """No-grad scoring of many sequences, bucketed by length so padding stays small; results in input order.

    Consecutive sequences with the same prompt stay together (and share its forward, see `score_batch`);
    `batch_size` counts sequences. `forwards`: make at least this many forwards, the extra ones on a one-token
    stand-in whose score is dropped: under FSDP each forward of a sharded model is a collective, so processes
    scoring shares of different sizes must make the same number (`scoring_batches` counts a share's).
    """
    n = len(prompt_ids)
    batches = scoring_batches(prompt_ids, response_ids, batch_size)
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
                share_prompts=share_prompts,
                padding_free=padding_free,
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
        for _ in range(forwards - len(batches)):
            score_batch(model, [[pad_id]], [[pad_id]], pad_id=pad_id, share_prompts=share_prompts, padding_free=padding_free)
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
