"""What every offline method provides to the loop, and the defaults most of them share.

A method owns the parts of training that differ between SFT, reward modelling, DPO, KTO and
ranking: which records it takes and how they become token items, the reference sequences it
needs, how it wraps the model, its loss and metrics, which held-out pairs the monitor scores, and
what it saves. `training.loop.train` calls these in order and branches on nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch

from alignscope.data.tokenize import TokenizeStats, encode_group
from alignscope.errors import DataError
from alignscope.models.scoring import Scorer, score_batch
from alignscope.training.config import TrainConfig
from alignscope.training.items import Item

Seq = tuple[list[int], list[int]]  # (prompt ids, response ids)


@dataclass
class Context:
    """What a loss needs besides the batch: the wrapped model, the config, and cached reference log-probs."""

    model: torch.nn.Module
    cfg: TrainConfig
    pad_id: int
    ref_logps: dict[int, list[float]] | None = None  # item index -> log-probs of its `reference_sequences`


class Method(ABC):
    """The defaults: items from `responses`, no reference, the policy wrapped in a `Scorer`, no monitor."""

    name = ""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    # --- data
    @abstractmethod
    def responses(self, example, i: int) -> list[str]:
        """The responses of one record, best first; a DataError for a record the method cannot use."""

    def items(self, examples: list, tokenizer) -> tuple[list[Item], TokenizeStats]:
        """Records -> token items (tokenized once, with the exact prompt/response boundary)."""
        return encode_items(examples, self.responses, tokenizer, self.cfg)

    def eval_items(self, examples: list, tokenizer) -> list[Item]:
        """Held-out pairs for evaluation and the displacement monitor; none by default."""
        return []

    @property
    def shuffle(self) -> bool:
        """Whether each epoch visits the items in a random order (a curriculum keeps its own)."""
        return True

    # --- reference
    @property
    def needs_reference(self) -> bool:
        return False

    def reference_sequences(self, items: list[Item]) -> list[list[Seq]]:
        """Per item, the sequences whose reference log-probs the loss reads (in `Context.ref_logps`)."""
        return [[(it.prompt_ids, r) for r in it.responses] for it in items]

    # --- model
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module that trains (and that checkpoints hold): the policy behind the scoring engine."""
        return Scorer(model)

    # --- loss
    @abstractmethod
    def loss(self, ctx: Context, items: list[Item], idx: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A micro-batch of items (with their indices into the training items) -> (loss, metrics)."""

    # --- output
    def save(self, trained: torch.nn.Module, folder: Path, tensors: dict[str, torch.Tensor] | None = None) -> None:
        """The final model, in a form every alignscope command loads: the policy as a causal LM. `tensors`: the
        trained module's whole state where the module holds shards (FSDP)."""
        state = None if tensors is None else {k.removeprefix("lm."): v for k, v in tensors.items() if k.startswith("lm.")}
        trained.lm.save_pretrained(folder, state_dict=state)


def encode_items(examples: list, responses_of, tokenizer, cfg: TrainConfig) -> tuple[list[Item], TokenizeStats]:
    """Tokenize each record's prompt with the responses `responses_of(example, i)` picks.

    An empty prompt becomes one BOS (or EOS) token, so every response has a token to condition on.
    Ranking scores (or a pair's margin) and KTO labels travel with the item.
    """
    from alignscope.data.records import PairExample, RankedExample, UnpairedExample

    stats = TokenizeStats()
    items = []
    for i, ex in enumerate(examples):
        encs = encode_group(tokenizer, ex.prompt, responses_of(ex, i), max_length=cfg.max_length,
                            max_prompt_length=cfg.max_prompt_length)
        for e in encs:
            stats.add(e)
        if not encs[0].prompt_ids:
            bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            for e in encs:
                e.prompt_ids = [bos]
        scores: list[float] = []
        if isinstance(ex, RankedExample):
            scores = list(ex.scores)
        elif isinstance(ex, PairExample):
            scores = [ex.margin if ex.margin is not None else 0.0]
        items.append(
            Item(encs[0].prompt_ids, [e.response_ids for e in encs], scores, ex.label if isinstance(ex, UnpairedExample) else None)
        )
    return items, stats


def pair_texts(ex, i: int, method: str) -> list[str]:
    """(chosen, rejected) of a pairwise record, for methods that take nothing else."""
    from alignscope.data.records import PairExample

    if not isinstance(ex, PairExample):
        raise DataError(f"example {i} is {type(ex).__name__}; '{method}' needs pairwise prompt/chosen/rejected data")
    return [ex.chosen, ex.rejected]


def held_out_pairs(method: Method, examples: list, tokenizer) -> list[Item]:
    """The monitor's held-out items: each record's responses, for records with at least two."""
    return [it for it in encode_items(examples, method.responses, tokenizer, method.cfg)[0] if len(it.responses) >= 2]


def score(ctx: Context, items: list[Item], extra: list[Seq] = ()):
    """ONE call to the scoring engine for all responses of the batch (plus `extra` sequences, after them)."""
    prompts = [it.prompt_ids for it in items for _ in it.responses] + [p for p, _ in extra]
    responses = [r for it in items for r in it.responses] + [r for _, r in extra]
    return score_batch(ctx.model, prompts, responses, pad_id=ctx.pad_id, share_prompts=ctx.cfg.share_prompts,
                       padding_free=ctx.cfg.padding_free)


def reference(ctx: Context, idx: list[int], j: int, device) -> torch.Tensor:
    """[B] cached reference log-probs of each item's j-th reference sequence."""
    return torch.tensor([ctx.ref_logps[i][j] for i in idx], device=device)
