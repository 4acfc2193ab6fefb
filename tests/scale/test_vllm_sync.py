"""vLLM rollouts and weight sync, on CPU against a stand-in engine with vLLM's loading rules (tests/scale/standin_engine.py)."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from alignscope.errors import ConfigError, ModelError
from alignscope.models.scoring import pad_token_id, score_batch
from alignscope.rollout import (
    GenerationConfig,
    RolloutOptions,
    VLLMGenerator,
    generate,
    generate_with,
)
from alignscope.models.device import resolve_placement
from alignscope.rollout.backend import sampling_engine
from scale.standin_engine import StandInEngine

PROMPTS = ["What is the capital of France?", "Please answer the question", "Numbers: 0 1 2"]
GREEDY = GenerationConfig(max_new_tokens=6, do_sample=False)


def train_step(model, tok, lr=0.05):
    """One Adam step that lowers the log-likelihood of fixed sequences (any change of the weights would do)."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    out = score_batch(model, ids, [[5, 6, 7, 8]] * len(ids), pad_id=pad_token_id(tok))
    out.logps.sum().backward()
    opt.step()
    opt.zero_grad()


def assert_same_rollout(a, b):
    assert a.response_ids == b.response_ids
    for x, y in zip(a.logprobs, b.logprobs):
        assert torch.allclose(x, y, atol=1e-4)


def test_sync_sends_checkpoint_names_and_sampling_uses_the_new_weights(tiny_model, bpe_tokenizer):
    policy = copy.deepcopy(tiny_model)
    engine = StandInEngine(policy)
    gen = VLLMGenerator(engine=engine, tokenizer=bpe_tokenizer)
    before = gen.generate(PROMPTS, GREEDY)
    assert_same_rollout(before, generate(policy, bpe_tokenizer, PROMPTS, GREEDY))
    train_step(policy, bpe_tokenizer)
    names = gen.sync(policy)
    assert sorted(names) == sorted(n for n, _ in policy.named_parameters()) == sorted(engine.received)
    assert any(".q_proj." in n for n in names) and not any("qkv" in n for n in names)  # vLLM fuses them itself
    assert engine.events[-2:] == ["load_weights", "reset_prefix_cache"]
    after = gen.generate(PROMPTS, GREEDY)
    assert_same_rollout(after, generate(policy, bpe_tokenizer, PROMPTS, GREEDY))
    assert max(float((x - y).abs().max()) for x, y in zip(after.logprobs, before.logprobs)) > 1e-3


def test_only_trainable_weights_are_sent(tiny_model, bpe_tokenizer):
    policy = copy.deepcopy(tiny_model)
    policy.model.embed_tokens.requires_grad_(False)
    gen = VLLMGenerator(engine=StandInEngine(policy), tokenizer=bpe_tokenizer)
    train_step(policy, bpe_tokenizer)
    names = gen.sync(policy)
    assert "model.embed_tokens.weight" not in names and "lm_head.weight" in names
    assert_same_rollout(gen.generate(PROMPTS, GREEDY), generate(policy, bpe_tokenizer, PROMPTS, GREEDY))


def test_lora_sends_the_merged_adapted_layers_and_leaves_the_policy_unmerged(tiny_model, bpe_tokenizer):
    peft = pytest.importorskip("peft")
    engine = StandInEngine(tiny_model)
    policy = peft.get_peft_model(copy.deepcopy(tiny_model), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = VLLMGenerator(engine=engine, tokenizer=bpe_tokenizer)
    train_step(policy, bpe_tokenizer, lr=0.1)
    ids = torch.tensor([bpe_tokenizer(PROMPTS[0])["input_ids"]])
    with torch.no_grad():
        logits = policy(ids).logits
    names = gen.sync(policy)
    layers = tiny_model.config.num_hidden_layers
    assert sorted(names) == sorted(f"model.layers.{i}.self_attn.{m}.weight" for i in range(layers) for m in ("q_proj", "v_proj"))
    merged = copy.deepcopy(policy).merge_and_unload()
    state = engine._unfused_state()
    for n in names:
        assert torch.allclose(state[n], merged.get_parameter(n), atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(policy(ids).logits, logits, atol=1e-6)  # unmerged again: the adapter trains on
    assert_same_rollout(gen.generate(PROMPTS, GREEDY), generate(merged, bpe_tokenizer, PROMPTS, GREEDY))


def test_sleep_mode_frees_the_weights_and_sends_all_of_them_back(tiny_model, bpe_tokenizer):
    policy = copy.deepcopy(tiny_model)
    policy.model.embed_tokens.requires_grad_(False)
    engine = StandInEngine(policy)
    gen = VLLMGenerator(engine=engine, tokenizer=bpe_tokenizer,
                        options=RolloutOptions(rollout_backend="vllm", vllm_enable_sleep_mode=True))
    gen.generate(PROMPTS, GREEDY)
    assert engine.events == ["wake_up:kv_cache", "sleep"] and gen.weights_discarded
    with pytest.raises(ModelError, match="freed by sleep mode"):
        gen.generate(PROMPTS, GREEDY)
    train_step(policy, bpe_tokenizer)
    out = gen.generate(PROMPTS, GREEDY, policy=policy)
    assert "model.embed_tokens.weight" in gen.synced_names  # frozen, but discarded by the sleep
    assert engine.events[2:] == ["wake_up:weights", "load_weights", "reset_prefix_cache", "wake_up:kv_cache", "sleep"]
    assert_same_rollout(out, generate(policy, bpe_tokenizer, PROMPTS, GREEDY))


def test_generate_with_backends(tiny_model, bpe_tokenizer, monkeypatch):
    cfg = GenerationConfig(max_new_tokens=4, n=2, seed=3)
    assert_same_rollout(generate_with("hf", tiny_model, bpe_tokenizer, PROMPTS, cfg), generate(tiny_model, bpe_tokenizer, PROMPTS, cfg))
    engine = VLLMGenerator(engine=StandInEngine(tiny_model), tokenizer=bpe_tokenizer)
    assert_same_rollout(generate_with(engine, tiny_model, bpe_tokenizer, PROMPTS, GREEDY), generate(tiny_model, bpe_tokenizer, PROMPTS, GREEDY))
    with pytest.raises(ConfigError, match="unknown rollout backend"):
        generate_with("tgi", tiny_model, bpe_tokenizer, PROMPTS, cfg)
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ModelError, match="vLLM is not installed"):
        with sampling_engine(RolloutOptions(rollout_backend="vllm"), tiny_model, bpe_tokenizer, resolve_placement("cpu")):
            pass
    with pytest.raises(ConfigError, match="sleep_mode"):
        RolloutOptions(vllm_enable_sleep_mode=True)


def test_train_rl_samples_from_the_engine_and_syncs_it_after_every_step(tmp_path, tiny_model, bpe_tokenizer, monkeypatch):
    from alignscope.training import rl as rl_module
    from alignscope.training.config import RLConfig

    made = []

    def standin_for_model(model, tokenizer=None, *, options=None, seed=0, **_):
        made.append(VLLMGenerator(engine=StandInEngine(model), tokenizer=tokenizer, options=options))
        return made[-1]

    monkeypatch.setattr(rl_module.VLLMGenerator, "for_model", staticmethod(standin_for_model))
    cfg = RLConfig(algorithm="rloo", rollout_backend="vllm", output_dir=str(tmp_path / "run"), steps=3, prompts_per_step=2,
                   samples_per_prompt=2, max_new_tokens=4, lr=1e-2, kl_coef=0.0, progress=False)
    policy = copy.deepcopy(tiny_model)
    rl_module.train_rl(cfg, model=policy, tokenizer=bpe_tokenizer, prompts=PROMPTS,
                       reward=lambda p, r: [float(len(x)) for x in r], log=lambda *a: None)
    engine = made[0].engine
    assert engine.events.count("load_weights") == 3 and engine.events[-1] == "reset_prefix_cache"
    assert engine.prompts_seen == 3 * 2  # every rollout was sampled by the engine (3 steps x 2 prompts)
    # The engine holds the trained policy's weights: its greedy rollout is the policy's own.
    assert_same_rollout(made[0].generate(PROMPTS, GREEDY), generate(policy, bpe_tokenizer, PROMPTS, GREEDY))
    assert not torch.equal(policy.model.embed_tokens.weight, tiny_model.model.embed_tokens.weight)
