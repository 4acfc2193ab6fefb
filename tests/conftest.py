"""Shared fixtures: a tiny locally trained tokenizer and a 2-layer Llama with random weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One thread: the test models are tiny, and two threads on a 2-core machine with any other load
# spin-wait each other into 10-30x slowdowns (measured: an RLOO test took 301 s with 2 threads, 9 s with 1).
torch.set_num_threads(int(os.environ.get("ALIGNSCOPE_TEST_THREADS", "1")))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Please answer the question politely and briefly.",
    "Yes, I can help with that. No, I will not do that.",
    "What is the capital of France? Paris is the capital of France.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9, and symbols: !?.,;:'\"()[]{}<>-_+=*/\\|@#$%^&~`",
] * 20


@pytest.fixture(scope="session")
def bpe_tokenizer():
    from alignscope.models.tiny import train_bpe_tokenizer

    return train_bpe_tokenizer(CORPUS, vocab_size=400)


@pytest.fixture(scope="session")
def char_tok():
    from alignscope.models.tiny import char_tokenizer

    return char_tokenizer()


@pytest.fixture()
def tiny_model(bpe_tokenizer):
    from alignscope.models.tiny import tiny_llama

    model = tiny_llama(bpe_tokenizer, hidden_size=32, num_layers=2, num_heads=4, seed=0)
    model.eval()
    return model


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def lab_tiny():
    """The lab's tiny pretrained model (built once into the user cache, then loaded)."""
    from alignscope.world.pretrain import pretrained_lab_model

    return pretrained_lab_model(size="tiny", seed=0, progress=False)
