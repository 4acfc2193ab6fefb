"""Small synthetic data sets for training tests: learnable in a few steps by a tiny model."""

from __future__ import annotations

import json
import random
from pathlib import Path

from alignscope.data.records import (
    PairExample,
    RankedExample,
    SFTExample,
    UnpairedExample,
)

GOOD = ["yes it is good", "sure that works well", "indeed very good", "yes good answer"]
BAD = ["no it is bad", "never that fails", "nope very bad", "no bad answer"]
TOPICS = ["the cat", "the sky", "a tree", "the sea", "my car", "the sun", "a book", "the road"]


def prompts(n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    return [[{"role": "user", "content": f"is {rng.choice(TOPICS)} fine? ({i})"}] for i in range(n)]


def pairs(n: int = 48, seed: int = 0) -> list[PairExample]:
    rng = random.Random(seed)
    return [PairExample(p, rng.choice(GOOD), rng.choice(BAD)) for p in prompts(n, seed)]


def sft(n: int = 48, seed: int = 0) -> list[SFTExample]:
    rng = random.Random(seed)
    return [SFTExample(p, rng.choice(GOOD)) for p in prompts(n, seed)]


def unpaired(n: int = 48, seed: int = 0) -> list[UnpairedExample]:
    rng = random.Random(seed)
    return [UnpairedExample(p, rng.choice(GOOD if i % 2 else BAD), bool(i % 2)) for i, p in enumerate(prompts(n, seed))]


def ranked(n: int = 32, seed: int = 0) -> list[RankedExample]:
    rng = random.Random(seed)
    return [RankedExample(p, [rng.choice(GOOD), "maybe it is ok", rng.choice(BAD)], [2.0, 1.0, 0.0]) for p in prompts(n, seed)]


def write_jsonl(path: Path, examples: list[PairExample]) -> Path:
    with open(path, "w") as f:
        for ex in examples:
            f.write(json.dumps({"prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected}) + "\n")
    return path


def corpus() -> list[str]:
    return GOOD + BAD + TOPICS + ["maybe it is ok", "is fine?"] + [str(i) for i in range(100)]
