"""Batched generation on the tiny model: one prefill per prompt, rows leaving as they stop, left padding, EOS handling,
determinism, log-probabilities against the scoring engine, greedy tokens against Hugging Face, the fallback."""

from __future__ import annotations

import sys

import pytest
import torch

from alignscope.errors import ConfigError, ModelError
from alignscope.models.scoring import score_batch, score_sequences
from alignscope.rollout import GenerationConfig, VLLMGenerator, generate
from alignscope.rollout import generation
from alignscope.rollout.generation import sampling_logprobs, shared_prefill_refusal, trim_at_stop

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


def rescore(model, tok, ro, temperature, top_p):
    """Each sample's token log-probs re-scored by the scoring engine: its own log-probs at temperature 1 and
    top-p 1, else its hidden states through the unembedding and the same sampling distribution."""
    with torch.no_grad():
        if temperature == 1.0 and top_p == 1.0:
            return score_sequences(model, ro.prompt_ids, ro.response_ids, pad_id=tok.pad_token_id, return_token_logps=True).token_logps
        out = score_batch(model, ro.prompt_ids, ro.response_ids, pad_id=tok.pad_token_id, return_token_hidden=True, compute_logps=False)
        return [sampling_logprobs(model.lm_head(h), temperature, top_p).gather(-1, torch.tensor(r)[:, None])[:, 0]
                for h, r in zip(out.token_hidden, ro.response_ids)]


class Calls:
    """Records the batch rows, input width, attention mask and position ids of every forward pass of a model."""

    def __init__(self, model):
        self.seen: list[dict] = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.seen.append({k: kwargs[k].clone() for k in ("input_ids", "attention_mask", "position_ids")})

    @property
    def prefills(self) -> list[dict]:
        """The calls with an empty cache: the mask covers only their own input."""
        return [c for c in self.seen if c["attention_mask"].shape[1] == c["input_ids"].shape[1]]


def test_generate_rollout_structure_and_logprobs(eos_model, bpe_tokenizer):
    tok, eos = bpe_tokenizer, bpe_tokenizer.eos_token_id
    side = tok.padding_side
    calls = Calls(eos_model)
    ro = generate(eos_model, tok, CHAT, GenerationConfig(max_new_tokens=MAX_NEW, n=3, seed=0))
    calls.handle.remove()

    assert len(ro) == 6 and ro.prompt_index == [0, 0, 0, 1, 1, 1]
    # prompts rendered with the chat template and the generation prompt
    for j, i in enumerate(ro.prompt_index):
        text = tok.apply_chat_template(CHAT[i], tokenize=False, add_generation_prompt=True)
        assert ro.prompt_ids[j] == tok(text, add_special_tokens=False)["input_ids"]
    # the prefill: each distinct prompt once, left-padded, positions counted from its first real token
    prefill = calls.seen[0]
    assert calls.prefills == [prefill]
    short, long = len(ro.prompt_ids[0]), len(ro.prompt_ids[3])
    assert prefill["input_ids"].shape == (2, long) > (2, short)
    attn = prefill["attention_mask"]
    assert (attn[0, : long - short] == 0).all() and (attn[:, -1] == 1).all() and attn.sum() == short + long
    assert prefill["position_ids"][0, -short:].tolist() == list(range(short))
    assert prefill["position_ids"][1].tolist() == list(range(long)) and tok.padding_side == side
    # each response ends at its first EOS (kept) or has exactly max_new_tokens tokens without EOS
    for r, t, lp in zip(ro.response_ids, ro.texts, ro.logprobs):
        assert eos not in r[:-1]
        assert r[-1] == eos or len(r) == MAX_NEW
        assert lp.shape == (len(r),) and lp.dtype == torch.float32 and (lp <= 0).all()
        assert t == tok.decode(r[:-1] if r[-1] == eos else r, skip_special_tokens=True)
    assert any(r[-1] == eos for r in ro.response_ids) and any(r[-1] != eos for r in ro.response_ids)
    assert ro.finished == [r[-1] == eos for r in ro.response_ids]
    # the returned log-probabilities are the scoring engine's (temperature 1, no top-k/top-p)
    for lp, ref in zip(ro.logprobs, rescore(eos_model, tok, ro, 1.0, 1.0)):
        assert torch.allclose(lp, ref, atol=1e-5)


def test_each_prompt_is_prefilled_once_and_finished_rows_leave(eos_model, bpe_tokenizer):
    """Decode step k runs exactly the samples still going (longer than k tokens), one new token each, at the
    positions that follow their own prompt; no prompt runs more than once, whatever n and the batch size."""
    prompts = [*CHAT, "The quick brown", "Yes"]
    for n, batch_size in [(4, 64), (3, 6), (5, 2)]:
        calls = Calls(eos_model)
        ro = generate(eos_model, bpe_tokenizer, prompts, GenerationConfig(max_new_tokens=MAX_NEW, n=n, seed=5), batch_size=batch_size)
        calls.handle.remove()
        assert sum(c["input_ids"].shape[0] for c in calls.prefills) == len(prompts), (n, batch_size)
        per_batch = max(1, batch_size // n)
        steps = [c for c in calls.seen if c["attention_mask"].shape[1] > c["input_ids"].shape[1] == 1]
        assert len(steps) + len(calls.prefills) == len(calls.seen)  # every other call is one token per row
        decode = iter(steps)
        for s in range(0, len(prompts), per_batch):
            lengths = [len(r) for r, i in zip(ro.response_ids, ro.prompt_index) if s <= i < s + per_batch]
            firsts = [len(p) for p, i in zip(ro.prompt_ids, ro.prompt_index) if s <= i < s + per_batch]
            for k in range(1, max(lengths)):
                c = next(decode)
                going = [j for j, m in enumerate(lengths) if m > k]
                assert c["input_ids"].shape[0] == len(going), (n, batch_size, k)
                assert c["position_ids"][:, 0].tolist() == [firsts[j] + k - 1 for j in going]
        assert next(decode, None) is None
    assert any(len(r) < MAX_NEW for r in ro.response_ids)  # some rows did leave early


@pytest.mark.parametrize("prompts", [CHAT, ["The quick brown", "Yes", "What is the capital of France? Paris"]])
def test_greedy_tokens_equal_hugging_face_greedy(tiny_model, bpe_tokenizer, prompts):
    tok = bpe_tokenizer
    ro = generate(tiny_model, tok, prompts, GenerationConfig(max_new_tokens=MAX_NEW, n=2, do_sample=False))
    for p, r in zip(ro.prompt_ids, ro.response_ids):
        hf = tiny_model.generate(torch.tensor([p]), max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
        assert r == trim_at_stop(hf[0, len(p) :].tolist(), ro.stop_ids)


def test_greedy_on_learned_positions_equals_hugging_face(bpe_tokenizer):
    """GPT-2 looks its positions up in a table: left padding must not shift them (explicit position ids)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = bpe_tokenizer
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=4,
                                       eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)).eval()
    assert shared_prefill_refusal(model) is None
    ro = generate(model, tok, CHAT, GenerationConfig(max_new_tokens=MAX_NEW, n=1, do_sample=False))
    for p, r in zip(ro.prompt_ids, ro.response_ids):
        hf = model.generate(torch.tensor([p]), max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id)
        assert r == trim_at_stop(hf[0, len(p) :].tolist(), ro.stop_ids)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (1.3, 0.6)])
def test_sampled_logprobs_equal_the_scoring_engine(eos_model, bpe_tokenizer, temperature, top_p):
    ro = generate(eos_model, bpe_tokenizer, CHAT, GenerationConfig(max_new_tokens=MAX_NEW, n=4, temperature=temperature,
                                                                  top_p=top_p, seed=7))
    for lp, ref in zip(ro.logprobs, rescore(eos_model, bpe_tokenizer, ro, temperature, top_p)):
        assert torch.isfinite(lp).all() and torch.allclose(lp, ref, atol=1e-5)


def test_draws_follow_the_sampling_distribution():
    """The sampler's draw (the CDF inverted at a uniform number) hits each token at its probability, never one outside the nucleus."""
    torch.manual_seed(0)
    logp = sampling_logprobs(torch.randn(1, 40) * 2, temperature=1.0, top_p=0.9)
    rows = 200_000
    drawn = generation._draw(logp.expand(rows, -1))
    freq = torch.bincount(drawn[:, 0], minlength=40).double() / rows
    assert (freq - logp[0].exp().double()).abs().max() < 0.005
    assert (freq[logp[0] == float("-inf")] == 0).all() and (logp[0] == float("-inf")).any()


def test_cache_layer_with_room_matches_concatenation():
    """The sampler's cache layer writes into spare room, grows when out of it, and copies and selects rows like
    transformers' DynamicLayer."""
    from transformers.cache_utils import DynamicLayer

    torch.manual_seed(0)
    room, plain = generation._layer_with_room()(room=2), DynamicLayer()
    rows = 2
    for k, width in enumerate([3, 1, 1, 2, 1]):  # the fourth update does not fit in the room left
        keys, values = torch.randn(rows, 4, width, 8), torch.randn(rows, 4, width, 8)
        got, want = room.update(keys, values), plain.update(keys, values)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), k
        if k == 1:
            for layer in (room, plain):
                layer.batch_repeat_interleave(3)
            rows = 6
        if k == 2:
            for layer in (room, plain):
                layer.batch_select_indices(torch.tensor([0, 4, 5]))
            rows = 3
    assert room.get_seq_length() == plain.get_seq_length() == 8 and room.keys.shape[0] == 3


def test_bf16_weights_give_float32_logprobs(tiny_model, bpe_tokenizer):
    model = tiny_model.to(torch.bfloat16)
    ro = generate(model, bpe_tokenizer, CHAT, GenerationConfig(max_new_tokens=MAX_NEW, n=3, seed=0))
    for lp, ref in zip(ro.logprobs, rescore(model, bpe_tokenizer, ro, 1.0, 1.0)):
        assert lp.dtype == torch.float32 and torch.allclose(lp, ref.float(), atol=0.05)


def test_a_model_whose_cache_cannot_be_shared_falls_back_to_hugging_face(eos_model, bpe_tokenizer, monkeypatch):
    """Sampled by `generate` with a warning that says why; the same contract, the same greedy tokens."""
    tok = bpe_tokenizer
    fast = generate(eos_model, tok, CHAT, GenerationConfig(max_new_tokens=MAX_NEW, n=2, do_sample=False))
    monkeypatch.setattr(generation, "_SHAREABLE_LAYERS", frozenset())
    assert "DynamicLayer" in shared_prefill_refusal(eos_model)
    seen = {}
    original = eos_model.generate

    def spy(*args, **kw):
        seen.update(kw)
        return original(*args, **kw)

    eos_model.generate = spy
    with pytest.warns(UserWarning, match="Hugging Face generate.*DynamicLayer"):
        slow = generate(eos_model, tok, CHAT, GenerationConfig(max_new_tokens=MAX_NEW, n=2, do_sample=False))
    with pytest.warns(UserWarning):
        sampled = generate(eos_model, tok, CHAT, GenerationConfig(max_new_tokens=MAX_NEW, n=3, temperature=1.3, top_p=0.6, seed=0))
    del eos_model.generate
    assert seen["attention_mask"].shape[0] == 6 and not seen.get("output_scores")
    assert slow.response_ids == fast.response_ids and slow.prompt_index == fast.prompt_index
    for lp, ref in zip(sampled.logprobs, rescore(eos_model, tok, sampled, 1.3, 0.6)):
        assert lp.dtype == torch.float32 and torch.allclose(lp, ref, atol=1e-5)
    assert any(not f for f in sampled.finished) or all(len(r) <= MAX_NEW for r in sampled.response_ids)


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
    assert "sampling" in err and f"{6 * MAX_NEW}/{6 * MAX_NEW}" in err  # two batches (one prompt's 3 samples each), never past the total


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
