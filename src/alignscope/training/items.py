"""The token item every offline method trains on (each method builds its own: `training.methods`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Item:
    """One training example as tokens: a prompt and one or more responses (best first for pairs/rankings)."""

    prompt_ids: list[int]
    responses: list[list[int]]
    scores: list[float] = field(default_factory=list)  # ranking scores, or [margin] for pairs
    label: bool | None = None  # KTO
