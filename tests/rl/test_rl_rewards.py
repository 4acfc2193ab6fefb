"""Reward sources (function, model, implicit, ensemble, loading) and reward transforms."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest
import torch

from alignscope.errors import ConfigError, ModelError
from alignscope.rewards import (
    EnsembleReward,
    FunctionReward,
    ImplicitReward,
    ModelReward,
    RewardTransform,
    Standardizer,
    clip,
    load_reward_source,
    log_sigmoid_centring,
)

MOD = "alignscope_rl_test_reward_fns"
REWARD_FNS = '''
import math

def length_reward(prompts, responses):
    return [float(len(r)) for r in responses]

def wrong_length(prompts, responses):
    return [1.0]

def not_finite(prompts, responses):
    return [math.nan for _ in responses]

NOT_CALLABLE = 3
'''

CHAT = [[{"role": "user", "content": "Hi"}], [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]]


@pytest.fixture()
def reward_module(tmp_path, monkeypatch):
    (tmp_path / f"{MOD}.py").write_text(textwrap.dedent(REWARD_FNS))
    monkeypatch.delitem(sys.modules, MOD, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop(MOD, None)


# --- transforms


def test_standardizer_by_hand():
    s = Standardizer().fit([1.0, 2.0, 3.0, 4.0])
    # mean 2.5; unbiased var = (2.25 + 0.25 + 0.25 + 2.25)/3 = 5/3; std = 1.290994
    assert abs(s.mean - 2.5) < 1e-12 and abs(s.std - math.sqrt(5 / 3)) < 1e-12
    assert torch.allclose(s(torch.tensor([2.5, 4.0])), torch.tensor([0.0, 1.5 / math.sqrt(5 / 3)]))  # [0, 1.161895]
    # statistics stay fixed: a new batch is not re-centred
    assert torch.allclose(s([10.0, 10.0]), torch.tensor([7.5 / math.sqrt(5 / 3)] * 2))


def test_standardizer_errors():
    with pytest.raises(ConfigError, match="before fit"):
        Standardizer()([1.0])
    with pytest.raises(ConfigError, match="zero std"):
        Standardizer().fit([2.0, 2.0, 2.0])


def test_log_sigmoid_centring_and_clip():
    # log σ(0) = log ½ = −0.693147; log σ(1) = −log(1 + e^−1) = −0.313262; log σ(−2) = −2.126928
    out = log_sigmoid_centring(torch.tensor([0.0, 3.0, 1.0]), torch.tensor([0.0, 2.0, 3.0]))
    assert torch.allclose(out, torch.tensor([-math.log(2), -math.log(1 + math.exp(-1)), -math.log(1 + math.exp(2))]), atol=1e-6)
    assert torch.equal(clip(torch.tensor([-10.0, 0.5, 10.0]), -5, 5), torch.tensor([-5.0, 0.5, 5.0]))


def test_reward_transform_composition():
    t = RewardTransform(["standardize", {"clip": [-1, 1]}]).fit([1.0, 2.0, 3.0, 4.0])
    # (2.5 − 2.5)/1.29 = 0; (4 − 2.5)/1.29 = 1.16 -> 1; (−10 − 2.5)/1.29 = −9.68 -> −1
    assert torch.allclose(t(torch.tensor([2.5, 4.0, -10.0])), torch.tensor([0.0, 1.0, -1.0]))
    # a constant centre: log σ(r − 1)
    c = RewardTransform([{"log_sigmoid_centring": 1.0}])
    assert torch.allclose(c(torch.tensor([1.0])), torch.tensor([-math.log(2)]))
    # centre given per call (e.g. the reference policy's reward for each prompt)
    c = RewardTransform(["log_sigmoid_centring"])
    assert torch.allclose(c(torch.tensor([3.0]), ref_rewards=torch.tensor([3.0])), torch.tensor([-math.log(2)]))
    with pytest.raises(ConfigError, match="needs reference rewards"):
        c(torch.tensor([3.0]))


def test_reward_transform_errors():
    with pytest.raises(ConfigError, match="did you mean 'standardize'"):
        RewardTransform(["standardise"])
    with pytest.raises(ConfigError, match=r"\[low, high\]"):
        RewardTransform([{"clip": 5}])
    with pytest.raises(ConfigError, match="before fit"):
        RewardTransform(["standardize"])(torch.tensor([1.0]))


# --- function rewards


def test_function_reward_from_spec(reward_module):
    r = FunctionReward(f"{MOD}:length_reward")(["p", "q"], ["abc", "hello"])
    assert r.dtype == torch.float32 and r.tolist() == [3.0, 5.0]
    assert load_reward_source(f"{MOD}:length_reward")(["p"], ["ab"]).tolist() == [2.0]
    file_spec = f"{reward_module / (MOD + '.py')}:length_reward"
    assert FunctionReward(file_spec)(["p"], ["abcd"]).tolist() == [4.0]
    assert FunctionReward(lambda ps, rs: torch.ones(len(rs)))(["p"], ["x"]).tolist() == [1.0]


def test_function_reward_errors(reward_module):
    with pytest.raises(ConfigError, match="expected module:function"):
        FunctionReward("no_colon_here")
    with pytest.raises(ConfigError, match="no module named 'alignscope_no_such_module'"):
        FunctionReward("alignscope_no_such_module:f")
    with pytest.raises(ConfigError, match="has no attribute 'length_rewrd'.*did you mean 'length_reward'"):
        FunctionReward(f"{MOD}:length_rewrd")
    with pytest.raises(ConfigError, match="not a function"):
        FunctionReward(f"{MOD}:NOT_CALLABLE")
    with pytest.raises(ConfigError, match="returned 1 values for 2 responses"):
        FunctionReward(f"{MOD}:wrong_length")(["p", "q"], ["a", "b"])
    with pytest.raises(ConfigError, match="non-finite"):
        FunctionReward(f"{MOD}:not_finite")(["p"], ["a"])


def test_function_reward_found_in_working_directory(tmp_path, monkeypatch):
    name = "alignscope_rl_cwd_rewards"
    (tmp_path / f"{name}.py").write_text("def one(prompts, responses):\n    return [1.0] * len(responses)\n")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert FunctionReward(f"{name}:one")(["p"], ["a"]).tolist() == [1.0]
    assert sys.path[-1] == str(tmp_path)  # searched last, after installed modules
    sys.modules.pop(name, None)


def test_ensemble_reward():
    a = FunctionReward(lambda ps, rs: [1.0, 2.0, 3.0])
    b = FunctionReward(lambda ps, rs: [3.0, 4.0, 3.0])
    args = (["p"] * 3, ["x", "y", "z"])
    assert EnsembleReward([a, b], "mean")(*args).tolist() == [2.0, 3.0, 3.0]
    assert EnsembleReward([a, b], "min")(*args).tolist() == [1.0, 2.0, 3.0]
    # population std over members: [1, 1, 0]; mean − 2·std = [0, 1, 3]
    assert EnsembleReward([a, b], "mean_minus_std", k=2.0)(*args).tolist() == [0.0, 1.0, 3.0]
    with pytest.raises(ConfigError, match="did you mean 'min'"):
        EnsembleReward([a], "mn")


# --- model rewards


def _seq_classifier(tok, seed: int = 0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=4, num_labels=1, pad_token_id=tok.pad_token_id, attn_implementation="eager")
    return LlamaForSequenceClassification(cfg).eval()


def test_model_reward_hf_classifier_matches_unbatched(bpe_tokenizer):
    tok, rm = bpe_tokenizer, _seq_classifier(bpe_tokenizer)
    prompts = [CHAT[0], CHAT[1], "Question: why? Answer:"]
    responses = ["Yes, I can help with that.", "Paris.", " Because."]
    got = ModelReward(rm, tok, batch_size=2)(prompts, responses)
    expected = []
    for p, r in zip(prompts, responses):
        if isinstance(p, str):
            ids = tok(p + r)["input_ids"]  # plain concatenation
        else:
            text = tok.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=False)
            assert text.endswith(f"<|im_start|>assistant\n{r}<|im_end|>\n")
            ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            expected.append(float(rm(input_ids=torch.tensor([ids])).logits[0, 0]))
    assert got.dtype == torch.float32 and got.shape == (3,)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-5)


def test_model_reward_plain_module_and_order(bpe_tokenizer):
    class Length(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, input_ids, attention_mask):
            return attention_mask.sum(-1).float() * self.w

    tok = bpe_tokenizer
    responses = ["a much longer answer than the others, really", "no", "yes I can"]
    got = ModelReward(Length(), tok, batch_size=2)(["Q: "] * 3, responses)
    assert got.tolist() == [float(len(tok("Q: " + r)["input_ids"])) for r in responses]  # input order kept


def test_model_reward_alignscope_rm_uses_training_encoding(bpe_tokenizer, tiny_model):
    from alignscope.data.tokenize import encode_response
    from alignscope.models.reward_model import RewardModel

    rm = RewardModel(tiny_model).eval()
    got = ModelReward(rm, bpe_tokenizer)(CHAT, ["Paris.", "Yes"])
    for k, (p, r) in enumerate(zip(CHAT, ["Paris.", "Yes"])):
        enc = encode_response(bpe_tokenizer, p, r)
        ids = torch.tensor([enc.prompt_ids + enc.response_ids])
        with torch.no_grad():
            assert abs(float(rm(ids, torch.ones_like(ids))[0]) - float(got[k])) < 1e-5


def test_load_reward_source_from_folders(tmp_path, bpe_tokenizer, tiny_model):
    rm = _seq_classifier(bpe_tokenizer)
    rm.save_pretrained(tmp_path / "rm")
    bpe_tokenizer.save_pretrained(tmp_path / "rm")
    src = load_reward_source(str(tmp_path / "rm"), batch_size=4)
    assert isinstance(src, ModelReward)
    direct = ModelReward(rm, bpe_tokenizer)(CHAT, ["a", "b"])
    assert torch.allclose(src(CHAT, ["a", "b"]), direct, atol=1e-5)
    tiny_model.save_pretrained(tmp_path / "lm")
    with pytest.raises(ModelError, match="not a reward model"):
        load_reward_source(str(tmp_path / "lm"))
    with pytest.raises(ConfigError, match="neither a folder nor module:function"):
        load_reward_source(str(tmp_path / "missing"))


def test_implicit_reward_matches_manual(bpe_tokenizer, tiny_model):
    from alignscope.models import scoring

    if not hasattr(scoring, "sequence_logps"):
        pytest.skip("alignscope.models.scoring.sequence_logps is not available yet")
    from alignscope.data.tokenize import encode_response
    from alignscope.models.tiny import tiny_llama

    reference = tiny_llama(bpe_tokenizer, hidden_size=32, num_layers=2, num_heads=4, seed=1).eval()
    prompts, responses = [CHAT[0], CHAT[1], "Plain text prompt:"], ["Hello there.", "Paris is the capital.", " fine"]
    got = ImplicitReward(tiny_model, reference, bpe_tokenizer, beta=0.5, batch_size=2)(prompts, responses)

    def logp(model, p, r):
        enc = encode_response(bpe_tokenizer, p, r)
        ids = torch.tensor([enc.prompt_ids + enc.response_ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0].float(), -1)
        start = len(enc.prompt_ids) - 1  # the position that predicts the first response token
        return sum(float(lp[start + k, t]) for k, t in enumerate(enc.response_ids))

    expected = [0.5 * (logp(tiny_model, p, r) - logp(reference, p, r)) for p, r in zip(prompts, responses)]
    assert torch.allclose(got, torch.tensor(expected), atol=1e-4)
