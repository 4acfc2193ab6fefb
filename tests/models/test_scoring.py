"""The scoring engine equals a naive one-example-at-a-time computation with full logits."""

import pytest
import torch

from alignscope.models.scoring import score_batch, score_sequences


def naive(model, prompt, response):
    ids = torch.tensor([prompt + response])
    out = model(input_ids=ids, output_hidden_states=True)
    logp = torch.log_softmax(out.logits[0].float(), -1)
    positions = range(len(prompt) - 1, len(prompt) + len(response) - 1)
    tok = torch.stack([logp[p, ids[0, p + 1]] for p in positions])
    body = model.model(input_ids=ids).last_hidden_state[0]
    hsum = torch.stack([body[p] for p in positions]).sum(0)
    return tok, hsum, body[-1]


def make_seqs(vocab, seed=0, n=7):
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for _ in range(n):
        lp = int(torch.randint(1, 9, (1,), generator=g))
        lr = int(torch.randint(1, 12, (1,), generator=g))
        seqs.append(
            (
                torch.randint(5, vocab, (lp,), generator=g).tolist(),
                torch.randint(5, vocab, (lr,), generator=g).tolist(),
            )
        )
    return seqs


@pytest.mark.parametrize("side", ["right", "left"])
def test_score_batch_matches_naive(tiny_model, bpe_tokenizer, side):
    seqs = make_seqs(len(bpe_tokenizer))
    with torch.no_grad():
        out = score_batch(
            tiny_model,
            [p for p, _ in seqs],
            [r for _, r in seqs],
            pad_id=bpe_tokenizer.pad_token_id,
            padding_side=side,
            return_token_logps=True,
            return_hidden=True,
        )
        for i, (p, r) in enumerate(seqs):
            tok, hsum, last = naive(tiny_model, p, r)
            assert out.n_tokens[i] == len(r)
            torch.testing.assert_close(out.token_logps[i], tok, atol=1e-5, rtol=0)
            torch.testing.assert_close(out.logps[i], tok.sum(), atol=1e-5, rtol=0)
            torch.testing.assert_close(out.mean_logps[i], tok.mean(), atol=1e-5, rtol=0)
            torch.testing.assert_close(out.hidden_sum[i], hsum, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.last_hidden[i], last, atol=1e-5, rtol=1e-5)


def test_score_sequences_bucketed_keeps_order(tiny_model, bpe_tokenizer):
    seqs = make_seqs(len(bpe_tokenizer), seed=1, n=11)
    out = score_sequences(
        tiny_model, [p for p, _ in seqs], [r for _, r in seqs], pad_id=0, batch_size=3, return_hidden=True
    )
    with torch.no_grad():
        for i, (p, r) in enumerate(seqs):
            tok, hsum, _ = naive(tiny_model, p, r)
            torch.testing.assert_close(out.logps[i], tok.sum(), atol=1e-5, rtol=0)
            torch.testing.assert_close(out.hidden_sum[i], hsum, atol=1e-5, rtol=1e-5)


def test_score_batch_is_differentiable(tiny_model):
    tiny_model.train()
    out = score_batch(tiny_model, [[5, 6, 7]], [[8, 9]], pad_id=0)
    out.logps.sum().backward()
    assert tiny_model.lm_head.weight.grad is not None
    assert tiny_model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_empty_response_rejected(tiny_model):
    with pytest.raises(ValueError, match="response"):
        score_batch(tiny_model, [[5]], [[]], pad_id=0)
