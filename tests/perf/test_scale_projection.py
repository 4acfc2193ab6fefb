"""benchmarks/scale_projection.py (docs/scale.md): its counts on a tiny config against hand arithmetic, against
torch's own FLOP counter and saved-tensor hooks on alignscope's real scoring and generation, and the printout."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import scale_projection as S  # noqa: E402

# d=8, 2 layers, 2 heads of 4, 1 KV head (d_kv = 4), MLP 16, vocabulary 10, untied.
TINY = S.Arch("tiny", hidden=8, layers=2, heads=2, kv_heads=1, intermediate=16, vocab=10, tied=False)
# One pair: prompt 2 tokens, chosen 3, rejected 1.
PAIR = S.pair_stats([2], [3], [1])


def test_tiny_counts_by_hand():
    # One layer's linear weights: q 8*8 + k 8*4 + v 8*4 + o 8*8 + gate, up, down 3*8*16 = 64+32+32+64+384 = 576.
    assert TINY.layer_linear == 576 and TINY.body_linear == 1152
    # Parameters: 2 layers x (576 + two norms of 8) + final norm 8 + embedding 10*8 + head 10*8 = 1184 + 168 = 1352.
    assert TINY.params == 1352
    # K and V, bf16, every layer: 2 tensors x 2 layers x d_kv 4 x 2 bytes = 32 bytes per token.
    assert TINY.kv_bytes_per_token == 32
    # The packed pair [p p c c c r]: 6 tokens, 4 response tokens. Attention pairs: [prompt, chosen] causal over 5
    # tokens = 5*6/2 = 15; rejected sees the 2 prompt tokens and itself: 1*2 + 1*2/2 = 3; 18 in all.
    assert (PAIR.tokens, PAIR.response, PAIR.attn_pairs) == (6, 4, 18)
    fwd = S.ches_flops(TINY, PAIR, 1)
    # linear 2*1152*6 = 13,824; head 2*8*10*4 = 640; attention 4*d_attn 8*layers 2*18 = 1,152.
    assert (fwd.linear, fwd.head, fwd.attn, fwd.total) == (13824, 640, 1152, 15616)
    dpo = S.dpo_flops(TINY, PAIR, 1)
    assert dpo["policy"].total == 3 * 15616 and dpo["reference"].total == 15616  # forward + 2x backward; reference once


def test_tiny_lora_flops_by_hand():
    lora = S.Lora(r=1)
    # Adapters on q, k, v, o: r*(in + out) = (8+8) + (8+4) + (8+4) + (8+8) = 56 per layer, 112 in all.
    assert lora.params(TINY) == 112
    t = S.dpo_flops(TINY, PAIR, 1, lora)["policy"]
    # Linear: forward + dX only = 2*13,824; adapters 6*112*6 = 4,032; less the first layer's q, k, v dX,
    # 2*6*(64+32+32) = 1,536, and their adapters' dX, 2*6*1*(8+8+8) = 288: 27,648 + 4,032 - 1,824 = 29,856.
    assert (t.linear, t.head, t.attn) == (29856, 2 * 640, 3 * 1152)


def test_tiny_grpo_flops_by_hand():
    w = S.Workload(grpo_prompts=1, grpo_samples=2, grpo_new_tokens=3, gen_batch=2)
    prompts = S.PromptStats(n=1, mean=2, sq=4, group=1, padded=2, padded_sq=4)  # one prompt of 2 tokens
    g = S.grpo_flops(TINY, prompts, w)
    # Generation: the prompt's 2 tokens prefilled once, then 2 decode steps for each of the 2 samples = 6 tokens through
    # the layers; logits at the prompt's last position and at the 4 decode steps = 5. Attention: prefill 1 + 2 = 3 pairs
    # once; each sample's decode steps see 3 and 4 keys: 3 + 2 * 7 = 17.
    gen = g["generation"]
    assert (gen.linear, gen.head, gen.attn) == (2 * 1152 * 6, 2 * 8 * 10 * 5, 4 * 8 * 2 * 17)
    # Scoring one group [p p a a a b b b]: 8 tokens; a attends causally over 5 (15 pairs), b to the prompt and
    # itself (3*2 + 3*4/2 = 12): 27 pairs. Policy = 3x, reference = 1x that forward.
    ref = g["reference"]
    assert (ref.linear, ref.head, ref.attn) == (2 * 1152 * 8, 2 * 8 * 10 * 6, 4 * 8 * 2 * 27)
    assert g["policy"].total == 3 * ref.total
    # No padding (vLLM): with one prompt nothing is padded, so the same linear and attention work.
    sh = g["generation (no padding)"]
    assert (sh.linear, sh.attn) == (gen.linear, gen.attn)


def test_tiny_memory_by_hand():
    # Full fine-tuning: bf16 weights 2 + bf16 grads 2 + fp32 master and moments 12 bytes per parameter.
    assert S.state_bytes(TINY, "full") == {"weights": 2704, "grads": 2704, "optimizer": 16224}
    # Per token per layer: norms 2*(4*8 + 4 + 2*8) = 104, their outputs 2*2*8 = 32, q, k, v 2*8 + 4*4 = 32,
    # attention output and o_proj's input 2*2*8 = 32, log-sum-exp 4*2 = 8, MLP 8*16 = 128: 336.
    assert S.layer_activation_bytes(TINY) == 336
    b = S.pair_batch(PAIR, 1)
    # Per layer: 336*6 + the rejected span's fresh K/V over prompt + itself 4*4*3 = 48 + its [1, 3] bf16 mask 6 = 2,070;
    # 2 layers 4,140; RoPE cos/sin 4*4*6 = 96; final norm and ids (32+4+16+8)*6 = 360; head (40+16+28)*4 = 336.
    assert S.activation_bytes(TINY, b, checkpointing=False)["saved"] == 4140 + 96 + 360 + 336
    # Checkpointing keeps each layer's bf16 input: 2*8*6*2 = 192, plus final norm and head 696.
    assert S.activation_bytes(TINY, b, checkpointing=True)["saved"] == 192 + 696


def test_matches_workloads_matmul_floor():
    """Without grouped-query attention and without attention, the counts are workloads.matmul_floor's."""
    import workloads

    torch.set_num_threads(1)
    scale = workloads.Scale("t", vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, n_pairs=4,
                            prompt_words=4, response_words=4)
    meta = {"scale": {"n_pairs": 4}, "prompt_tokens": 40, "chosen_tokens": 60, "rejected_tokens": 50}
    floor = workloads.matmul_floor(scale, meta, 4)
    arch = S.Arch("t", 16, 2, 2, 2, 32, 64, False)
    pairs = S.PairStats(4, 10, 15, 12.5, 0, 0, 0)
    dpo = S.dpo_flops(arch, pairs, 4)
    ches = S.ches_flops(arch, pairs, 4)
    assert dpo["policy"].linear + dpo["policy"].head + dpo["reference"].linear + dpo["reference"].head == floor["dpo"][0]
    assert ches.linear + ches.head == floor["ches"][0]


def _tiny_llama(dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=200, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, attn_implementation="sdpa", tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(dtype), S.Arch("t", 32, 2, 4, 2, 80, 200, False)


def _matmul_flops(counter) -> int:
    return sum(v for op, v in counter.get_flop_counts()["Global"].items() if "scaled_dot_product" not in str(op))


P, C, R = 9, 14, 11  # one pair scored by score_batch


def test_flops_match_torch_counter_on_score_batch():
    """torch's FlopCounterMode on alignscope's own packed scoring: forward, then forward + backward (attention
    kernels left out: the counter does not count the CPU ones, and the script counts them by hand)."""
    from torch.utils.flop_counter import FlopCounterMode

    from alignscope.models.scoring import score_batch

    torch.set_num_threads(1)
    model, arch = _tiny_llama()
    fwd = S.forward_flops(arch, P + C + R, C + R, 0)
    counter = FlopCounterMode(display=False)
    with counter:
        score_batch(model, [list(range(1, P + 1))] * 2, [list(range(5, 5 + C)), list(range(7, 7 + R))], pad_id=0)
    assert _matmul_flops(counter) == fwd.total
    counter = FlopCounterMode(display=False)
    with counter:
        out = score_batch(model, [list(range(1, P + 1))] * 2, [list(range(5, 5 + C)), list(range(7, 7 + R))], pad_id=0)
        out.logps.sum().backward()
    assert _matmul_flops(counter) == S.train_flops(arch, fwd, P + C + R).total


def test_lora_flops_match_torch_counter():
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode

    from alignscope.models.scoring import score_batch

    torch.set_num_threads(1)
    model, arch = _tiny_llama()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    counter = FlopCounterMode(display=False)
    with counter:
        out = score_batch(model, [list(range(1, P + 1))] * 2, [list(range(5, 5 + C)), list(range(7, 7 + R))], pad_id=0)
        out.logps.sum().backward()
    expected = S.train_flops(arch, S.forward_flops(arch, P + C + R, C + R, 0), P + C + R, S.Lora(r=4))
    assert _matmul_flops(counter) == expected.total


def test_generation_flops_match_torch_counter():
    """alignscope's `generate` prefills each (left-padded) prompt once, copies its cache to its n samples and runs G - 1
    decode steps per sample, with logits at the prompt's last position and at each decode step."""
    from torch.utils.flop_counter import FlopCounterMode

    from alignscope.models.tiny import tiny_llama, train_bpe_tokenizer
    from alignscope.rollout.generation import GenerationConfig, generate

    torch.set_num_threads(1)
    tok = train_bpe_tokenizer(["the quick brown fox jumps over the lazy dog", "hello world again and again"] * 20,
                              vocab_size=300, chat_template=False)
    model = tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=4)
    model.config._attn_implementation = "sdpa"
    counter = FlopCounterMode(display=False)
    with counter:
        ro = generate(model, tok, ["the quick brown fox", "hello world again and again the lazy dog"],
                      GenerationConfig(max_new_tokens=6, n=3, seed=0), batch_size=64)
    width = max(map(len, ro.prompt_ids))  # one batch: every prompt padded to the longest
    steps = max(map(len, ro.response_ids))  # the batch runs until its longest sample stops
    arch = S.Arch("t", 32, 2, 4, 4, 128, len(tok), False)
    w = S.Workload(grpo_prompts=2, grpo_samples=3, grpo_new_tokens=steps, gen_batch=6)
    gen = S.grpo_flops(arch, S.PromptStats(2, 0, 0, 2, width, width * width), w)["generation"]
    assert _matmul_flops(counter) == gen.linear + gen.head


@pytest.mark.parametrize("kind", ["full", "checkpointing", "lora", "lora+checkpointing"])
def test_activation_bytes_match_autograd(kind):
    """The bytes autograd keeps for the backward of alignscope's packed scoring (bf16 tiny Llama, CPU), counted with
    saved-tensor hooks (each storage once, parameters left out), against the script's formula."""
    from alignscope.models.loading import set_activation_checkpointing
    from alignscope.models.scoring import score_batch

    torch.set_num_threads(1)
    model, arch = _tiny_llama(torch.bfloat16)
    lora = None
    if "checkpointing" in kind:
        set_activation_checkpointing(model, True)  # what train and train_rl call (before add_lora)
    if "lora" in kind:
        peft = pytest.importorskip("peft")
        lora = S.Lora(r=4)
        model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(lora.targets)))
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            kept[s.data_ptr()] = s.nbytes()
        return t

    p, c, r = 40, 90, 70
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        score_batch(model, [list(range(1, p + 1))] * 2, [list(range(5, 5 + c)), list(range(7, 7 + r))], pad_id=0)
    predicted = S.activation_bytes(arch, S.pair_batch(S.pair_stats([p], [c], [r]), 1), "checkpointing" in kind, lora)["saved"]
    assert abs(sum(kept.values()) - predicted) <= 64, (sum(kept.values()), predicted)  # a few bookkeeping tensors


def test_printout_runs_fast_and_writes_block(tmp_path):
    doc = tmp_path / "scale.md"
    doc.write_text(f"# Scale\n\nprose before\n\n{S.BEGIN}\nOLD-BLOCK\n{S.END}\n\nprose after\n")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, str(BENCH / "scale_projection.py")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.perf_counter() - t < 10
    for title in ("Memory per GPU: DPO", "Memory per GPU: one GRPO step", "FLOPs", "Projected time on H100", "Projected time on A100"):
        assert title in proc.stdout
    assert all(name in proc.stdout for name in ("Llama-3.2-1B", "Llama-3.1-8B", "Llama-3.1-70B"))
    assert S.main(["--out", str(doc)]) == 0
    text = doc.read_text()
    assert "prose before" in text and "prose after" in text and "OLD-BLOCK" not in text
    assert text.split(S.BEGIN)[1].split(S.END)[0].strip() == proc.stdout.strip()
