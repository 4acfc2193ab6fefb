"""Batch order: seeded and resumable, and with group_by_length each batch holds similar lengths."""

from __future__ import annotations

import random

from alignscope.training.loop import LENGTH_WINDOW_BATCHES, step_batches

from . import synthetic
from .test_objectives import falls, run


def epoch(n, steps, gb, lengths=None, seed=0, epoch_index=0, shuffle=True):
    return [step_batches(n, epoch_index * steps + k, steps, gb, seed, shuffle, lengths) for k in range(steps)]


def test_plain_order_is_a_seeded_permutation():
    batches = epoch(37, 4, 8)
    flat = [i for b in batches for i in b]
    assert len(flat) == 32 and len(set(flat)) == 32
    assert batches == epoch(37, 4, 8)
    assert batches != epoch(37, 4, 8, epoch_index=1)


def test_group_by_length_batches_similar_lengths_in_random_order():
    rng = random.Random(0)
    n, gb = 1000, 8
    lengths = tuple(rng.randint(10, 500) for _ in range(n))
    steps = n // gb
    batches = epoch(n, steps, gb, lengths)
    flat = [i for b in batches for i in b]
    assert len(flat) == steps * gb and len(set(flat)) == len(flat)  # every kept item once, none twice
    assert all(len(b) == gb for b in batches)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / steps
    plain = epoch(n, steps, gb)
    plain_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain) / steps
    assert spread < plain_spread / 10
    longest_first = [max(lengths[i] for i in b) for b in batches]
    assert longest_first != sorted(longest_first, reverse=True)  # batch order is shuffled, not sorted
    assert batches == epoch(n, steps, gb, lengths)  # deterministic: a resumed run sees the same batches
    assert batches != epoch(n, steps, gb, lengths, epoch_index=1)
    assert LENGTH_WINDOW_BATCHES * gb < n  # the test covers more than one window


def test_training_with_group_by_length(tmp_path):
    _, rows = run(tmp_path, "dpo", synthetic.pairs(), group_by_length=True)
    assert falls(rows)
