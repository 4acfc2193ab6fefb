"""`train rl` with LoRA under accelerate's FSDP (v2): the peft-wrapped policy is sharded (frozen base and trainable
adapter weights in the same units), and sampling and the reference pass (the adapter disabled) run on the policy
gathered whole. 2 sharded processes take the step 1 process takes, and a sharded LoRA checkpoint, which holds what a
DDP LoRA run's holds, resumes under FSDP and under DDP. Launched as in test_fsdp_rl.py (fsdp_on_cpu.py, gloo)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from alignscope.training.config import LoraConfig
from alignscope.training.lora import add_lora, merged_state
from alignscope.training.rl import RLConfig, check_sharding

from .test_distributed_rl import CLI, ENV, REPO, options, prompts, rows, weights  # noqa: F401 (prompts: a fixture)
from .test_fsdp_rl import assert_resumes_to_the_same_end, fsdp

LORA = {"lora.r": 4, "lora.alpha": 8}


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "adapter" / "adapter_model.safetensors"))


def test_lora_under_fsdp2_is_taken():
    assert check_sharding(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True), RLConfig(lora={"r": 4, "alpha": 8}))


@pytest.mark.parametrize("tied", [True, False])
def test_merged_state_is_what_merge_and_unload_leaves(tmp_path, tied):
    """The final model of a sharded LoRA run is merged from the gathered tensors in a twin: the same tensors, and the
    same file (tied embeddings saved once), as peft's merge of the live policy in a DDP run."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied))
    policy = add_lora(base, RLConfig(lora=LoraConfig(r=4, alpha=8)))
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            p.data.normal_()  # peft starts B at 0: the merge would be the identity
    got = merged_state(policy, {k: v.detach().clone() for k, v in policy.state_dict().items()})
    merged = copy.deepcopy(policy).merge_and_unload()
    assert got.keys() == merged.state_dict().keys()
    for k, v in merged.state_dict().items():
        torch.testing.assert_close(got[k], v, atol=0, rtol=0, msg=k)
    policy.get_base_model().save_pretrained(tmp_path / "sharded", state_dict=got)
    merged.save_pretrained(tmp_path / "ddp")
    assert load_file(str(tmp_path / "sharded" / "model.safetensors")).keys() == load_file(str(tmp_path / "ddp" / "model.safetensors")).keys()


def test_two_sharded_lora_processes_take_the_steps_one_process_takes(tmp_path, prompts):
    """Two rollout batches: at the first the adapter is the identity, so only the second's KL tells a reference with the
    adapter disabled from one without. PPO's value head and micro-batches included. Measured on CPU/gloo: metrics
    within 3e-5 relative (the KL), the adapter within 3e-7 and the merged model within 3e-8; asserted as in
    test_fsdp_rl.py (1e-4 relative, lr / 10)."""
    one, two = tmp_path / "one", tmp_path / "two"
    over = {**LORA, "steps": 2, "algorithm": "ppo", "samples_per_prompt": 2, "micro_batch_size": 2}
    a = subprocess.run(CLI + options(prompts, one, **over), env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert a.returncode == 0, a.stderr[-3000:]
    b = fsdp(options(prompts, two, **over))
    assert "the reference is the policy with its LoRA adapter disabled" in b.stdout
    ra, rb = rows(one), rows(two)
    assert [r["step"] for r in rb] == [1, 2]
    assert ra[1]["kl"] != 0
    for x, y in zip(ra, rb):
        for key in ("reward/proxy_mean", "reward_variance/mean", "response_length", "kl", "loss", "entropy", "clip_fraction"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), key
    assert rows(one, "completions.jsonl") == rows(two, "completions.jsonl")
    for load in (adapter, weights):  # the adapter alone, and the merged model every alignscope command loads
        wa, wb = load(one), load(two)
        assert wa.keys() == wb.keys()
        for k, v in wa.items():
            torch.testing.assert_close(wb[k], v, atol=1e-4, rtol=0, msg=k)
    assert any(v.abs().max() > 1e-3 for k, v in adapter(two).items() if "lora_B" in k)  # the updates moved the adapter
    assert b.stdout.count("done:") == 1


def test_sharded_lora_run_resumes_to_the_same_end(tmp_path, prompts):
    """A checkpoint holds the whole peft model's tensors and the adapter's optimizer state, keyed as a DDP LoRA run keys
    them: resumed under DDP, the run ends on the same adapter and merged model (measured: identical, and so under FSDP)."""
    assert_resumes_to_the_same_end(tmp_path, prompts, {**LORA, "steps": 2, "save_steps": 1, "num_iterations": 1}, (adapter, weights),
                                   launches=("ddp",))  # the sharded resume itself: test_fsdp_rl.py
