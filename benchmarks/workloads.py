"""The benchmark workloads: one synthetic dataset, one Llama-style model, and one function per measurement.

Every measurement runs in its own process (see run.py), loads the same saved model and data, and
times only the work a user waits for: building the trainer (tokenization included), the
reference pass, the epoch, and saving the final model. Imports and loading the model are outside
the timed region, identically for both tools.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Torch threads per run, set by run.py (`--threads`, default 1) for every worker through this variable. One
# thread gives wall == CPU time and steady ratios: on a 2-core machine with any other load two threads
# spin-wait on each other and one run can take 10x another (measured). `--threads auto` uses every core
# when the machine is quiet.
THREADS = int(os.environ.get("ALIGNSCOPE_BENCH_THREADS", "1"))
PAIRS_LIMIT: int | None = None  # set by run_job: use only the first N pairs


@dataclass(frozen=True)
class Scale:
    """A workload definition: model shape and data shape."""

    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    n_pairs: int
    prompt_words: int
    response_words: int
    batch_size: int = 8
    lr: float = 1e-5
    beta: float = 0.1
    gen_prompts: int = 64
    gen_new_tokens: int = 64
    gen_n: int = 8  # the generation row at n samples per prompt: n, and its prompts (gen_new_tokens each)
    gen_n_prompts: int = 16
    rl_prompts: int = 8  # the RL row: prompts per step (all of them, every step), samples each, completion length, steps
    rl_samples: int = 8
    rl_new_tokens: int = 64
    rl_steps: int = 1


SCALES = {
    "8m": Scale("8m", 8192, 256, 5, 4, 768, 512, 32, 64),
    "30m": Scale("30m", 8192, 512, 7, 8, 1408, 512, 32, 64),
    "long": Scale("long", 8192, 256, 5, 4, 768, 512, 32, 512),
    "quick": Scale("quick", 1024, 64, 2, 4, 256, 32, 12, 16, gen_prompts=8, gen_new_tokens=16, gen_n_prompts=2,
                   rl_prompts=2, rl_samples=4, rl_new_tokens=8),
}

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu", "he", "ji", "bo", "fa", "we", "yu", "xi", "qo"]


def _lexicon(rng: random.Random, n: int) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))))
    return sorted(words)


def _sentence(rng: random.Random, lexicon: list[str], n_words: int) -> str:
    # Zipf-like word frequencies, so BPE learns whole frequent words and splits rare ones.
    k = len(lexicon)
    return " ".join(lexicon[min(int(rng.paretovariate(0.8)) - 1, k - 1)] if rng.random() < 0.7 else rng.choice(lexicon) for _ in range(n_words))


def synthetic_pairs(scale: Scale, seed: int = 0) -> list[dict[str, str]]:
    """Prompts of ~`prompt_words` words; chosen/rejected of 75-125% of `response_words`, sharing a prefix."""
    rng = random.Random(seed)
    lexicon = _lexicon(rng, 6000)
    rows = []
    for i in range(scale.n_pairs):
        prompt = f"Question {i}: " + _sentence(rng, lexicon, scale.prompt_words - 3) + " ?"
        n_c = rng.randint(scale.response_words * 3 // 4, scale.response_words * 5 // 4)
        n_r = rng.randint(scale.response_words * 3 // 4, scale.response_words * 5 // 4)
        chosen = _sentence(rng, lexicon, n_c)
        shared = chosen.split()[: rng.randint(0, n_r // 2)]
        rejected = " ".join(shared + _sentence(rng, lexicon, n_r - len(shared)).split())
        rows.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
    return rows


def build_assets(scale: Scale, root: Path, log=print) -> Path:
    """Tokenizer, model and data for `scale` under root/scale.name (built once, reused by every run)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignscope.models.tiny import train_bpe_tokenizer

    out = root / scale.name
    if (out / "meta.json").exists():
        return out
    tmp = root / f".{scale.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows = synthetic_pairs(scale)
    texts = [t for r in rows for t in (r["prompt"], r["chosen"], r["rejected"])]
    tok = train_bpe_tokenizer(texts, vocab_size=scale.vocab_size, chat_template=False)
    config = LlamaConfig(
        vocab_size=scale.vocab_size, hidden_size=scale.hidden_size, intermediate_size=scale.intermediate_size,
        num_hidden_layers=scale.num_layers, num_attention_heads=scale.num_heads, num_key_value_heads=scale.num_heads,
        max_position_embeddings=2048, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    with open(tmp / "pairs.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    p = [len(tok(r["prompt"])["input_ids"]) for r in rows]
    c = [len(tok(r["prompt"] + r["chosen"])["input_ids"]) - pp + 1 for r, pp in zip(rows, p)]  # + EOS
    j = [len(tok(r["prompt"] + r["rejected"])["input_ids"]) - pp + 1 for r, pp in zip(rows, p)]
    n_params = sum(x.numel() for x in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    meta = {
        "scale": asdict(scale), "params": n_params, "params_no_embedding": n_params - n_embed,
        "prompt_tokens": sum(p), "chosen_tokens": sum(c), "rejected_tokens": sum(j),
        "mean_prompt_tokens": sum(p) / len(p), "mean_response_tokens": (sum(c) + sum(j)) / (2 * len(c)),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log(f"built {scale.name}: {n_params / 1e6:.2f}M parameters, prompts {meta['mean_prompt_tokens']:.1f} tokens, "
        f"responses {meta['mean_response_tokens']:.1f} tokens")
    return out


def _load(assets: Path, kind: str = "causal"):
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    tok = AutoTokenizer.from_pretrained(assets / "model")
    if kind == "seqcls":
        model = AutoModelForSequenceClassification.from_pretrained(assets / "model", num_labels=1)
    else:
        model = AutoModelForCausalLM.from_pretrained(assets / "model")
    rows = [json.loads(line) for line in open(assets / "pairs.jsonl")]
    return model, tok, rows[:PAIRS_LIMIT]


class Timer:
    """Wall-clock and process CPU seconds of a block. On a shared machine CPU seconds are the steadier figure."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.result = {"wall_s": time.perf_counter() - self.wall, "cpu_s": time.process_time() - self.cpu}


def _pairs(rows):
    from alignscope.data.records import PairExample

    return [PairExample(r["prompt"], r["chosen"], r["rejected"]) for r in rows]


# --- alignscope


def alignscope_train(method: str, assets: Path, scale: Scale, work: Path) -> dict:
    # `train` imports accelerate and transformers' schedulers on its first call; TRL's side imports them
    # (through `trl`) before its timer, so they are imported here too rather than timed on one side only.
    import accelerate  # noqa: F401
    import transformers.optimization  # noqa: F401

    from alignscope.models.reward_model import RewardModel  # noqa: F401
    from alignscope.training.config import TrainConfig
    from alignscope.training.loop import train

    model, tok, rows = _load(assets)
    cfg = TrainConfig(
        method=method, model=str(assets / "model"), output_dir=str(work / "out"), ref_cache_dir=str(work / "ref"),
        batch_size=scale.batch_size, lr=scale.lr, beta=scale.beta, epochs=1, max_length=2048, max_prompt_length=None,
        logging_steps=10, progress=False, data="in-memory",
    )
    pairs = _pairs(rows)
    with Timer() as t:
        train(cfg, train_examples=pairs, model=model, tokenizer=tok, log=lambda *a, **k: None)
    return t.result


def alignscope_audit(assets: Path, scale: Scale, work: Path) -> dict:
    from alignscope.audits.data import audit_pairs

    model, tok, rows = _load(assets)
    pairs = _pairs(rows)
    with Timer() as t:
        audit_pairs(model, tok, pairs, batch_size=16, max_length=None, max_prompt_length=None, progress=False)
    return t.result


def plain_forward(assets: Path, scale: Scale, work: Path) -> dict:
    """The baseline the CHES audit is held to: model(**batch) over every prompt+response, batch 16, no grad."""
    model, tok, rows = _load(assets)
    texts = [r["prompt"] + resp + tok.eos_token for r in rows for resp in (r["chosen"], r["rejected"])]
    model.eval()
    with Timer() as t, torch.no_grad():
        for s in range(0, len(texts), 16):
            batch = tok(texts[s : s + 16], return_tensors="pt", padding=True)
            model(**batch)
    return t.result


def _first_prompts(rows, k: int) -> list[str]:
    """The prompts of the first k pairs: what a sampling row samples from."""
    return [r["prompt"] for r in rows[:k]]


def _sampled_tokens(new: torch.Tensor, eos: int) -> int:
    """Tokens Hugging Face `generate` sampled in `new` [rows, steps]: each row up to and including its first EOS."""
    return sum(row.index(eos) + 1 if eos in row else len(row) for row in new.tolist())


def alignscope_generate(assets: Path, scale: Scale, work: Path) -> dict:
    from alignscope.rollout.generation import GenerationConfig, generate

    model, tok, rows = _load(assets)
    cfg = GenerationConfig(max_new_tokens=scale.gen_new_tokens, temperature=1.0, top_p=1.0, seed=0)
    with Timer() as t:
        out = generate(model, tok, _first_prompts(rows, scale.gen_prompts), cfg, batch_size=32)
    return {**t.result, "gen_tokens": sum(len(r) for r in out.response_ids)}


def hf_generate(assets: Path, scale: Scale, work: Path) -> dict:
    """Plain Hugging Face sampling with the same settings: batch 32, left padding, KV cache."""
    model, tok, rows = _load(assets)
    tok.padding_side = "left"
    prompts = _first_prompts(rows, scale.gen_prompts)
    model.eval()
    n_tokens = 0
    torch.manual_seed(0)
    with Timer() as t, torch.no_grad():
        for s in range(0, len(prompts), 32):
            batch = tok(prompts[s : s + 32], return_tensors="pt", padding=True)
            out = model.generate(**batch, max_new_tokens=scale.gen_new_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, use_cache=True)
            n_tokens += _sampled_tokens(out[:, batch["input_ids"].shape[1] :], tok.eos_token_id)
    return {**t.result, "gen_tokens": n_tokens}


GEN_N_BATCH = 64  # samples per batch in the generation row at n: 64 // n prompts (alignscope's default batch_size)


def alignscope_generate_n(assets: Path, scale: Scale, work: Path) -> dict:
    """`gen_n` samples of each prompt: each prompt's prefill once, its KV cache shared by its samples."""
    from alignscope.rollout.generation import GenerationConfig, generate

    model, tok, rows = _load(assets)
    cfg = GenerationConfig(max_new_tokens=scale.gen_new_tokens, temperature=1.0, top_p=1.0, n=scale.gen_n, seed=0)
    with Timer() as t:
        out = generate(model, tok, _first_prompts(rows, scale.gen_n_prompts), cfg, batch_size=GEN_N_BATCH)
    return {**t.result, "gen_tokens": sum(len(r) for r in out.response_ids)}


def hf_generate_n(assets: Path, scale: Scale, work: Path) -> dict:
    """Hugging Face's n samples per prompt: `num_return_sequences`, the same prompts per batch, left padding, KV cache."""
    model, tok, rows = _load(assets)
    tok.padding_side = "left"
    prompts, per = _first_prompts(rows, scale.gen_n_prompts), GEN_N_BATCH // scale.gen_n
    model.eval()
    n_tokens = 0
    torch.manual_seed(0)
    with Timer() as t, torch.no_grad():
        for s in range(0, len(prompts), per):
            batch = tok(prompts[s : s + per], return_tensors="pt", padding=True)
            out = model.generate(**batch, num_return_sequences=scale.gen_n, max_new_tokens=scale.gen_new_tokens, do_sample=True,
                                 temperature=1.0, top_p=1.0, top_k=0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                 use_cache=True)
            n_tokens += _sampled_tokens(out[:, batch["input_ids"].shape[1] :], tok.eos_token_id)
    return {**t.result, "gen_tokens": n_tokens}


RL_BETA = 0.04  # the KL weight on both sides of the RL row: TRL then builds and runs a reference model, as alignscope does


def characters(prompts, completions, **kwargs) -> list[float]:
    """The RL row's reward on both sides (TRL passes extra keywords): a completion's length in characters, over 100.
    Cheap, so the row times the trainers, and it differs between the samples of a prompt, so no group is flat."""
    return [len(c) / 100 for c in completions]


def _rl_result(timed: dict, assets: Path, scale: Scale, steps: int, mean_lengths: float) -> dict:
    """An RL measurement: its times, optimizer steps, sampled tokens, and rollout tokens (each prompt once per group,
    then its samples) from the sum over steps of the mean completion length."""
    sampled = round(mean_lengths * scale.rl_prompts * scale.rl_samples)
    rows = [json.loads(line) for line in open(assets / "pairs.jsonl")]
    prompts = steps * sum(prompt_lengths(assets, _first_prompts(rows, scale.rl_prompts)))
    return {**timed, "steps": steps, "gen_tokens": sampled, "rollout_tokens": prompts + sampled}


def alignscope_grpo(assets: Path, scale: Scale, work: Path) -> dict:
    """`rl_steps` GRPO steps of `train_rl`: sampling (Hugging Face engine), reward, reference pass, one optimizer step each."""
    import accelerate  # noqa: F401 (TRL's side imports it before its timer; train_rl imports it on its first call)

    from alignscope.training.rl import RLConfig, train_rl

    model, tok, rows = _load(assets)
    cfg = RLConfig(algorithm="grpo", model=str(assets / "model"), output_dir=str(work / "out"), steps=scale.rl_steps,
                   prompts_per_step=scale.rl_prompts, samples_per_prompt=scale.rl_samples, max_new_tokens=scale.rl_new_tokens,
                   temperature=1.0, top_p=1.0, lr=scale.lr, kl_coef=RL_BETA, loss_type="dapo", progress=False, seed=0)
    with Timer() as t:
        train_rl(cfg, model=model, tokenizer=tok, prompts=_first_prompts(rows, scale.rl_prompts), reward=characters, log=lambda *a, **k: None)
    logged = [json.loads(line) for line in open(work / "out" / "metrics.jsonl")]
    return _rl_result(t.result, assets, scale, len(logged), sum(r["response_length"] for r in logged))


# --- TRL


def _trl_common(scale: Scale, work: Path) -> dict:
    # What TRL needs on a CPU to be compared fairly: fp32, no gradient checkpointing, no reporting.
    return dict(
        output_dir=str(work / "out"), per_device_train_batch_size=scale.batch_size, learning_rate=scale.lr, num_train_epochs=1,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=10, save_strategy="no",
        report_to="none", bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False, disable_tqdm=True, seed=0,
        dataloader_num_workers=0,
    )


def trl_dpo(assets: Path, scale: Scale, work: Path, precompute: bool) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tok, rows = _load(assets)
    ref = None if precompute else _load(assets)[0]
    args = DPOConfig(**_trl_common(scale, work), beta=scale.beta, max_length=2048, precompute_ref_log_probs=precompute,
                     loss_type=["sigmoid"])
    with Timer() as t:
        trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
        trainer.train()
        trainer.save_model(str(work / "final"))
    return t.result


def trl_reward(assets: Path, scale: Scale, work: Path) -> dict:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    model, tok, rows = _load(assets, "seqcls")
    model.config.pad_token_id = tok.pad_token_id
    args = RewardConfig(**_trl_common(scale, work), max_length=2048)
    data = Dataset.from_list(rows)
    with Timer() as t:
        trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
        trainer.train()
        trainer.save_model(str(work / "final"))
    return t.result


def trl_sft(assets: Path, scale: Scale, work: Path) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tok, rows = _load(assets)
    data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows])
    args = SFTConfig(**_trl_common(scale, work), max_length=2048, completion_only_loss=True, packing=False)
    with Timer() as t:
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
        trainer.train()
        trainer.save_model(str(work / "final"))
    return t.result


def trl_grpo(assets: Path, scale: Scale, work: Path) -> dict:
    """TRL's GRPOTrainer on the same model, prompts, reward, group size, completion length and KL weight, sampling with
    Hugging Face `generate`; a batch is one step's rl_prompts x rl_samples completions, so the optimizer steps match."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, tok, rows = _load(assets)
    group = scale.rl_prompts * scale.rl_samples
    common = {**_trl_common(scale, work), "per_device_train_batch_size": group, "logging_steps": 1}
    args = GRPOConfig(**common, max_steps=scale.rl_steps, num_generations=scale.rl_samples, max_completion_length=scale.rl_new_tokens,
                      temperature=1.0, top_p=1.0, beta=RL_BETA, loss_type="dapo", scale_rewards="group")
    data = Dataset.from_list([{"prompt": p} for p in _first_prompts(rows, scale.rl_prompts)])
    with Timer() as t:
        trainer = GRPOTrainer(model=model, reward_funcs=characters, args=args, train_dataset=data, processing_class=tok)
        trainer.train()
        trainer.save_model(str(work / "final"))
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return _rl_result(t.result, assets, scale, trainer.state.global_step, sum(lengths))


JOBS = {
    ("dpo", "alignscope"): lambda a, s, w: alignscope_train("dpo", a, s, w),
    ("dpo", "trl"): lambda a, s, w: trl_dpo(a, s, w, precompute=False),
    ("dpo_pre", "trl"): lambda a, s, w: trl_dpo(a, s, w, precompute=True),
    ("rm", "alignscope"): lambda a, s, w: alignscope_train("rm", a, s, w),
    ("rm", "trl"): trl_reward,
    ("sft", "alignscope"): lambda a, s, w: alignscope_train("sft", a, s, w),
    ("sft", "trl"): trl_sft,
    ("ches", "alignscope"): alignscope_audit,
    ("ches", "forward"): plain_forward,
    ("gen", "alignscope"): alignscope_generate,
    ("gen", "hf"): hf_generate,
    ("gen_n", "alignscope"): alignscope_generate_n,
    ("gen_n", "hf"): hf_generate_n,
    ("rl", "alignscope"): alignscope_grpo,
    ("rl", "trl"): trl_grpo,
}


def run_job(task: str, tool: str, scale_name: str, root: Path, pairs: int | None = None) -> dict:
    """One measurement in this (fresh) process; returns wall time, CPU time, peak RSS and the work done."""
    global PAIRS_LIMIT
    PAIRS_LIMIT = pairs
    torch.set_num_threads(THREADS)
    scale = SCALES[scale_name]
    assets = root / scale_name
    work = Path(tempfile.mkdtemp(prefix=f"bench-{task}-{tool}-"))
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf_datasets")  # a fresh datasets cache per run
    try:
        res = JOBS[(task, tool)](assets, scale, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


RATES_GFLOPS: list[float] = []  # every matmul speed this process measured (the peak takes their best)


def _mm_seconds(m: int, k: int, n: int, transpose_a: bool = False, trials: int = 5, batch: int = 1) -> float:
    """Seconds of one [m, k] x [k, n] fp32 matmul: the best of `trials` runs of `batch` back-to-back matmuls, after a
    warm-up (A as a transposed view when `transpose_a`, as in dW = dY^T X). Its speed is kept in RATES_GFLOPS."""
    a = torch.randn(k, m).t() if transpose_a else torch.randn(m, k)
    b = torch.randn(k, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(batch):
            a @ b
        best = min(best, time.perf_counter() - t)
    RATES_GFLOPS.append(2 * m * k * n / (best / batch) / 1e9)
    return best / batch


def matmul_peak_gflops(n: int = 2048, reps: int = 4, trials: int = 5) -> float:
    """The machine's fp32 matmul throughput with THREADS threads, the MFU denominator: the best of `trials` runs of an
    n x n x n matmul and of every speed measured so far (the matmul floor's own shapes included).

    One sample on a shared machine catches whatever else was running: a fresh clone once measured 35.6 GFLOP/s
    (93 in an earlier run) and printed an MFU of 121.9%. Called again at the end of a run, so quiet moments count.
    """
    torch.set_num_threads(THREADS)
    _mm_seconds(n, n, n, trials=trials, batch=reps)
    return max(RATES_GFLOPS)


def _linear_seconds(m: int, d_in: int, d_out: int, backward: bool = True) -> tuple[float, float]:
    """(forward, backward) seconds of a bias-free linear layer on m rows: Y = X W^T; dX = dY W, dW = dY^T X."""
    fwd = _mm_seconds(m, d_in, d_out)
    return fwd, (_mm_seconds(m, d_out, d_in) + _mm_seconds(d_out, m, d_in, transpose_a=True)) if backward else 0.0


def _stack_seconds(scale: Scale, m: int, backward: bool = True) -> tuple[float, float]:
    """(forward, backward) seconds per token of the layer stack's matmuls when each runs on m rows: q, k, v, o (no
    grouped-query attention here), gate, up, down."""
    d, ff = scale.hidden_size, scale.intermediate_size
    f = b = 0.0
    for d_in, d_out in [(d, d)] * 4 + [(d, ff), (d, ff), (ff, d)]:
        lf, lb = _linear_seconds(m, d_in, d_out, backward)
        f, b = f + lf, b + lb
    return f * scale.num_layers / m, b * scale.num_layers / m


def _head_seconds(scale: Scale, m: int, backward: bool = True) -> tuple[float, float]:
    """(forward, backward) seconds per row of the unembedding on m rows."""
    return tuple(t / m for t in _linear_seconds(m, scale.hidden_size, scale.vocab_size, backward))


def _body_params(scale: Scale) -> int:
    d, ff = scale.hidden_size, scale.intermediate_size
    return scale.num_layers * (4 * d * d + 3 * d * ff)


def matmul_floor(scale: Scale, meta: dict, n_pairs: int) -> dict[str, tuple[float, float]]:
    """task -> (FLOPs, seconds) of the matmuls alignscope's own exact computation needs, at this machine's speed
    for the very shapes it runs (THREADS threads).

    The work counted is what alignscope does: each prompt once per pair, no padding, the unembedding only at
    response positions, one reference pass (DPO). Attention scores, normalisation, activations, the optimizer,
    tokenization and saving are left out, so no exact implementation of the same arithmetic can run faster:
    the other tool's time divided by this floor is the largest speed-up any exact fast path could show.
    """
    from alignscope.models.scoring import default_chunk_tokens

    torch.set_num_threads(THREADS)
    frac = n_pairs / meta["scale"]["n_pairs"]
    p, c, r = (meta[k] * frac for k in ("prompt_tokens", "chosen_tokens", "rejected_tokens"))
    d, v = scale.hidden_size, scale.vocab_size
    rows = max(1, round((p + c + r) / max(n_pairs, 1) * scale.batch_size))  # tokens in one packed batch
    body_f, body_b = _stack_seconds(scale, rows)
    head_f, head_b = _head_seconds(scale, default_chunk_tokens(v))  # the unembedding runs in chunks of this many rows
    n_body = _body_params(scale)
    tokens, resp = p + c + r, c + r
    work = {  # task -> (tokens through the layer stack fwd+bwd, fwd only; response tokens through the head fwd+bwd, fwd only)
        "dpo": (tokens, tokens, resp, resp),
        "rm": (tokens, 0.0, 0.0, 0.0),
        "sft": (p + c, 0.0, c, 0.0),
        "ches": (0.0, tokens, 0.0, resp),
    }
    out = {}
    for task, (tb, tf, hb, hf) in work.items():
        flop = 6 * n_body * tb + 2 * n_body * tf + 6 * d * v * hb + 2 * d * v * hf
        secs = tb * (body_f + body_b) + tf * body_f + hb * (head_f + head_b) + hf * head_f
        out[task] = (flop, secs)
    return out


def prompt_lengths(assets: Path, prompts: list[str]) -> list[int]:
    """Prompt tokens as alignscope's sampler encodes them."""
    from transformers import AutoTokenizer

    from alignscope.rollout.generation import encode_prompts

    return [len(ids) for ids in encode_prompts(AutoTokenizer.from_pretrained(assets / "model"), prompts)]


def _sampling_work(scale: Scale, lengths: list[int], n: int, sampled: float) -> tuple[float, float]:
    """(FLOPs, seconds) of the matmuls of alignscope's sampling: each batch of 64 // n prompts prefilled once (left-padded
    to its longest, logits at its last position), then one token per live sample per decode step, `sampled` tokens in all.

    Decode matmuls are timed at a full batch's rows, the fastest they run, so finished rows leaving only adds time.
    """
    per = max(1, 64 // n)
    batches = [lengths[s : s + per] for s in range(0, len(lengths), per)]
    prefill = sum(len(b) * max(b) for b in batches)
    decode = sampled - n * len(lengths)  # every sample's last token is drawn, never fed back
    d, v, n_body = scale.hidden_size, scale.vocab_size, _body_params(scale)
    pre_f, _ = _stack_seconds(scale, round(prefill / len(batches)), backward=False)
    dec_f, _ = _stack_seconds(scale, per * n, backward=False)
    head_pre, _ = _head_seconds(scale, per, backward=False)
    head_dec, _ = _head_seconds(scale, per * n, backward=False)
    flop = 2 * n_body * (prefill + decode) + 2 * d * v * (len(lengths) + decode)
    return flop, prefill * pre_f + decode * dec_f + len(lengths) * head_pre + decode * head_dec


def sampling_floor(scale: Scale, assets: Path, sampled: dict[str, float]) -> dict[str, tuple[float, float]]:
    """The matmul floor (as `matmul_floor`) of the rows that sample, from `sampled`: the tokens alignscope's side drew
    (gen_n: in all; rl: per step).

    gen_n: `_sampling_work`. rl, per step: the sampling, then the rollout (each group one packed row: its prompt
    once and its samples) through the policy forward and backward and the reference forward, the unembedding at
    the sampled tokens.
    """
    from alignscope.models.scoring import default_chunk_tokens

    torch.set_num_threads(THREADS)
    rows = [json.loads(line) for line in open(assets / "pairs.jsonl")]
    out = {}
    if "gen_n" in sampled:
        out["gen_n"] = _sampling_work(scale, prompt_lengths(assets, _first_prompts(rows, scale.gen_n_prompts)), scale.gen_n, sampled["gen_n"])
    if "rl" in sampled:
        lengths, resp = prompt_lengths(assets, _first_prompts(rows, scale.rl_prompts)), sampled["rl"]
        gen_flop, gen_secs = _sampling_work(scale, lengths, scale.rl_samples, resp)
        tokens = sum(lengths) + resp
        d, v, n_body = scale.hidden_size, scale.vocab_size, _body_params(scale)
        body_f, body_b = _stack_seconds(scale, round(tokens))
        head_f, head_b = _head_seconds(scale, default_chunk_tokens(v))
        flop = gen_flop + (6 + 2) * n_body * tokens + (6 + 2) * d * v * resp
        secs = gen_secs + tokens * (2 * body_f + body_b) + resp * (2 * head_f + head_b)
        out["rl"] = (flop * scale.rl_steps, secs * scale.rl_steps)
    return out
