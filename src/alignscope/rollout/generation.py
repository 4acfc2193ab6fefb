"""Batched sampling with KV cache and left padding, returning tokens and their log-probabilities.

Rollouts feed RL, best-of-n, prompt selection and the RM audit. Hugging Face `generate` is the
default engine; `rollout.vllm.VLLMGenerator` has the same interface for GPU users with vLLM
installed, and `rollout.backend.generate_with` picks one of the two.
The log-probabilities are those of the distribution the tokens were actually drawn from (after
temperature and top-p), which is what an off-policy correction or a KL estimate needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from alignscope.data.records import Prompt
from alignscope.data.tokenize import render_prompt, uses_special_tokens
from alignscope.errors import ConfigError, ModelError
from alignscope.models.scoring import check_vocab, largest_id, pad_token_id


@dataclass
class GenerationConfig:
    """How to sample: `n` responses per prompt, at most `max_new_tokens` each (greedy when not `do_sample`)."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    do_sample: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0 or self.n <= 0:
            raise ConfigError(f"max_new_tokens and n must be positive, got {self.max_new_tokens} and {self.n}")
        if self.do_sample and self.temperature <= 0:
            raise ConfigError(f"temperature must be positive when sampling, got {self.temperature}", "use do_sample=false for greedy decoding")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Rollout:
    """Samples in prompt order, each prompt's n samples consecutive (sample j is for prompt `prompt_index[j]`)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # cut after the first stop token, which is kept
    texts: list[str]  # decoded responses, stop token and special tokens left out
    prompt_index: list[int]
    logprobs: list[torch.Tensor] = field(default_factory=list)  # [len(response_ids[j])] float32, sampling distribution
    stop_ids: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def finished(self) -> list[bool]:
        """Whether each response stopped on its own (ended with a stop token) rather than at the length cap."""
        return [bool(r) and r[-1] in self.stop_ids for r in self.response_ids]


def encode_prompts(tokenizer, prompts: list[Prompt]) -> list[list[int]]:
    """Prompt token ids exactly as the trainers and the scoring engine build them (chat template + generation prompt)."""
    out = []
    for p in prompts:
        ids = tokenizer(render_prompt(tokenizer, p), add_special_tokens=uses_special_tokens(tokenizer, p))["input_ids"]
        if not ids:
            start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            if start is None:
                raise ConfigError("an empty prompt with a tokenizer that has neither BOS nor EOS", "give every prompt some text")
            ids = [start]  # the first response token needs a position that predicts it
        out.append(list(ids))
    return out


def stop_token_ids(model, tokenizer) -> tuple[int, ...]:
    """The tokenizer's EOS plus the model's generation-config EOS ids (chat models often end turns with either)."""
    ids: list[int] = []
    for cand in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        for i in cand if isinstance(cand, (list, tuple)) else [cand]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ModelError("the tokenizer and model define no EOS token, so sampling cannot stop", "set tokenizer.eos_token")
    return tuple(ids)


def trim_at_stop(tokens: list[int], stops: tuple[int, ...]) -> list[int]:
    """The tokens up to and including the first stop token."""
    for k, t in enumerate(tokens):
        if t in stops:
            return tokens[: k + 1]
    return tokens


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the sampler without disturbing the caller's random state (restored on exit)."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _pad_left(rows: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    """Left padding (decoder-only generation needs prompts flush right).

    Built here rather than by the tokenizer, so its `padding_side` is never touched (no state to
    restore) and tokenizers without a pad token work (pad = EOS; padding is masked out).
    """
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros_like(input_ids)
    for k, r in enumerate(rows):
        input_ids[k, width - len(r) :] = torch.tensor(r)
        attn[k, width - len(r) :] = 1
    return {"input_ids": input_ids, "attention_mask": attn}


class _SampledLogprobs:
    """The last logits processor of a `generate` call: it applies temperature and top-p itself, so it sees
    the distribution tokens are drawn from, and keeps the log-probability of each drawn token.

    Hugging Face's `output_scores` would hold every step's [batch, vocab] scores until the end
    (64 samples x 256 tokens x a 49k vocabulary: 3.2 GB); this keeps one step.
    """

    def __init__(self, cfg: GenerationConfig):
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.warpers = []
        if cfg.do_sample and cfg.temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(cfg.temperature))
        if cfg.do_sample and cfg.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(cfg.top_p, min_tokens_to_keep=1))
        self.last: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.last is not None:  # the token drawn at the previous step is now the last input
            self.steps.append(self.last.gather(-1, input_ids[:, -1:]).squeeze(-1))
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """[batch, steps] log-probabilities of `new_tokens`, the tokens this call generated."""
        steps = self.steps + [self.last.gather(-1, new_tokens[:, -1:]).squeeze(-1)]
        if len(steps) != new_tokens.shape[1]:
            raise ModelError(f"generate produced {new_tokens.shape[1]} tokens per sample but called the log-prob "
                             f"recorder {len(steps)} times", "this transformers version applies logits processors "
                             "differently; use a transformers version alignscope supports (see pyproject.toml)")
        return torch.stack(steps, dim=1)


class _TokenTicker:
    """A stopping criterion that never stops: it advances a progress bar by one token per sequence per step."""

    def __init__(self, bar):
        self.bar = bar

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.bar.update(input_ids.shape[0])
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate(
    model, tokenizer, prompts: list[Prompt], cfg: GenerationConfig, batch_size: int = 64, progress: str | None = None
) -> Rollout:
    """Sample `cfg.n` responses per prompt with Hugging Face `generate` (KV cache, left padding).

    Deterministic given `cfg.seed` (and the same batch_size). Log-probabilities are those of the
    sampling distribution (after temperature and top-p; top-k off); with greedy decoding, of the
    model's own distribution. `progress` (a label) shows a bar in token steps: sampling a real
    model on a CPU takes minutes.
    """
    from transformers import LogitsProcessorList, StoppingCriteriaList

    device = next(model.parameters()).device
    stops = stop_token_ids(model, tokenizer)
    pad = pad_token_id(tokenizer)
    encoded = encode_prompts(tokenizer, prompts)
    check_vocab(model, max(largest_id(encoded), pad), len(tokenizer) if hasattr(tokenizer, "__len__") else None)
    flat = [(i, ids) for i, ids in enumerate(encoded) for _ in range(cfg.n)]
    # Every Hugging Face warper off (a model's generation config may set some): `_SampledLogprobs` warps last.
    sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0,
                "eta_cutoff": 0.0} if cfg.do_sample else {}
    out = Rollout([], [], [], [], [], stop_ids=stops)
    bar = tqdm(total=len(flat) * cfg.max_new_tokens, desc=progress, disable=progress is None, unit="tok")
    ticker = StoppingCriteriaList([_TokenTicker(bar)])
    was_training = model.training
    model.eval()
    try:
        with _seeded(cfg.seed, device):
            for s in range(0, len(flat), batch_size):
                chunk = flat[s : s + batch_size]
                batch = _pad_left([ids for _, ids in chunk], pad)
                width = batch["input_ids"].shape[1]
                recorder = _SampledLogprobs(cfg)
                gen = model.generate(
                    input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                    max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, pad_token_id=pad, eos_token_id=list(stops),
                    return_dict_in_generate=True, use_cache=True, logits_processor=LogitsProcessorList([recorder]),
                    stopping_criteria=ticker, **sampling,
                )
                bar.update(len(chunk) * cfg.max_new_tokens - (bar.n - s * cfg.max_new_tokens))  # a batch that stopped early
                new = gen.sequences[:, width:]
                lp = recorder.finish(new).cpu()
                new = new.cpu()
                for row, (i, ids) in enumerate(chunk):
                    toks = trim_at_stop(new[row].tolist(), stops)
                    out.prompt_ids.append(list(ids))
                    out.response_ids.append(toks)
                    out.texts.append(tokenizer.decode(toks[:-1] if toks[-1] in stops else toks, skip_special_tokens=True))
                    out.prompt_index.append(i)
                    out.logprobs.append(lp[row, : len(toks)].clone())
    finally:
        bar.close()
        model.train(was_training)
    return out
