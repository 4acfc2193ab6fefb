"""Generators: determinism, Bradley-Terry labels, paraphrases, refusal pairs, the corpus."""

from __future__ import annotations

import difflib
import math
import random

import pytest

from alignscope.world.generate import (
    candidate_responses,
    corpus,
    pairwise_data,
    paraphrase,
    paraphrased_pairs,
    prompt_data,
    ranked_data,
    refusal_pairs,
    render_chat,
    sft_data,
    single_token_pairs,
    unpaired_data,
)
from alignscope.world.gold import gold_reward, is_refusal
from alignscope.world.language import (
    World,
    canonical_words,
    default_world,
    is_wellformed,
    parse_prompt,
    words,
)

GENERATORS = {
    "prompts": lambda w, s: prompt_data(w, 30, s),
    "sft": lambda w, s: sft_data(w, 30, s),
    "pairs": lambda w, s: pairwise_data(w, 30, s),
    "ranked": lambda w, s: ranked_data(w, 10, 4, s, noise=1.0),
    "unpaired": lambda w, s: unpaired_data(w, 30, s, noise=1.0),
    "refusal": lambda w, s: refusal_pairs(w, 10, s, similar=True),
    "single": lambda w, s: single_token_pairs(w, 10, s),
    "corpus": lambda w, s: corpus(w, 30, s),
}


@pytest.fixture(scope="module")
def world() -> World:
    return default_world()


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_are_deterministic_per_seed(world, name):
    make = GENERATORS[name]
    assert make(world, 0) == make(world, 0)
    assert make(world, 0) != make(world, 1)


def test_candidates_spread_and_are_wellformed(world):
    rng = random.Random(0)
    for p in prompt_data(world, 40, seed=3):
        cands = candidate_responses(world, p.prompt, 6, rng)
        assert len(set(cands)) == 6
        assert all(is_wellformed(p.prompt, c) for c in cands)
        rewards = [gold_reward(p.prompt, c) for c in cands]
        assert max(rewards) > min(rewards)


def test_sft_responses_are_good(world):
    sft = sft_data(world, 100, seed=0)
    rng = random.Random(0)
    sft_mean = sum(gold_reward(e.prompt, e.completion) for e in sft) / len(sft)
    cand = [gold_reward(e.prompt, candidate_responses(world, e.prompt, 1, rng)[0]) for e in sft]
    assert sft_mean > sum(cand) / len(cand) + 0.5
    assert all(is_refusal(e.completion) for e in sft if e.meta["unsafe"])


def test_noise_zero_labels_follow_gold(world):
    for ex in pairwise_data(world, 200, seed=0, noise=0.0):
        assert gold_reward(ex.prompt, ex.chosen) > gold_reward(ex.prompt, ex.rejected)
        assert ex.margin > 0 and ex.meta["p_chosen"] == 1.0


def test_noise_one_agreement_matches_bradley_terry(world):
    pairs = pairwise_data(world, 1500, seed=0, noise=1.0)
    agree = sum(ex.meta["agrees_with_gold"] for ex in pairs) / len(pairs)
    expected = sum(1 / (1 + math.exp(-abs(ex.margin))) for ex in pairs) / len(pairs)
    assert 0.6 < expected < 0.95
    assert abs(agree - expected) < 3.5 * math.sqrt(expected * (1 - expected) / len(pairs))
    for ex in pairs[:50]:
        assert ex.margin == pytest.approx(gold_reward(ex.prompt, ex.chosen) - gold_reward(ex.prompt, ex.rejected))
    noisier = pairwise_data(world, 1500, seed=0, noise=5.0)
    assert sum(ex.meta["agrees_with_gold"] for ex in noisier) / len(noisier) < agree


def test_ranked_and_unpaired_at_noise_zero(world):
    for ex in ranked_data(world, 30, k=4, seed=0):
        assert ex.scores == sorted(ex.scores, reverse=True) and len(set(ex.completions)) == 4
    data = unpaired_data(world, 300, seed=0, threshold=1.0)
    assert all(ex.label == (ex.meta["gold"] > 1.0) for ex in data)
    assert 0.2 < sum(ex.label for ex in data) / len(data) < 0.8


def test_paraphrase_keeps_gold_and_changes_tokens(world):
    rng = random.Random(0)
    for p in prompt_data(world, 300, seed=1):
        for c in candidate_responses(world, p.prompt, 2, rng):
            q = paraphrase(c, rng)
            assert q != c and words(q) != words(c)
            assert gold_reward(p.prompt, q) == gold_reward(p.prompt, c)
            assert sorted(canonical_words(q)) == sorted(canonical_words(c))
    assert paraphrase("no", rng) == "nope" and paraphrase("never", rng) == "nah"


def test_paraphrased_pairs_keep_labels(world):
    pairs = pairwise_data(world, 50, seed=0, noise=0.0)
    shifted = paraphrased_pairs(pairs, seed=0)
    assert shifted == paraphrased_pairs(pairs, seed=0)
    for a, b in zip(pairs, shifted):
        assert (a.prompt, a.margin) == (b.prompt, b.margin) and b.meta["paraphrased"]
        assert a.chosen != b.chosen and a.rejected != b.rejected
        assert gold_reward(b.prompt, b.chosen) > gold_reward(b.prompt, b.rejected)


@pytest.mark.parametrize("similar", [False, True])
def test_refusal_pairs(world, similar):
    pairs = refusal_pairs(world, 40, seed=0, similar=similar)
    sims = []
    for ex in pairs:
        assert parse_prompt(ex.prompt).unsafe and is_refusal(ex.chosen)
        assert gold_reward(ex.prompt, ex.chosen) > gold_reward(ex.prompt, ex.rejected)
        sims.append(difflib.SequenceMatcher(None, words(ex.chosen), words(ex.rejected)).ratio())
    mean_sim = sum(sims) / len(sims)
    if similar:
        assert mean_sim > 0.8 and {ex.meta["change"] for ex in pairs} == {"rude", "leaked_step"}
    else:
        assert mean_sim < 0.5 and not any(is_refusal(ex.rejected) for ex in pairs)


def test_single_token_pairs_are_same_meaning_words(world):
    for ex in single_token_pairs(world, 40, seed=0):
        assert len(words(ex.chosen)) == len(words(ex.rejected)) == 1
        assert gold_reward(ex.prompt, ex.chosen) > gold_reward(ex.prompt, ex.rejected) > 0


def test_corpus_is_chatml_the_template_renders(world, bpe_tokenizer):
    texts = corpus(world, 20, seed=0)
    ex = sft_data(world, 1, seed=0)[0]
    turns = ex.prompt + [{"role": "assistant", "content": ex.completion}]
    rendered = bpe_tokenizer.apply_chat_template(turns, tokenize=False)
    assert render_chat(ex.prompt, ex.completion) == rendered
    for t in texts:
        assert t.startswith("<|im_start|>user\n") and t.endswith("<|im_end|>\n")
        assert t.count("<|im_start|>assistant\n") == 1
