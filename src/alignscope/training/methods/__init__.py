"""One object per offline method (sft, rm, dpo, kto, rank): what it reads, needs, trains and saves.

`method_for(cfg)` is the only place that looks at `cfg.method`; `training.loop.train` drives any
method through the `Method` interface (`methods.base`).
"""

from __future__ import annotations

from alignscope.training.config import TrainConfig
from alignscope.training.methods.base import Context, Method
from alignscope.training.methods.dpo import DPO
from alignscope.training.methods.kto import KTO
from alignscope.training.methods.rank import Rank
from alignscope.training.methods.rm import RM
from alignscope.training.methods.sft import SFT

METHODS: dict[str, type[Method]] = {m.name: m for m in (SFT, RM, DPO, KTO, Rank)}


def method_for(cfg: TrainConfig) -> Method:
    return METHODS[cfg.method](cfg)


__all__ = ["DPO", "KTO", "METHODS", "RM", "SFT", "Context", "Method", "Rank", "method_for"]
