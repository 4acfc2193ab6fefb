"""Records -> token items for each training method, tokenized once with the exact boundary."""

from __future__ import annotations

from dataclasses import dataclass, field

from alignscope.data.records import (
    PairExample,
    RankedExample,
    SFTExample,
    UnpairedExample,
)
from alignscope.data.tokenize import TokenizeStats, encode_group
from alignscope.errors import DataError


@dataclass
class Item:
    """One training example as tokens: a prompt and one or more responses (best first for pairs/rankings)."""

    prompt_ids: list[int]
    responses: list[list[int]]
    scores: list[float] = field(default_factory=list)  # ranking scores, or [margin] for pairs
    label: bool | None = None  # KTO


def to_items(method: str, examples: list, tokenizer, max_length: int, max_prompt_length: int | None) -> tuple[list[Item], TokenizeStats]:
    """Tokenize examples for `method`; pairwise data also feeds SFT (on the chosen response) and ranking (n=2)."""
    stats = TokenizeStats()
    items = []
    for i, ex in enumerate(examples):
        if method == "sft":
            if isinstance(ex, SFTExample):
                responses = [ex.completion]
            elif isinstance(ex, PairExample):
                responses = [ex.chosen]
            else:
                raise DataError(f"example {i} is {type(ex).__name__}; SFT needs prompt/completion, messages or pairwise data")
        elif method in ("dpo", "rm"):
            if not isinstance(ex, PairExample):
                raise DataError(f"example {i} is {type(ex).__name__}; '{method}' needs pairwise prompt/chosen/rejected data")
            responses = [ex.chosen, ex.rejected]
        elif method == "kto":
            if isinstance(ex, UnpairedExample):
                responses = [ex.completion]
            else:
                raise DataError(f"example {i} is {type(ex).__name__}; KTO needs unpaired prompt/completion/label data")
        elif method == "rank":
            if isinstance(ex, RankedExample):
                responses = list(ex.completions)
            elif isinstance(ex, PairExample):
                responses = [ex.chosen, ex.rejected]
            else:
                raise DataError(f"example {i} is {type(ex).__name__}; ranking needs prompt/completions/scores data")
        else:
            raise ValueError(method)
        encs = encode_group(tokenizer, ex.prompt, responses, max_length=max_length, max_prompt_length=max_prompt_length)
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
