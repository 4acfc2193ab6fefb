"""Batched sampling with KV cache and left padding, returning tokens and their log-probabilities.

Rollouts feed RL, best-of-n, prompt selection and the RM audit. Hugging Face `generate` is the
default engine; `VLLMGenerator` has the same interface for GPU users with vLLM installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from alignscope.data.records import Prompt
from alignscope.data.tokenize import uses_special_tokens, render_prompt
from alignscope.errors import ConfigError, ModelError
from alignscope.models.scoring import pad_token_id


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1  # samples per prompt
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
    """Samples in prompt order, each prompt's n samples consecutive."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # trimmed after the first EOS (EOS kept)
    texts: list[str]  # decoded responses without EOS or special tokens
    prompt_index: list[int]
    logprobs: list[torch.Tensor] = field(default_factory=list)  # per response token, under the sampling distribution


@torch.no_grad()
def generate(model, tokenizer, prompts: list[Prompt], cfg: GenerationConfig, batch_size: int = 64) -> Rollout:
    """Sample `cfg.n` responses for every prompt (greedy when `do_sample` is false)."""
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    eos = tokenizer.eos_token_id
    pad = pad_token_id(tokenizer)
    encoded = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=uses_special_tokens(tokenizer, p))["input_ids"] for p in prompts]
    flat = [(i, ids) for i, ids in enumerate(encoded) for _ in range(cfg.n)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = Rollout([], [], [], [])
    try:
        for s in range(0, len(flat), batch_size):
            chunk = flat[s : s + batch_size]
            width = max(len(ids) for _, ids in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attn = torch.zeros_like(input_ids)
            for r, (_, ids) in enumerate(chunk):
                input_ids[r, width - len(ids) :] = torch.tensor(ids)
                attn[r, width - len(ids) :] = 1
            kw = {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": 0} if cfg.do_sample else {}
            gen = model.generate(
                input_ids=input_ids.to(device), attention_mask=attn.to(device), max_new_tokens=cfg.max_new_tokens,
                do_sample=cfg.do_sample, pad_token_id=pad, eos_token_id=eos, output_scores=True,
                return_dict_in_generate=True, use_cache=True, **kw,
            )
            new = gen.sequences[:, width:].cpu()
            scores = torch.stack(gen.scores, dim=1).float().log_softmax(-1).cpu()  # [B, T, V] after temperature/top-p
            for r, (i, ids) in enumerate(chunk):
                toks = new[r].tolist()
                if eos in toks:
                    toks = toks[: toks.index(eos) + 1]
                if not toks:
                    toks = [eos]
                n_tok = len(toks)
                lp = scores[r, torch.arange(n_tok), torch.tensor(toks)]
                out.prompt_ids.append(list(ids))
                out.response_ids.append(toks)
                out.texts.append(tokenizer.decode(toks[:-1] if toks[-1] == eos else toks, skip_special_tokens=True))
                out.prompt_index.append(i)
                out.logprobs.append(lp)
    finally:
        model.train(was_training)
    return out


class VLLMGenerator:
    """The same `generate` interface backed by vLLM (GPU users; imported only when used)."""

    def __init__(self, model_path: str, **engine_kw):
        try:
            from vllm import LLM
        except ImportError:
            raise ModelError("vLLM is not installed", "pip install 'alignscope[vllm]' on a machine with a supported GPU, or use the default generator") from None
        self.llm = LLM(model=model_path, **engine_kw)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: list[Prompt], cfg: GenerationConfig) -> Rollout:
        from vllm import SamplingParams

        params = SamplingParams(n=cfg.n, temperature=cfg.temperature if cfg.do_sample else 0.0, top_p=cfg.top_p,
                                max_tokens=cfg.max_new_tokens, logprobs=0, seed=cfg.seed)
        texts = [render_prompt(self.tokenizer, p) for p in prompts]
        out = Rollout([], [], [], [])
        for i, res in enumerate(self.llm.generate(texts, params)):
            for c in res.outputs:
                out.prompt_ids.append(list(res.prompt_token_ids))
                out.response_ids.append(list(c.token_ids))
                out.texts.append(c.text)
                out.prompt_index.append(i)
                out.logprobs.append(torch.tensor([next(iter(d.values())).logprob for d in c.logprobs]))
        return out
