"""Supervised fine-tuning: the NLL of the response tokens (prompt tokens masked), every token weighing the same."""

from __future__ import annotations

from alignscope.data.records import PairExample, SFTExample
from alignscope.errors import DataError
from alignscope.losses.sft import sft_loss
from alignscope.training.items import Item
from alignscope.training.methods.base import Context, Method, score


class SFT(Method):
    name = "sft"

    def responses(self, example, i: int) -> list[str]:
        """A completion, or a pair's chosen response."""
        if isinstance(example, SFTExample):
            return [example.completion]
        if isinstance(example, PairExample):
            return [example.chosen]
        raise DataError(f"example {i} is {type(example).__name__}; SFT needs prompt/completion, messages or pairwise data")

    def loss(self, ctx: Context, items: list[Item], idx: list[int]):
        out = score(ctx, items)
        loss = sft_loss(out.logps, out.n_tokens, reduction="token")
        return loss, {"loss": loss.detach(), "logps/chosen": out.logps.detach().mean()}
