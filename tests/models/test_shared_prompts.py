"""Sharing a prompt's forward between its responses, and packing a batch without padding, change nothing but the cost.

Every architecture in SHARED_PROMPT_MODEL_TYPES is checked here, with sdpa and eager attention:
log-probs, hidden states and gradients equal one-sequence-a-row padded scoring.
"""

from types import SimpleNamespace

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from alignscope.errors import ModelError
from alignscope.models import attention, scoring
from alignscope.models.reward_model import RewardModel
from alignscope.models.scoring import (
    SHARED_PROMPT_MODEL_TYPES,
    build_layout,
    build_packed_layout,
    can_pack,
    can_share_prompts,
    layout_for,
    prompt_groups,
    score_batch,
    score_sequences,
    sharing_pays,
)

VOCAB = 97
CONFIGS = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
}


@pytest.fixture(autouse=True)
def always_share(monkeypatch):
    """The tiny test models are so narrow that sharing rarely pays (see `sharing_pays`); share anyway."""
    monkeypatch.setattr(scoring, "sharing_pays", lambda *a: True)


def make_model(kind: str, attn: str, seed: int = 0):
    cfg = CONFIGS[kind](vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, tie_word_embeddings=False)
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval()


def groups_batch(seed: int = 0):
    """Pairs and a triple with prompts and responses of different lengths, each response listed after its prompt."""
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for k in (2, 2, 3, 1, 2):
        p = torch.randint(1, VOCAB, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(k):
            prompts.append(p)
            responses.append(torch.randint(1, VOCAB, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist())
    return prompts, responses


def test_every_listed_architecture_is_tested():
    assert set(CONFIGS) == SHARED_PROMPT_MODEL_TYPES


def test_prompt_groups_are_runs_of_equal_prompts():
    assert prompt_groups([[1], [1], [2], [1], [1, 2], [1, 2]]) == [[0, 1], [2], [3], [4, 5]]


def test_layout_shares_each_prompt_once():
    prompts = [[5, 6], [5, 6], [7]]
    lay = build_layout(prompts, [[1, 2], [3], [4, 4, 4]], pad_id=0, groups=prompt_groups(prompts))
    assert lay.input_ids.tolist() == [[5, 6, 1, 2, 3], [7, 4, 4, 4, 0]]
    assert lay.position_ids.tolist() == [[0, 1, 2, 3, 2], [0, 1, 2, 3, 0]]
    # the first token of both responses is predicted from the prompt's last position (flat index 1)
    assert lay.pred_index.tolist() == [1, 2, 1, 5, 6, 7]
    assert lay.last_index.tolist() == [3, 4, 8]
    m = lay.attention_mask[0, 0]
    assert m[4].tolist() == [True, True, False, False, True]  # the second response does not see the first
    assert m[3].tolist() == [True, True, True, True, False]
    assert lay.attention_mask[1, 0, 4].tolist() == [False, False, False, False, True]  # padding sees only itself


def score_with_grads(model, prompts, responses, **kw):
    model.zero_grad()
    out = score_batch(model, prompts, responses, pad_id=0, return_token_logps=True, return_hidden=True, **kw)
    (out.logps * torch.arange(1.0, len(prompts) + 1)).sum().backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_scores(a, ga, b, gb):
    torch.testing.assert_close(a.logps, b.logps, atol=1e-5, rtol=1e-5)
    for x, y in zip(a.token_logps, b.token_logps):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.hidden_sum, b.hidden_sum, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.last_hidden, b.last_hidden, atol=1e-5, rtol=1e-5)
    assert ga.keys() == gb.keys()
    for name in ga:
        assert torch.isfinite(ga[name]).all()
        scale = gb[name].abs().max().item()  # fp32 sums in another order: tolerance relative to the tensor's size
        torch.testing.assert_close(ga[name], gb[name], atol=1e-5 + 1e-6 * scale, rtol=1e-4, msg=name)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_shared_prompts_equal_one_sequence_a_row(kind, attn):
    model = make_model(kind, attn)
    prompts, responses = groups_batch()
    assert can_share_prompts(model, 64)
    assert layout_for(model, prompts, responses, 0, padding_free=False).attention_mask.dim() == 4
    shared = score_with_grads(model, prompts, responses, padding_free=False)
    alone = score_with_grads(model, prompts, responses, share_prompts=False, padding_free=False)
    assert_same_scores(*shared, *alone)


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_padding_free_equals_padded_rows(kind, share):
    model = make_model(kind, "sdpa")
    prompts, responses = groups_batch()
    lay = layout_for(model, prompts, responses, 0, share_prompts=share)
    assert lay.plan is not None and lay.input_ids.shape == (1, sum(lay.plan.lengths))
    packed = score_with_grads(model, prompts, responses, share_prompts=share)
    padded = score_with_grads(model, prompts, responses, share_prompts=False, padding_free=False)
    assert_same_scores(*packed, *padded)


def test_padding_free_with_gradient_checkpointing():
    from alignscope.models.loading import set_activation_checkpointing

    model = make_model("qwen3", "sdpa")
    set_activation_checkpointing(model, True)
    assert getattr(model, "is_activation_checkpointing", None) or getattr(model, "is_gradient_checkpointing", None)
    model.train()
    prompts, responses = groups_batch(seed=2)
    packed = score_with_grads(model, prompts, responses)
    set_activation_checkpointing(model, False)
    padded = score_with_grads(model, prompts, responses, share_prompts=False, padding_free=False)
    assert_same_scores(*packed, *padded)


def test_packed_layout_is_exact():
    prompts = [[5, 6], [5, 6], [7]]
    lay = build_packed_layout(prompts, [[1, 2], [3], [4, 4, 4]], prompt_groups(prompts))
    assert lay.input_ids.tolist() == [[5, 6, 1, 2, 3, 7, 4, 4, 4]]
    assert lay.position_ids.tolist() == [[0, 1, 2, 3, 2, 0, 1, 2, 3]]
    assert lay.pred_index.tolist() == [1, 2, 1, 5, 6, 7]
    assert lay.last_index.tolist() == [3, 4, 8]
    assert lay.plan.lengths == [4, 1, 4]  # [prompt, r1], r2, [prompt, r1] of the next group
    (h0, p0, m0), (h1, p1, m1), (h2, p2, m2) = lay.plan.spans
    assert (p0, m0, p2, m2) == (0, None, 0, None)  # plain causal
    assert (h1, p1) == (0, 2) and m1.tolist() == [[True, True, True]]  # r2 sees the prompt and itself


def test_padding_free_refuses_a_forward_that_bypassed_it(monkeypatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model = make_model("llama", "sdpa")
    prompts, responses = groups_batch()
    lay = layout_for(model, prompts, responses, 0)
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._local_mapping, "sdpa", sdpa_attention_forward)
    monkeypatch.setattr(attention, "_ORIGINAL_SDPA", sdpa_attention_forward)
    lay.plan.calls = 0
    body = scoring.body_and_head(model)[0]
    with pytest.raises(Exception):  # the original sdpa cannot use the placeholder mask
        body(input_ids=lay.input_ids, attention_mask=lay.attention_mask, position_ids=lay.position_ids)
    with pytest.raises(ModelError, match="padding_free=false"):
        attention.check_plan_ran(lay.plan, model.config.num_hidden_layers)


def test_score_sequences_keeps_groups_together_and_order():
    model = make_model("llama", "sdpa")
    prompts, responses = groups_batch(seed=3)
    alone = score_batch(model, prompts, responses, pad_id=0, share_prompts=False, padding_free=False, return_hidden=True)
    for padding_free in (True, False):
        shared = score_sequences(model, prompts, responses, pad_id=0, batch_size=3, return_hidden=True, padding_free=padding_free)
        torch.testing.assert_close(shared.logps, alone.logps.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(shared.last_hidden, alone.last_hidden.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding_free", [True, False])
def test_reward_model_scores_the_same_in_a_shared_row(padding_free):
    rm = RewardModel(make_model("llama", "sdpa"), num_heads=2).eval()
    prompts, responses = groups_batch(seed=5)
    lay = layout_for(rm.lm, prompts, responses, 0, padding_free=padding_free)
    assert (lay.plan is not None) == padding_free
    shared = rm(per_head=True, layout=lay)
    alone = torch.stack([rm(torch.tensor([p + r]), torch.ones(1, len(p) + len(r), dtype=torch.long), per_head=True)[0]
                         for p, r in zip(prompts, responses)])
    torch.testing.assert_close(shared, alone, atol=1e-5, rtol=1e-5)


def test_unverified_architecture_and_short_window_fall_back():
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=4, n_positions=64))
    assert not can_share_prompts(gpt2, 10)
    prompts, responses = groups_batch()
    lay = layout_for(gpt2, prompts, responses, 0)
    assert lay.attention_mask.dim() == 2 and lay.input_ids.shape[0] == len(prompts)
    out = score_batch(gpt2, prompts, responses, pad_id=0)
    assert torch.isfinite(out.logps).all()
    assert not can_pack(gpt2, 10)
    mistral = make_model("mistral", "sdpa")
    mistral.config.sliding_window = 8
    assert not can_share_prompts(mistral, 9) and can_share_prompts(mistral, 8)
    assert not can_pack(mistral, 9) and can_pack(mistral, 8)
    assert not can_pack(make_model("llama", "eager"), 8)


def test_sharing_is_skipped_when_longer_rows_cost_more(monkeypatch):
    bench_8m = SimpleNamespace(hidden_size=256, intermediate_size=768)  # benchmarks/workloads.py, scale 8m
    pairs = [[0, 1], [2, 3]]
    short = ([[1] * 33] * 2 + [[4] * 30] * 2, [[2] * 65, [3] * 60, [2] * 70, [3] * 64])
    long = ([[1] * 33] * 2 + [[4] * 30] * 2, [[2] * 517, [3] * 500, [2] * 530, [3] * 490])
    assert sharing_pays(bench_8m, *short, pairs)
    assert not sharing_pays(bench_8m, *long, pairs)
    model = make_model("llama", "sdpa")
    monkeypatch.setattr(scoring, "sharing_pays", lambda *a: False)
    assert layout_for(model, *short, 0, padding_free=False).attention_mask.dim() == 2
    monkeypatch.setattr(scoring, "sharing_pays", lambda *a: True)
    assert layout_for(model, *short, 0, padding_free=False).attention_mask.dim() == 4
