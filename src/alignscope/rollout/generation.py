"""Batched sampling with a KV cache shared by each prompt's samples, returning tokens and their log-probabilities.

Rollouts feed RL, best-of-n, prompt selection and the RM audit. `generate` runs each distinct prompt
through the model once (left-padded), copies its KV cache to its n samples, and decodes token by
token, dropping rows from the batch as they stop; it samples itself, so it knows the log-probability
of every drawn token under the distribution it was drawn from (after temperature and top-p), which is
what an off-policy correction or a KL estimate needs. Models whose cache it cannot copy and select
rows of fall back to Hugging Face `generate`. `rollout.vllm.VLLMGenerator` has the same interface for
GPU users with vLLM installed, and `rollout.backend.generate_with` picks one of the two.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from alignscope.data.records import Prompt
from alignscope.data.tokenize import render_prompt, uses_special_tokens
from alignscope.errors import ConfigError, ModelError
from alignscope.models.scoring import check_vocab, largest_id, pad_token_id, unwrap_model


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


def sampling_logprobs(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """Float32 log-probabilities [..., vocab] of the distribution tokens are drawn from: logits / temperature,
    then the nucleus (the most likely tokens until top_p of the mass, at least one; -inf elsewhere), renormalised.

    The one home of the sampling distribution: the sampler draws from it and records it, and a test or
    an off-policy estimate re-scores with it. Float32 whatever the weights' dtype.
    """
    logits = logits.float() / temperature
    if top_p < 1.0:
        ascending, order = logits.sort(dim=-1)
        drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        drop[..., -1] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.log_softmax(logits, dim=-1)


def _draw(logp: torch.Tensor) -> torch.Tensor:
    """One token id per row [rows, 1] drawn from exp(logp): the float64 CDF inverted at one uniform number per row.

    Exact, like `torch.multinomial`, which on a CPU draws an exponential per vocabulary entry instead: 22 ms for
    64 rows of an 8k vocabulary on one core against 1.8 ms here; a batch of 64 samples x 64 tokens of the
    benchmark's 8M-parameter model took 2.2 CPU seconds with multinomial, 1.6 with this.
    """
    cdf = logp.exp().double().cumsum(dim=-1)
    u = torch.rand((cdf.shape[0], 1), dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)


def _warp(cfg: GenerationConfig) -> tuple[float, float]:
    """(temperature, top_p) of the distribution drawn from: the model's own one when greedy."""
    return (cfg.temperature, cfg.top_p) if cfg.do_sample else (1.0, 1.0)


class _SampledLogprobs:
    """The last logits processor of a Hugging Face `generate` call (the fallback path): it turns the scores into
    `sampling_logprobs`, so `generate` samples from exactly that distribution, and keeps each drawn token's entry.

    Hugging Face's `output_scores` would hold every step's [batch, vocab] scores until the end
    (64 samples x 256 tokens x a 49k vocabulary: 3.2 GB); this keeps one step.
    """

    def __init__(self, cfg: GenerationConfig):
        self.temperature, self.top_p = _warp(cfg)
        self.last: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.last is not None:  # the token drawn at the previous step is now the last input
            self.steps.append(self.last.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.last = sampling_logprobs(scores, self.temperature, self.top_p)
        return self.last

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


# Cache layers whose batch rows `batch_repeat_interleave` and `batch_select_indices` copy and select whole: keys and
# values, windowed or not, or nothing at all. Linear-attention (recurrent) states and indexer caches are left out.
_SHAREABLE_LAYERS = frozenset({"DynamicLayer", "DynamicSlidingWindowLayer", "DummyLayer"})


@functools.cache
def _layer_with_room() -> type:
    """transformers' DynamicLayer, but each step's keys and values are written into room kept at the end of its
    buffers (keys and values are views of their filled part), where DynamicLayer concatenates and so copies the
    whole cache every step: a batch of 64 samples x 64 tokens of the benchmark's 8M-parameter model took 1.6 CPU
    seconds with concatenation, 1.2 with this. Built on first use: importing this module imports no transformers."""
    from transformers.cache_utils import DynamicLayer

    class LayerWithRoom(DynamicLayer):
        def __init__(self, room: int):
            super().__init__()
            self.room, self.length, self.buffers = room, 0, None

        def _grown(self, like: torch.Tensor, start: int) -> torch.Tensor:
            """A buffer holding the first `start` positions of `like`, with room for `room` positions past `length`."""
            out = like.new_empty(*like.shape[:2], self.length + self.room, like.shape[-1])
            out[..., :start, :] = like[..., :start, :]
            return out

        def _view(self) -> tuple[torch.Tensor, torch.Tensor]:
            self.keys, self.values = (b[..., : self.length, :] for b in self.buffers)
            return self.keys, self.values

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            start, self.length = self.length, self.length + key_states.shape[-2]
            if self.buffers is None or self.length > self.buffers[0].shape[-2]:  # the first call, or out of room
                self.buffers = tuple(self._grown(b, start) for b in (self.buffers or (key_states, value_states)))
            for buffer, new in zip(self.buffers, (key_states, value_states)):
                buffer[..., start : self.length, :] = new
            return self._view()

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.buffers is not None:
                self.buffers = tuple(b.repeat_interleave(repeats, dim=0) for b in self.buffers)
                self._view()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.buffers is not None:
                self.buffers = tuple(b[indices] for b in self.buffers)
                self._view()

    return LayerWithRoom


def _dynamic_cache(lm):
    """An empty DynamicCache laid out for `lm` (sliding-window layers where its config has them)."""
    from transformers import DynamicCache

    config = lm.config.get_text_config(decoder=True) if hasattr(lm.config, "get_text_config") else lm.config
    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers < 4.56 lays its cache out on the first update
        return DynamicCache()


def _new_cache(lm, room: int):
    """`_dynamic_cache`, its full-attention layers keeping room for `room` more tokens than they are first given."""
    cache = _dynamic_cache(lm)
    if hasattr(cache, "layers"):  # transformers >= 4.56
        cache.layers = [_layer_with_room()(room) if type(layer).__name__ == "DynamicLayer" else layer for layer in cache.layers]
    return cache


def shared_prefill_refusal(model) -> str | None:
    """Why `model` cannot have its prompts' KV caches copied to their samples (None when it can).

    The fast path builds a DynamicCache, copies its rows n times and drops rows as samples stop;
    a model whose cache is of another kind (recurrent states, encoder-decoder) would be mis-sampled
    by that, so it is sampled with Hugging Face `generate` instead.
    """
    lm = unwrap_model(model)
    name = type(lm).__name__
    if getattr(lm.config, "is_encoder_decoder", False):
        return f"{name} is an encoder-decoder model"
    if not {"cache", "past_key_values"} & set(inspect.signature(lm.forward).parameters):
        return f"{name}.forward takes no KV cache"
    supports = getattr(lm, "_supports_default_dynamic_cache", None)
    if supports is not None and not supports():
        return f"{name} keeps a cache of its own kind, not a DynamicCache"
    cache = _dynamic_cache(lm)
    other = sorted({type(layer).__name__ for layer in getattr(cache, "layers", [])} - _SHAREABLE_LAYERS)
    if other:
        return f"{name}'s cache has {', '.join(other)} layers, whose rows alignscope does not copy"
    if not (hasattr(cache, "batch_repeat_interleave") and hasattr(cache, "batch_select_indices")):
        return "this transformers version's DynamicCache cannot copy or select batch rows"
    return None


def _stepper(lm) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, object], torch.Tensor]:
    """A forward pass that appends its tokens' keys and values to a cache and returns the logits [rows, vocab]
    at each row's last position (the only ones sampling needs: no full-vocabulary logits for a prompt)."""
    params = inspect.signature(lm.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5
    keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def step(input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, cache) -> torch.Tensor:
        out = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                 **keep, **{cache_arg: cache})
        return out.logits[:, -1]

    return step


def _sample_shared(lm, prompt_ids: list[list[int]], cfg: GenerationConfig, stops: tuple[int, ...], pad: int,
                   device: torch.device, bar) -> tuple[list[list[int]], torch.Tensor]:
    """`cfg.n` samples of each prompt, prompt-major: one prefill per prompt, its KV cache copied to its n rows,
    then one token per live row per step; a row that draws a stop token leaves the batch.

    Returns each sample's `max_new_tokens` tokens (pad after its stop) and their log-probs [P * n, max_new_tokens].
    """
    n, steps = cfg.n, cfg.max_new_tokens
    temperature, top_p = _warp(cfg)
    step = _stepper(lm)
    batch = _pad_left(prompt_ids, pad)
    attn = batch["attention_mask"].to(device)
    cache = _new_cache(lm, room=steps)
    logits = step(batch["input_ids"].to(device), attn, (attn.cumsum(-1) - 1).clamp(min=0), cache)
    cache.batch_repeat_interleave(n)
    logits, attn = logits.repeat_interleave(n, dim=0), attn.repeat_interleave(n, dim=0)
    pos = attn.sum(-1, keepdim=True)  # [rows, 1] each row's next position: its prompt's length, padding left out
    live = torch.arange(len(prompt_ids) * n, device=device)  # the sample each batch row is
    tokens = torch.full((len(live), steps), pad, dtype=torch.long, device=device)
    logprobs = torch.zeros((len(live), steps), dtype=torch.float32, device=device)
    stop = torch.tensor(stops, device=device)
    for t in range(steps):
        logp = sampling_logprobs(logits, temperature, top_p)
        drawn = _draw(logp) if cfg.do_sample else logp.argmax(-1, keepdim=True)  # [rows, 1]
        tokens[live, t] = drawn[:, 0]
        logprobs[live, t] = logp.gather(-1, drawn)[:, 0]
        bar.update(len(live))
        going = ~torch.isin(drawn[:, 0], stop)
        if t == steps - 1 or not going.any():
            break
        if not going.all():  # finished rows leave: their cache rows, mask and positions with them
            keep = going.nonzero()[:, 0]
            cache.batch_select_indices(keep)
            live, drawn, attn, pos = live[keep], drawn[keep], attn[keep], pos[keep]
        attn = torch.cat([attn, attn.new_ones(len(live), 1)], dim=1)
        logits = step(drawn, attn, pos, cache)
        pos = pos + 1
    return tokens.tolist(), logprobs.cpu()


def _sample_hf(model, rows: list[list[int]], cfg: GenerationConfig, stops: tuple[int, ...], pad: int,
               device: torch.device, bar) -> tuple[list[list[int]], torch.Tensor]:
    """The fallback: Hugging Face `generate` over `rows` (each sample's prompt, its prefill run once per sample),
    sampling from `sampling_logprobs` through `_SampledLogprobs`. Same returns as `_sample_shared`."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    # Every Hugging Face warper off (a model's generation config may set some): `_SampledLogprobs` warps last.
    sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0,
                "eta_cutoff": 0.0} if cfg.do_sample else {}
    batch = _pad_left(rows, pad)
    recorder = _SampledLogprobs(cfg)
    gen = model.generate(
        input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
        max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, pad_token_id=pad, eos_token_id=list(stops),
        return_dict_in_generate=True, use_cache=True, logits_processor=LogitsProcessorList([recorder]),
        stopping_criteria=StoppingCriteriaList([_TokenTicker(bar)]), **sampling,
    )
    new = gen.sequences[:, batch["input_ids"].shape[1] :]
    return new.tolist(), recorder.finish(new).cpu()


@torch.no_grad()
def generate(
    model, tokenizer, prompts: list[Prompt], cfg: GenerationConfig, batch_size: int = 64, progress: str | None = None
) -> Rollout:
    """Sample `cfg.n` responses per prompt, each prompt's prefill run once and its KV cache shared by its samples.

    `batch_size` counts samples: batch_size // n prompts (at least one) are sampled together, and rows
    leave the batch as they stop. Deterministic given `cfg.seed` (and the same batch_size), leaving the
    caller's random state alone. Log-probabilities are those of the sampling distribution
    (`sampling_logprobs`: temperature and top-p, nothing else; the model's generation config plays no
    part); with greedy decoding, of the model's own distribution. `progress` (a label) shows a bar in
    token steps: sampling a real model on a CPU takes minutes.
    """
    device = next(model.parameters()).device
    stops = stop_token_ids(model, tokenizer)
    pad = pad_token_id(tokenizer)
    encoded = encode_prompts(tokenizer, prompts)
    check_vocab(model, max(largest_id(encoded), pad), len(tokenizer) if hasattr(tokenizer, "__len__") else None)
    refusal = shared_prefill_refusal(model)
    if refusal is not None:
        warnings.warn(f"alignscope: sampling with Hugging Face generate, which runs each prompt once per sample: {refusal}",
                      stacklevel=2)
    per_batch = max(1, batch_size // cfg.n)
    out = Rollout([], [], [], [], [], stop_ids=stops)
    bar = tqdm(total=len(encoded) * cfg.n * cfg.max_new_tokens, desc=progress, disable=progress is None, unit="tok")
    was_training = model.training
    model.eval()
    try:
        with _seeded(cfg.seed, device):
            for s in range(0, len(encoded), per_batch):
                chunk, before = encoded[s : s + per_batch], bar.n
                if refusal is None:
                    tokens, lp = _sample_shared(unwrap_model(model), chunk, cfg, stops, pad, device, bar)
                else:
                    tokens, lp = _sample_hf(model, [ids for ids in chunk for _ in range(cfg.n)], cfg, stops, pad, device, bar)
                bar.update(len(chunk) * cfg.n * cfg.max_new_tokens - (bar.n - before))  # rows that stopped early
                for row, drawn in enumerate(tokens):
                    ids, toks = chunk[row // cfg.n], trim_at_stop(drawn, stops)
                    out.prompt_ids.append(list(ids))
                    out.response_ids.append(toks)
                    out.texts.append(tokenizer.decode(toks[:-1] if toks[-1] in stops else toks, skip_special_tokens=True))
                    out.prompt_index.append(s + row // cfg.n)
                    out.logprobs.append(lp[row, : len(toks)].clone())
    finally:
        bar.close()
        model.train(was_training)
    return out
