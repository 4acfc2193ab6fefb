"""The normalised records every loader produces and every trainer consumes.

A prompt is either plain text (`str`: prompt and response are concatenated as they are) or a
chat (`list` of `{"role", "content"}` messages: rendered with the tokenizer's chat template).
Responses are always the text of one assistant turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

Message = dict[str, str]
Prompt = Union[str, list[Message]]

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class PairExample:
    """Pairwise preference: `chosen` is preferred to `rejected` for `prompt`."""

    prompt: Prompt
    chosen: str
    rejected: str
    margin: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RankedExample:
    """A ranking of n >= 2 completions, stored best first; `scores` align with `completions`."""

    prompt: Prompt
    completions: list[str]
    scores: list[float]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class UnpairedExample:
    """One completion labelled desirable (True) or undesirable (False): KTO/BCO data."""

    prompt: Prompt
    completion: str
    label: bool
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class SFTExample:
    """A prompt and the desired completion."""

    prompt: Prompt
    completion: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptExample:
    """A prompt alone: for rollouts, best-of-n and prompt selection."""

    prompt: Prompt
    meta: dict[str, Any] = field(default_factory=dict)


Example = Union[PairExample, RankedExample, UnpairedExample, SFTExample, PromptExample]

FORMATS = ("pairwise", "ranked", "unpaired", "sft", "prompt")
EXAMPLE_TYPES = {
    "pairwise": PairExample,
    "ranked": RankedExample,
    "unpaired": UnpairedExample,
    "sft": SFTExample,
    "prompt": PromptExample,
}


def prompt_text(prompt: Prompt) -> str:
    """A flat text view of a prompt, for hashing, display and edit distances."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def pairs_from_ranked(ex: RankedExample) -> list[PairExample]:
    """Every ordered pair (i better than j) of a ranking, with the score gap as margin."""
    out = []
    for i in range(len(ex.completions)):
        for j in range(i + 1, len(ex.completions)):
            out.append(
                PairExample(ex.prompt, ex.completions[i], ex.completions[j], ex.scores[i] - ex.scores[j], dict(ex.meta))
            )
    return out
