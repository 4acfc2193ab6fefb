"""Tiny base models pretrained on the lab language, built once and cached.

Alignment experiments need a base model that speaks the language but is not aligned: it
answers, lists, describes, refuses and complies, right and wrong, with some diversity. We
train a BPE tokenizer and a small Llama on ChatML transcripts of the lab corpus (good and
mediocre responses mixed) with a plain next-token loop: AdamW, warmup + cosine schedule,
transcripts packed into fixed-length blocks. Everything is seeded and single-threaded so the
same config gives the same weights, and the result is cached under a hash of the config.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from alignscope.data.records import Prompt
from alignscope.errors import ConfigError
from alignscope.models.tiny import tiny_llama, train_bpe_tokenizer
from alignscope.world.generate import corpus, prompt_data
from alignscope.world.gold import gold_rewards
from alignscope.world.language import (
    LANGUAGE_VERSION,
    World,
    canonical_words,
    is_wellformed,
    parse_prompt,
)

PRETRAIN_VERSION = 1
INFO_FILE = "lab_pretrain.json"


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a pretrained lab model (its hash names the cache folder)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    steps: int
    lr: float
    batch_size: int = 16  # blocks per step
    block_size: int = 128  # tokens per block
    corpus_size: int = 4000  # transcripts
    vocab_size: int = 1024
    warmup: int = 20
    weight_decay: float = 0.05
    min_lr_ratio: float = 0.1
    world_seed: int = 0
    seed: int = 0


SIZES: dict[str, PretrainConfig] = {
    "tiny": PretrainConfig(hidden_size=96, num_layers=2, num_heads=4, steps=250, lr=3e-3),
    "small": PretrainConfig(
        hidden_size=192, num_layers=4, num_heads=6, steps=420, lr=4e-3, corpus_size=12000, warmup=30
    ),
}


def lab_config(size: str = "tiny", seed: int = 0, world_seed: int = 0) -> PretrainConfig:
    """The pretraining config of a named size."""
    if size not in SIZES:
        raise ConfigError(f"unknown lab model size {size!r}", f"use one of {', '.join(SIZES)}")
    return replace(SIZES[size], seed=seed, world_seed=world_seed)


def config_hash(cfg: PretrainConfig) -> str:
    """A short hash of the config and of the language/pretraining code versions."""
    blob = json.dumps({"cfg": asdict(cfg), "language": LANGUAGE_VERSION, "pretrain": PRETRAIN_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else `$ALIGNSCOPE_CACHE/lab`, else `~/.cache/alignscope/lab`."""
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("ALIGNSCOPE_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "alignscope") / "lab"


def lab_model_dir(
    cache_dir: str | os.PathLike | None = None, seed: int = 0, size: str = "tiny", world_seed: int = 0
) -> Path:
    """Where `pretrained_lab_model` keeps (or will keep) this model: `<root>/<size>-<seed>-<hash>`."""
    cfg = lab_config(size, seed, world_seed)
    return cache_root(cache_dir) / f"{size}-{seed}-{config_hash(cfg)}"


def load_pretrain_info(path: str | os.PathLike) -> dict:
    """The pretraining record saved beside a lab model: config, loss curve, timing, sample quality."""
    return json.loads((Path(path) / INFO_FILE).read_text())


def pretrained_lab_model(
    size: str = "tiny",
    seed: int = 0,
    *,
    cache_dir: str | os.PathLike | None = None,
    world_seed: int = 0,
    progress: bool = True,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """(model, tokenizer) pretrained on the lab corpus of `World(world_seed)`; cached after the first call.

    The build writes into a temporary folder beside the cache entry and renames it into place,
    so an interrupted build never leaves a half-written model that a later call would load.
    """
    final = lab_model_dir(cache_dir, seed, size, world_seed)
    if not (final / INFO_FILE).exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            model, tok, info = pretrain(lab_config(size, seed, world_seed), progress=progress)
            info["size"] = size
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=1))
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / INFO_FILE).exists():  # not a concurrent build that won the race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_lab_model(final)


def load_lab_model(path: str | os.PathLike) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Load a lab model folder written by `pretrained_lab_model` (eval mode)."""
    model = LlamaForCausalLM.from_pretrained(path)
    tok = PreTrainedTokenizerFast.from_pretrained(path)
    model.eval()
    return model, tok


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def pack(sequences: Sequence[list[int]], block_size: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedily pack whole sequences into blocks (no sequence split): (input_ids, labels).

    Blocks start at a transcript start, as prompts do at inference; the unused tail of a
    block is padding with label -100.
    """
    blocks, cur = [], []
    for seq in sequences:
        seq = seq[:block_size]
        if len(cur) + len(seq) > block_size:
            blocks.append(cur)
            cur = []
        cur = cur + seq
    if cur:
        blocks.append(cur)
    ids = torch.full((len(blocks), block_size), pad_id, dtype=torch.long)
    labels = torch.full((len(blocks), block_size), -100, dtype=torch.long)
    for i, b in enumerate(blocks):
        ids[i, : len(b)] = torch.tensor(b)
        labels[i, : len(b)] = torch.tensor(b)
    return ids, labels


def _lr_factor(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def pretrain(
    cfg: PretrainConfig, progress: bool = True, threads: int = 1
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, dict]:
    """Train tokenizer and model from scratch; returns them with a record of the run."""
    start = time.perf_counter()
    world = World(cfg.world_seed)
    texts = corpus(world, cfg.corpus_size, seed=cfg.seed)
    with _threads(threads):
        tok = train_bpe_tokenizer(texts, vocab_size=cfg.vocab_size)
        model = tiny_llama(
            tok, cfg.hidden_size, cfg.num_layers, cfg.num_heads, max_position_embeddings=512, seed=cfg.seed
        )
        seqs = tok(texts, add_special_tokens=False)["input_ids"]
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=(0.9, 0.95),
        )
        rng = random.Random(f"pretrain-{cfg.seed}")
        losses: list[float] = []
        batches: list[int] = []
        ids = labels = None
        model.train()
        bar = tqdm(range(cfg.steps), desc="pretraining lab model", disable=not progress, leave=False)
        for step in bar:
            if not batches:  # a new epoch: reshuffle transcripts and re-pack
                order = list(range(len(seqs)))
                rng.shuffle(order)
                ids, labels = pack([seqs[i] for i in order], cfg.block_size, tok.pad_token_id)
                batches = [i for i in range(0, len(ids) - cfg.batch_size + 1, cfg.batch_size)]
            b = batches.pop(0)
            x, y = ids[b : b + cfg.batch_size], labels[b : b + cfg.batch_size]
            for g in opt.param_groups:
                g["lr"] = cfg.lr * _lr_factor(step, cfg)
            loss = model(input_ids=x, attention_mask=(y != -100).long(), labels=y).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        model.eval()
        train_s = time.perf_counter() - start
        quality = {
            "greedy": generation_quality(model, tok, world, n=32, seed=cfg.seed, do_sample=False),
            "sampled": generation_quality(model, tok, world, n=32, seed=cfg.seed, do_sample=True),
        }
    tail = losses[-10:]
    info = {
        "config": asdict(cfg),
        "hash": config_hash(cfg),
        "n_params": sum(p.numel() for p in model.parameters()),
        "tokens_per_step": cfg.batch_size * cfg.block_size,
        "initial_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "losses": [round(v, 4) for v in losses],
        "train_seconds": round(train_s, 2),
        "build_seconds": round(time.perf_counter() - start, 2),
        "quality": quality,
    }
    return model, tok, info


@torch.no_grad()
def generate_responses(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[Prompt],
    max_new_tokens: int = 48,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
) -> tuple[list[str], list[bool]]:
    """Responses to chat prompts, and whether each ended with EOS within `max_new_tokens`."""
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    torch.manual_seed(seed)
    kwargs = {"do_sample": False}
    if do_sample:
        kwargs = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )
    new = out[:, enc["input_ids"].shape[1] :]
    ended = [(row == tokenizer.eos_token_id).any().item() for row in new]
    return tokenizer.batch_decode(new, skip_special_tokens=True), ended


def generation_quality(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    world: World,
    n: int = 32,
    seed: int = 0,
    do_sample: bool = False,
) -> dict[str, float]:
    """How well a model speaks the language on `n` fresh prompts.

    `eos_rate`: generations that end with EOS; `wellformed_rate`: those that also parse as a
    response of the prompt's kind; `topic_rate`: those that mention the object, category or
    action asked about (copying from the prompt is the hardest skill for a tiny model);
    `mean_gold`: the mean gold reward (a base model is not expected to be good, only fluent).
    """
    prompts = [p.prompt for p in prompt_data(world, n, seed=10_000 + seed)]
    responses, ended = generate_responses(model, tokenizer, prompts, do_sample=do_sample, seed=seed)
    wellformed = [e and is_wellformed(p, r) for p, r, e in zip(prompts, responses, ended)]
    on_topic = [parse_prompt(p).topic in canonical_words(r) for p, r in zip(prompts, responses)]
    return {
        "eos_rate": sum(ended) / n,
        "wellformed_rate": sum(wellformed) / n,
        "topic_rate": sum(on_topic) / n,
        "mean_gold": sum(gold_rewards(prompts, responses, world=world)) / n,
    }
