"""Batched generation on the tiny model: shapes, left padding, EOS handling, determinism, log-probabilities."""

from __future__ import annotations

import sys

import pytest
import torch

from alignscope.errors import ConfigError, ModelError
from alignscope.rollout import GenerationConfig, VLLMGenerator, generate

CHAT = [[{"role": "user", "content": "Hi"}], [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]]
MAX_NEW = 10


@pytest.fixture()
def eos_model(tiny_model, bpe_tokenizer):
    """The tiny model with +4 on the EOS logit (p(EOS) ≈ 0.12 per token), so some samples stop early.

    A hook on the unembedding changes the model itself, so generation and a plain forward pass
    see the same distribution.
    """
    eos = bpe_tokenizer.eos_token_id

    def bump(module, inputs, output):
        output = output.clone()
        output[..., eos] += 4.0
        return output

    handle = tiny_model.lm_head.register_forward_hook(bump)
    yield tiny_model
    handle.remove()


def recompute(model, prompt_ids, response_ids, temperature=1.0):
    """Per-token log-probabilities of the response by one plain, unpadded forward pass."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response_ids)[:, None]).squeeze(-1)


def test_generate_rollout_structure_and_logprobs(eos_model, bpe_tokenizer):
    tok, eos = bpe_tokenizer, bpe_tokenizer.eos_token_id
    seen = {}
    original = eos_model.generate

    def spy(*args, **kw):
        seen.update(kw)
        return original(*args, **kw)

    eos_model.generate = spy
    side = tok.padding_side
    ro = generate(eos_model, tok, CHAT, GenerationConfig(max_new_tokens=MAX_NEW, n=3, seed=0))
    del eos_model.generate

    assert len(ro) == 6 and ro.prompt_index == [0, 0, 0, 1, 1, 1]
    # prompts rendered with the chat template and the generation prompt
    for j, i in enumerate(ro.prompt_index):
        text = tok.apply_chat_template(CHAT[i], tokenize=False, add_generation_prompt=True)
        assert ro.prompt_ids[j] == tok(text, add_special_tokens=False)["input_ids"]
    # left padding: the shorter prompt's rows start with padding and every row ends with real tokens
    attn = seen["attention_mask"]
    short = len(ro.prompt_ids[0])
    assert attn.shape[1] == len(ro.prompt_ids[3]) > short
    assert (attn[:3, : attn.shape[1] - short] == 0).all() and (attn[:, -1] == 1).all()
    assert seen["use_cache"] is True and tok.padding_side == side
    assert not seen.get("output_scores")  # log-probs are kept one step at a time, not [steps, batch, vocab]
    # each response ends at its first EOS (kept) or has exactly max_new_tokens tokens without EOS
    for r, t, lp in zip(ro.response_ids, ro.texts, ro.logprobs):
        assert eos not in r[:-1]
        assert r[-1] == eos or len(r) == MAX_NEW
        assert lp.shape == (len(r),) and lp.dtype == torch.float32 and (lp <= 0).all()
        assert t == tok.decode(r[:-1] if r[-1] == eos else r, skip_special_tokens=True)
    assert any(r[-1] == eos for r in ro.response_ids) and any(r[-1] != eos for r in ro.response_ids)
    assert ro.finished == [r[-1] == eos for r in ro.response_ids]
    # the returned log-probabilities are those of a plain forward pass (temperature 1, no top-k/top-p)
    for p, r, lp in zip(ro.prompt_ids, ro.response_ids, ro.logprobs):
        assert torch.allclose(lp, recompute(eos_model, p, r), atol=1e-4)


def test_generate_is_deterministic_given_a_seed(tiny_model, bpe_tokenizer):
    cfg = GenerationConfig(max_new_tokens=6, n=2, seed=3)
    state = torch.get_rng_state()
    a = generate(tiny_model, bpe_tokenizer, CHAT, cfg)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is left alone
    b = generate(tiny_model, bpe_tokenizer, CHAT, cfg)
    c = generate(tiny_model, bpe_tokenizer, CHAT, GenerationConfig(max_new_tokens=6, n=2, seed=4))
    assert a.response_ids == b.response_ids and a.texts == b.texts
    assert all(torch.equal(x, y) for x, y in zip(a.logprobs, b.logprobs))
    assert a.response_ids != c.response_ids


@pytest.mark.parametrize("eos_bump", [0.0, 30.0])  # 30: every sample stops after one token, the bar jumps to the end
def test_generate_progress_counts_token_steps_and_changes_nothing(tiny_model, bpe_tokenizer, capsys, eos_bump):
    def bump(module, inputs, output):
        output = output.clone()
        output[..., bpe_tokenizer.eos_token_id] += eos_bump
        return output

    handle = tiny_model.lm_head.register_forward_hook(bump)
    cfg = GenerationConfig(max_new_tokens=MAX_NEW, n=3, seed=1)
    plain = generate(tiny_model, bpe_tokenizer, CHAT, cfg, batch_size=4)
    shown = generate(tiny_model, bpe_tokenizer, CHAT, cfg, batch_size=4, progress="sampling")
    handle.remove()
    assert shown.response_ids == plain.response_ids
    assert (max(map(len, shown.response_ids)) == 1) == (eos_bump > 0)
    err = capsys.readouterr().err
    assert "sampling" in err and f"{6 * MAX_NEW}/{6 * MAX_NEW}" in err  # two batches (4 + 2 samples), never past the total


def test_generate_temperature_logprobs_and_greedy(tiny_model, bpe_tokenizer):
    ro = generate(tiny_model, bpe_tokenizer, ["The quick brown"], GenerationConfig(max_new_tokens=5, n=2, temperature=0.7, seed=1))
    for p, r, lp in zip(ro.prompt_ids, ro.response_ids, ro.logprobs):
        assert torch.allclose(lp, recompute(tiny_model, p, r, temperature=0.7), atol=1e-4)  # sampling distribution
    greedy = generate(tiny_model, bpe_tokenizer, ["The quick brown"], GenerationConfig(max_new_tokens=5, n=2, do_sample=False))
    assert greedy.response_ids[0] == greedy.response_ids[1]
    lp = recompute(tiny_model, greedy.prompt_ids[0], greedy.response_ids[0])
    assert torch.allclose(greedy.logprobs[0], lp, atol=1e-4)


@pytest.mark.parametrize("warper", [("top_k", 1), ("min_p", 1.0), ("typical_p", 1e-6), ("epsilon_cutoff", 0.9),
                                    ("temperature", 1e-4)])
def test_generate_top_p_logprobs_ignore_the_models_own_warpers(tiny_model, bpe_tokenizer, warper):
    """Temperature 1.3 and nucleus 0.6, by hand. The model's generation config asks for a warper that would make
    sampling all but greedy; it must not apply (the recorded log-probs would no longer be the sampling distribution)."""
    setattr(tiny_model.generation_config, *warper)
    ro = generate(tiny_model, bpe_tokenizer, CHAT, GenerationConfig(max_new_tokens=6, n=4, temperature=1.3, top_p=0.6, seed=2))
    for p, r, lp in zip(ro.prompt_ids, ro.response_ids, ro.logprobs):
        with torch.no_grad():
            probs = torch.softmax(tiny_model(torch.tensor([p + r])).logits[0, len(p) - 1 : -1].float() / 1.3, -1)
        for t, token in enumerate(r):
            sorted_p, order = probs[t].sort(descending=True)
            nucleus = (sorted_p.cumsum(0) - sorted_p) < 0.6  # the most likely tokens until 0.6 of the mass is covered
            assert token in order[nucleus].tolist()
            assert torch.isclose(lp[t], torch.log(probs[t, token] / sorted_p[nucleus].sum()), atol=1e-4)
    for i in range(len(CHAT)):
        assert len({tuple(r) for r, j in zip(ro.response_ids, ro.prompt_index) if j == i}) > 1, warper


def test_generation_config_validation():
    with pytest.raises(ConfigError, match="positive"):
        GenerationConfig(n=0)
    with pytest.raises(ConfigError, match="temperature"):
        GenerationConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="top_p"):
        GenerationConfig(top_p=0.0)


def test_vllm_generator_without_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails whether or not vLLM is installed
    with pytest.raises(ModelError, match="vLLM is not installed"):
        VLLMGenerator("some/model")
