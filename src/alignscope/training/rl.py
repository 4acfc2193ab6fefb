"""On-policy RL from reward sources: REINFORCE, RLOO, GRPO, Dr. GRPO and PPO, with KL control, and online DPO.

One loop, read top to bottom: sample n responses per prompt -> the weighted sum of the rewards
(each logged) -> per-prompt reward variance (the flat-objective pitfall) -> optional dynamic
sampling that drops low-variance groups -> reward transform and overlong penalty -> advantages
(the algorithm) -> num_iterations passes of steps_per_generation mini-batches, each the clipped
surrogate with the KL term aggregated by `loss_type` (TRL's names) -> step. Online DPO takes the same
path with two samples per prompt: the higher-scored one is chosen, the loss is DPO's against the
reference, and each update's effect on the pairs it trained on is the displacement monitor. Metrics each step
include every reward, gold reward, KL, entropy, lengths and reward-variance statistics, and the
reward-hacking alarms read them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from alignscope import run_files as rf
from alignscope.atomic import write_text
from alignscope.data.records import prompt_text
from alignscope.diagnostics.overoptimization import fit_rl, gold_peak, sqrt_kl
from alignscope.diagnostics.reward_hacking import HackingMonitor
from alignscope.diagnostics.variance import per_prompt_variance
from alignscope.diagnostics.warnings import (
    Pitfall,
    detect_displacement,
    detect_flat_objective,
    detect_overoptimization,
)
from alignscope.errors import ConfigError, DataError, TrainingError
from alignscope.diagnostics.displacement import displacement_stats
from alignscope.losses import policy_gradient as pg
from alignscope.losses.preference import preference_loss
from alignscope.models.device import Placement, load_placed, use_device
from alignscope.models.fsdp import shards_model
from alignscope.models.loading import set_activation_checkpointing
from alignscope.models.scoring import Scorer, body_and_head, pad_token_id, score_batch
from alignscope.rewards.sources import load_reward_source
from alignscope.rewards.transforms import RewardTransform, overlong_penalty
from alignscope.rewards.weighted import RewardTerm, WeightedRewards
from alignscope.rollout.generation import GenerationConfig, generate
from alignscope.rollout.vllm import VLLMGenerator
from alignscope.training import checkpoint as ckpt
from alignscope.training.config import ALGORITHMS, RewardSpec, RLConfig  # noqa: F401 (re-exported: alignscope.training.rl.RLConfig)
from alignscope.training.lora import add_lora, save_adapter_and_merge
from alignscope.training.metrics import MetricsLogger
from alignscope.training.run_dir import owns_output_dir
from alignscope.training.sharding import full_state, load_full_state, whole_policy
from alignscope.training.zero import (deepspeed_backward, deepspeed_launch, deepspeed_state, load_deepspeed_state, unpartitioned_loading,
                                      whole_engine)


def group_variance(rewards: torch.Tensor) -> torch.Tensor:
    """Per-prompt reward variance of a [P, n] group: the diagnostics estimator (unbiased), as a tensor.
    One sample per prompt (REINFORCE or PPO with n = 1) has no variance to measure: NaN."""
    if rewards.shape[1] < 2:
        return torch.full((rewards.shape[0],), float("nan"))
    return torch.as_tensor(per_prompt_variance(rewards), dtype=torch.float32)


def compute_advantages(
    cfg: RLConfig, scores: torch.Tensor, mask: torch.Tensor, kl_tok: torch.Tensor, kl_coef: float, values: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Advantages of one rollout batch: [B] per sequence for the group methods, [B, T] by GAE for PPO.

    `scores` is [P, n]; with kl_mode=reward the per-token KL estimate `kl_tok` is charged in the
    reward (`kl_penalised_rewards` per token for PPO, `kl_penalised_scores` per sequence otherwise).
    PPO advantages are whitened over valid tokens; PPO also returns the value targets.
    """
    flat = scores.reshape(-1)
    coef = kl_coef if cfg.kl_mode == "reward" else 0.0
    if cfg.algorithm == "ppo":
        token_rewards = pg.kl_penalised_rewards(flat, kl_tok, mask, coef)
        adv, returns = pg.gae(token_rewards, values, mask, gamma=1.0, lam=cfg.gae_lambda)
        valid = adv[mask]
        if valid.numel() > 1:
            adv = (adv - valid.mean()) / (valid.std() + 1e-8) * mask
        return adv, returns
    grouped = pg.kl_penalised_scores(flat, kl_tok, mask, coef).view(-1, cfg.samples_per_prompt)
    if cfg.algorithm == "rloo":
        return pg.rloo_advantages(grouped).reshape(-1), None
    if cfg.algorithm == "grpo":
        return pg.grpo_advantages(grouped, scale=cfg.scale_rewards or "group").reshape(-1), None
    if cfg.algorithm == "dr_grpo":
        return pg.dr_grpo_advantages(grouped).reshape(-1), None
    return pg.reinforce_advantages(grouped, baseline="mean").reshape(-1), None


def online_dpo_metrics(beta: float, logps: torch.Tensor, ref_logps: torch.Tensor, chosen: torch.Tensor, after: torch.Tensor) -> dict[str, float]:
    """One online-DPO step's metrics over its pairs, under TRL's OnlineDPOTrainer names, plus the displacement
    monitor: how the update moved log pi of the chosen and rejected samples it was just trained on.

    `logps` are the sampling policy's sequence log-probs, `after` the updated policy's, `chosen` marks each
    pair's chosen row (rows 2j and 2j+1 are pair j)."""
    chosen = chosen.bool()
    c, r = (logps - ref_logps)[chosen] * beta, (logps - ref_logps)[~chosen] * beta
    moved = displacement_stats(logps[chosen].tolist(), after[chosen].tolist(), logps[~chosen].tolist(), after[~chosen].tolist())
    return {"rewards/chosen": float(c.mean()), "rewards/rejected": float(r.mean()), "rewards/margins": float((c - r).mean()),
            "rewards/accuracies": float((c > r).float().mean()), "logps/chosen": float(logps[chosen].mean()),
            "logps/rejected": float(logps[~chosen].mean()), "displacement/mean_chosen_change": moved["mean_chosen_change"],
            "displacement/mean_rejected_change": moved["mean_rejected_change"],
            "displacement/fraction_chosen_fell": moved["fraction_chosen_fell"]}


def online_displacement(rows: list[dict], steps: int, fired: bool) -> list[Pitfall]:
    """Likelihood displacement in online DPO: over the last quarter of the run (at least 5 steps), the updates
    lowered the chosen samples' log-prob on average, or for most pairs. One step's effect on the pairs it
    trained on is the quantity CHES predicts (Razin et al. 2024); a window keeps one noisy step from firing."""
    window = max(5, steps // 4)
    if fired or len(rows) < window:
        return []
    last = rows[-window:]
    mean = sum(r["displacement/mean_chosen_change"] for r in last) / window
    fell = sum(r["displacement/fraction_chosen_fell"] for r in last) / window
    return detect_displacement({"mean_chosen_change": mean, "fraction_chosen_fell": fell}, what=f"trained pairs over the last {window} steps")


def overoptimization_summary(out_dir: Path, logger: MetricsLogger) -> dict | None:
    """Proxy vs gold vs sqrt(KL) over the whole run (resumed parts included): where the gold reward
    peaked, the nearest kept checkpoint, and Gao et al.'s RL form fitted to the gold gain.
    Written to `overoptimization.json`; a detected over-optimisation is logged as a pitfall."""
    path = out_dir / rf.RL_METRICS
    rows = rf.read_jsonl(path) if path.exists() else []
    rows = [r for r in rows if r.get("gold_reward") is not None]
    if len(rows) < 3:
        return None
    steps = [r["step"] for r in rows]
    proxy, gold, kl = ([r[k] for r in rows] for k in ("proxy_reward", "gold_reward", "kl"))
    peak = gold_peak(steps, gold, proxy)
    kept = [int(c.name.rsplit("-", 1)[1]) for c in ckpt.list_checkpoints(out_dir)]
    summary: dict = {"gold_peak": asdict(peak), "checkpoints_kept": kept,
                     "nearest_checkpoint_to_peak": min(kept, key=lambda c: abs(c - peak.peak_step)) if kept else None}
    try:
        fit = fit_rl(sqrt_kl(kl), [g - gold[0] for g in gold])
        summary["gao_fit_rl"] = {**asdict(fit), "d_peak": fit.d_peak if math.isfinite(fit.d_peak) else None}
    except DataError as e:
        summary["gao_fit_rl"] = {"error": str(e)}
    for pitfall in detect_overoptimization(steps, proxy, gold):
        logger.pitfall(steps[-1], pitfall)
    write_text(out_dir / rf.OVEROPTIMIZATION, json.dumps(summary, indent=1))
    return summary


RewardArg = Callable[[list, list[str]], Any] | Mapping[str, Callable[[list, list[str]], Any]]


def build_rewards(cfg: RLConfig, reward: RewardArg | None = None, placement: Placement | None = None) -> WeightedRewards:
    """The run's reward terms: the in-memory `reward` (a callable, or {name: callable}, weight 1 each),
    else the config's `rewards` list, else its single `reward`; reward models on `placement`."""
    if reward is not None:
        if callable(reward):
            terms = [RewardTerm(getattr(reward, "__name__", "reward").strip("<>") or "reward", load_reward_source(reward))]
        else:
            terms = [RewardTerm(name, load_reward_source(fn)) for name, fn in reward.items()]
    elif cfg.rewards:
        terms = [RewardTerm(spec.label, load_reward_source(spec.fn or spec.rm, placement=placement), spec.weight) for spec in cfg.rewards]
    elif cfg.reward:
        terms = [RewardTerm(RewardSpec(fn=cfg.reward).label, load_reward_source(cfg.reward, placement=placement))]
    else:
        raise ConfigError("no reward given", "set reward: module:function, a reward-model folder or lab:gold (or a rewards: list)")
    return WeightedRewards(terms, timeout=cfg.reward_timeout)


def _load_policy(cfg: RLConfig, prompts: list, placement: Placement):
    """(policy, tokenizer) on the run's device and dtype ('tiny': a BPE tokenizer trained on the prompts)."""
    return load_placed(cfg.model, placement, texts=[prompt_text(p) for p in prompts], trust_remote_code=cfg.trust_remote_code,
                       seed=cfg.seed)


def fit_reward_transform(cfg: RLConfig, transform: RewardTransform, reference, tokenizer, prompts: list, rewards: WeightedRewards,
                         log=print) -> RewardTransform:
    """Fix the transform's statistics once, on the initial policy's rewards for `reward_transform_samples`
    prompts (seeded, so a resumed run refits the same numbers), so a response's transformed reward
    never depends on the batch it lands in."""
    if not any(name == "standardize" for name, _ in transform.steps):
        return transform
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(cfg.seed + 1)).tolist()
    chosen = [prompts[i] for i in order[: cfg.reward_transform_samples]]
    ro = generate(reference, tokenizer, chosen, GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                                                  top_p=cfg.top_p, n=cfg.samples_per_prompt, seed=cfg.seed + 2))
    total = rewards([chosen[j] for j in ro.prompt_index], ro.texts)
    transform.fit(total)
    stats = [(arg.mean, arg.std) for name, arg in transform.steps if name == "standardize"]
    log(f"reward transform fitted on {len(total)} rewards of the initial policy: (mean, std) = {stats}")
    return transform


def _logged(out_dir: Path) -> tuple[list[dict], list[str]]:
    """The metric rows and pitfall names a resumed run already logged (files truncated to its checkpoint)."""
    rows = rf.read_jsonl(out_dir / rf.METRICS) if (out_dir / rf.METRICS).exists() else []
    fired = [p["name"] for p in rf.read_jsonl(out_dir / rf.PITFALLS)] if (out_dir / rf.PITFALLS).exists() else []
    return rows, fired


def _pad_to(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    """Right-pad per-sequence rows to [B, width] in float32 (ratios and KL terms of 16-bit log-probs lose too much)."""
    out = rows[0].new_zeros(len(rows), width, dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def evaluate_policy(model, tokenizer, prompts: list, rewards: WeightedRewards, gold: Callable | None, cfg: RLConfig, step: int,
                    engine: VLLMGenerator | None = None) -> dict[str, float]:
    """Held-out rewards of the current policy: the proxy (and each term), the gold reward, and pass@k
    (k = eval_samples: the share of prompts with a sample of reward 1) when every reward is 0 or 1.

    Sampled with its own seed, so evaluating leaves the training run's random state as it was."""
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, n=cfg.eval_samples,
                           do_sample=True, seed=cfg.seed * 1_000_003 + step)
    model.eval()
    ro = generate(model, tokenizer, prompts, gen) if engine is None else engine.generate(prompts, gen, policy=model)
    flat = [prompts[i] for i in ro.prompt_index]
    total, parts = rewards.scores(flat, ro.texts, step=step)
    out = {"eval/proxy_mean": float(total.mean())}
    if len(parts) > 1:
        out.update({f"eval/{name}_mean": float(v.mean()) for name, v in parts.items()})
    if gold is not None:
        out["eval/gold_mean"] = float(torch.as_tensor(gold(flat, ro.texts), dtype=torch.float32).mean())
    if set(total.unique().tolist()) <= {0.0, 1.0}:
        out[f"eval/pass@{cfg.eval_samples}"] = float((total.view(len(prompts), cfg.eval_samples).max(-1).values > 0).float().mean())
    return out


class _Processes:
    """The run's processes as RL needs them: which share of each rollout batch is this one's, and the
    gathers that let every process compute advantages, loss normalisers and metrics over the whole
    batch (so 2 processes take the same step as 1 process with the same global batch)."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.is_main = accelerator.is_main_process

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every process's `t` (equal shapes) concatenated along dim 0, in rank order."""
        return self.accelerator.gather(t.to(self.accelerator.device)) if self.world > 1 else t

    def gather_list(self, items: list) -> list:
        if self.world == 1:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)

    def reduce(self, value: float, op: str) -> float:
        """`value` summed, or its max or min, over the processes."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
        return float(t.item())

    def candidates(self, order: list[int], per_step: int) -> list[int]:
        """This process's prompts of a step, in the order it samples them: its contiguous share of the
        batch, then (dynamic sampling's refills) every world-th prompt after the batch."""
        share = per_step // self.world
        return order[self.rank * share : (self.rank + 1) * share] + order[per_step + self.rank :: self.world]


def rollout_seed(seed: int, step: int, round_: int, first: int) -> int:
    """The sampling seed of one generation call: fixed by the run's seed, the step, the refill round and
    the position of the call's first prompt in the step's batch, so it names the same prompts whichever
    process makes the call."""
    return (((seed * 1_000_003 + step) * 101 + round_) * 1_000_033 + first + 1) % 2**63


def frozen_reference(model: torch.nn.Module, offload: bool = False) -> torch.nn.Module:
    """A frozen copy of the initial policy: the reference of full fine-tuning. It is only ever scored without grad,
    so with `offload` it lives on the CPU and its forward runs there (`score_batch` follows the weights' device),
    leaving one copy of the weights on the accelerator at the price of a slower reference pass."""
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    return ref.to("cpu") if offload else ref


def check_sharding(accelerator, cfg: RLConfig, log: Callable[[str], None] = print) -> bool:
    """Whether the run shards the policy with FSDP v2, after refusing the launches RL cannot take: FSDP v1, and the
    vLLM engine under FSDP or DeepSpeed (it is built from and sent the whole weights, which under FSDP and ZeRO-3 no
    process holds outside the gathers, and no DeepSpeed run of it was built or tested). DeepSpeed's own checks are
    `deepspeed_launch`'s."""
    from accelerate.utils import DistributedType

    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    sharded = not deepspeed and shards_model(accelerator, "train rl", log)
    if (deepspeed or sharded) and cfg.rollout_backend == "vllm":
        kind = "DeepSpeed" if deepspeed else "FSDP"
        raise ConfigError(f"train rl under {kind} samples with its own sampler: rollout_backend: vllm is not supported there "
                          "(the engine is built from and sent the whole weights, which a sharded or partitioned policy does "
                          "not hold outside its gathers)",
                          "drop rollout_backend (or launch with a DDP config, where vllm runs)")
    return sharded


class _PolicyPass(torch.nn.Module):
    """The policy's scoring forward (and PPO's value head) as one module, so accelerate's wrapper (DDP, or FSDP's
    root) sees every forward that a backward follows and averages the gradients across processes."""

    def __init__(self, policy: torch.nn.Module, value_head: torch.nn.Module | None):
        super().__init__()
        self.policy = policy
        self.value = value_head

    @property
    def _no_split_modules(self) -> list[str] | None:
        """The policy's transformer-block classes: FSDP's TRANSFORMER_BASED_WRAP reads them off the prepared module."""
        return getattr(self.policy, "_no_split_modules", None)

    def forward(self, prompt_ids: list, response_ids: list, *, pad_id: int, width: int, entropy: bool, padding_free: bool):
        scorer, head = Scorer(self.policy), body_and_head(self.policy)[1]
        out = score_batch(scorer, prompt_ids, response_ids, pad_id=pad_id, return_token_logps=True,
                          return_token_hidden=self.value is not None or entropy, padding_free=padding_free)
        tok = _pad_to(out.token_logps, width)
        values = _pad_to([self.value(h.float()).squeeze(-1) for h in out.token_hidden], width) if self.value is not None else None
        ent = _pad_to([pg.token_entropy(head(h)) for h in out.token_hidden], width) if entropy else None
        return tok, values, ent


@owns_output_dir
def train_rl(
    cfg: RLConfig, *, resume: bool = False, model=None, tokenizer=None, prompts: list | None = None,
    reward: RewardArg | None = None, gold: Callable | None = None, eval_prompts: list | None = None, log=print,
) -> Path:
    """Run RL. In-memory `model`/`tokenizer`, `prompts`, `eval_prompts`, `reward` (a callable or
    {name: callable}) and `gold` replace the config's specs, which may then be left empty.

    Under `torchrun` / `accelerate launch` each process samples and trains on an equal share of every
    rollout batch; advantages, loss normalisers and metrics are computed over the whole batch, and
    gradients are averaged (DDP; FSDP v2 with the policy sharded and gathered whole for sampling: `whole_policy`;
    DeepSpeed ZeRO-2/3, ZeRO-3 gathering it likewise: `whole_engine`), so the step is the one a single process takes
    on the same batch. Under DeepSpeed the engine steps once per mini-batch, after its last micro-batch, and clips
    at max_grad_norm; checkpoints hold the whole weights and DeepSpeed's own optimizer state, so only the same
    DeepSpeed launch resumes them.

    Flat groups (every sample of a prompt got the same reward) have advantage 0 but keep their KL
    term when dynamic sampling is off: the KL regularises the policy on every prompt it is sampled
    on, and a flat prompt is where the reward cannot notice the drift that other prompts' updates
    cause (docs/rl.md).
    """
    from accelerate import Accelerator

    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.output_dir)

    # --- data, policy, reference, rewards (each can fail on bad input: before the run folder is written)
    if prompts is None:
        if not cfg.prompts:
            raise ConfigError("no prompts given", "set prompts: path/to/prompts.jsonl")
        from alignscope.data.loader import load_data

        prompts = [ex.prompt for ex in load_data(cfg.prompts, format=cfg.format, mapping=cfg.map or None,
                                                   as_chat=cfg.as_chat).examples]
    if not prompts:
        raise DataError("there are no prompts to train on", "give a prompt file with at least one prompt")
    if eval_prompts is None and cfg.eval_prompts:
        from alignscope.data.loader import load_data

        eval_prompts = [ex.prompt for ex in load_data(cfg.eval_prompts, mapping=cfg.map or None, as_chat=cfg.as_chat).examples]
        if not eval_prompts:
            raise DataError(f"eval_prompts {cfg.eval_prompts} holds no prompts", "give a prompt file with at least one prompt, or drop eval_prompts")
    placement = cfg.placement()  # a GPU asked for but absent fails here, before anything is written
    use_device(placement)
    accelerator = Accelerator(cpu=placement.device.type == "cpu", mixed_precision=cfg.mixed_precision)
    procs = _Processes(accelerator)
    sharded = check_sharding(accelerator, cfg, log=log if procs.is_main else lambda *a: None)
    # DeepSpeed's config filled from RL's: one micro-batch's rows, no accumulation of its own (RL weights each micro-batch's
    # loss by its share of the mini-batch and tells the engine the step's last one), max_grad_norm as its clipping.
    rows_per_update = math.ceil(cfg.prompts_per_step // procs.world * cfg.samples_per_prompt / cfg.steps_per_generation)
    launch = deepspeed_launch(accelerator, "train rl", batch_size=cfg.micro_batch_size or rows_per_update, grad_accum=1,
                              max_grad_norm=cfg.max_grad_norm, log=log if procs.is_main else lambda *a: None,
                              names=("micro_batch_size (unset: a mini-batch's rows per process)", "1 (RL accumulates its micro-batches itself)"))
    # The whole policy for forwards each process makes on its own (sampling, evaluation, LoRA's reference pass).
    gather_policy = whole_engine if launch is not None else whole_policy
    if cfg.prompts_per_step % procs.world or (cfg.generation_batch_size and (cfg.prompts_per_step // cfg.generation_batch_size) % procs.world):
        raise ConfigError(f"prompts_per_step {cfg.prompts_per_step} cannot be shared equally by {procs.world} processes"
                          + (f" in calls of generation_batch_size {cfg.generation_batch_size}" if cfg.generation_batch_size else ""),
                          f"make prompts_per_step a multiple of {procs.world} x generation_batch_size")
    say = log if procs.is_main else (lambda *a, **k: None)
    reference_is = ("the policy with its LoRA adapter disabled" if cfg.lora is not None else
                    f"a whole frozen copy on every process{' (on the CPU: ref_offload)' if cfg.ref_offload else ''}")
    if sharded:
        say(f"FSDP: the policy is sharded over {procs.world} processes and gathered whole for sampling; the reference is "
            + reference_is + (", gathered whole for its pass" if cfg.lora is not None else ""))
    if launch is not None:
        say(f"DeepSpeed ZeRO-{launch['zero_stage']} over {procs.world} processes: "
            + ("the policy is partitioned and gathered whole for sampling; " if launch["zero_stage"] == 3 else "")
            + "the reference is " + reference_is)
    with unpartitioned_loading(accelerator):
        rewards = build_rewards(cfg, reward, placement)
        if gold is None and cfg.gold:
            gold = load_reward_source(cfg.gold)
        if model is None:
            model, tokenizer = _load_policy(cfg, prompts, placement)
    device = next(model.parameters()).device
    if cfg.gradient_checkpointing:
        set_activation_checkpointing(model, True)
    if cfg.lora is not None:
        model = add_lora(model, cfg)
    # The reference policy: with LoRA the adapter disabled (no second copy of the weights), else a frozen copy.
    frozen_copy = None if cfg.lora is not None else frozen_reference(model, offload=cfg.ref_offload)

    @contextlib.contextmanager
    def reference(root: torch.nn.Module = model) -> Iterator[torch.nn.Module]:
        """The reference to score with. With LoRA under FSDP or ZeRO-3, `root` is the sharded policy: it is gathered whole
        for the block, as for sampling, so each process's reference forwards need no collective."""
        if frozen_copy is not None:
            yield frozen_copy
            return
        was_training = model.training
        model.eval()
        try:
            with gather_policy(root), model.disable_adapter():
                yield model
        finally:
            model.train(was_training)
    if procs.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / rf.CONFIG, json.dumps(asdict(cfg), indent=1, default=str))
    # The initial policy answers the transform's prompts: with LoRA the adapter disabled, else the policy itself, the
    # frozen copy's twin until the first update and on the run's device even when the copy is on the CPU (ref_offload).
    with reference() as ref:
        transform = fit_reward_transform(cfg, RewardTransform(cfg.reward_transform), model if frozen_copy is not None else ref,
                                         tokenizer, prompts, rewards, say) if cfg.reward_transform else None
    pad_id = pad_token_id(tokenizer)
    ppo, dpo = cfg.algorithm == "ppo", cfg.algorithm == "online_dpo"
    value_head = None
    if ppo:
        value_head = torch.nn.Linear(model.config.hidden_size, 1, device=device)
        torch.nn.init.zeros_(value_head.weight)
        torch.nn.init.zeros_(value_head.bias)
    policy_pass = _PolicyPass(model, value_head)
    param_groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr}]
    if ppo:
        param_groups.append({"params": list(value_head.parameters()), "lr": cfg.value_lr})
    optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    trained, optimizer = accelerator.prepare(policy_pass, optimizer)
    kl_ctl = (
        pg.AdaptiveKLController(cfg.kl_coef, cfg.adaptive_kl_target, horizon=10 * cfg.steps)
        if cfg.adaptive_kl_target is not None
        else pg.FixedKLController(cfg.kl_coef)
    )
    # What a checkpoint holds: the policy and, for PPO, the value head (the names older runs saved).
    trainable = torch.nn.ModuleDict({"policy": model, **({"value": value_head} if value_head is not None else {})})
    loss_type, kl_est = cfg.resolved_loss_type, cfg.resolved_kl_estimator

    start = 0
    if resume:
        # Under DeepSpeed the optimizer's state is DeepSpeed's own (checked by its loader); the weights are checked whole.
        with gather_policy(trained):
            found = ckpt.load_latest(out_dir, log=say, model=trainable, optimizer=None if launch else optimizer, deepspeed=launch)
        if found is not None:
            tensors, trainer_state, state = found
            if launch is not None:  # the engine's weights and optimizer partitions, each process its own
                load_deepspeed_state(trained, out_dir / f"checkpoint-{state['step']}")
            elif sharded:  # every process reads the whole state and keeps its shards
                load_full_state(trained, optimizer, tensors, trainer_state["optimizer"])
            else:
                ckpt.load_model_tensors(trainable, tensors)
                optimizer.load_state_dict(trainer_state["optimizer"])
            scheduler.load_state_dict(trainer_state["scheduler"])
            ckpt.set_rng_state(state["rng"], trainer_state["torch_rng"])
            start = state["step"]
            kl_ctl.value = state.get("kl_coef", kl_ctl.value)
            say(f"resumed from step {start} of {cfg.steps}")
    logger = MetricsLogger(out_dir, enabled=procs.is_main, truncate_after=start if resume else 0, report_to=cfg.report_to, log=say)
    logged_rows, fired = _logged(out_dir) if resume and start else ([], [])
    alarms = HackingMonitor(logged_rows, fired)
    displacement = [r for r in logged_rows if "displacement/mean_chosen_change" in r]
    fired_displacement = "likelihood displacement" in fired
    n = cfg.samples_per_prompt
    # One process without generation_batch_size samples from the run's random stream (one call per rollout batch);
    # otherwise every call is seeded by where its prompts sit in the batch, whichever process makes it.
    seeded_calls = procs.world > 1 or cfg.generation_batch_size is not None
    call_size = cfg.generation_batch_size or cfg.prompts_per_step // procs.world

    def forward(idx: list[int], width: int, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Token log-probs [b, width], PPO values and token entropies of this process's sequences `idx`."""
        with torch.set_grad_enabled(need_grad), accelerator.autocast():
            return trained([p_ids[i] for i in idx], [r_ids[i] for i in idx], pad_id=pad_id, width=width,
                           entropy=cfg.entropy_coef > 0, padding_free=cfg.padding_free)

    def score_without_grad(idx: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token log-probs [b, width] (and PPO values) of the sequences `idx`, micro_batch_size at a time."""
        micro = cfg.micro_batch_size or len(idx)
        parts = [forward(idx[i : i + micro], width, need_grad=False) for i in range(0, len(idx), micro)]
        return torch.cat([p[0] for p in parts]), (torch.cat([p[1] for p in parts]) if ppo else None)

    def sample(batch_prompts: list, step: int, round_: int, at: int) -> list[tuple[list, Any]]:
        """(prompts, rollout) of each sampling call over `batch_prompts`; `at` is the first one's position in the step's batch."""
        model.eval()
        size = call_size if seeded_calls else len(batch_prompts)
        calls = []
        for s in range(0, len(batch_prompts), size):
            chunk = batch_prompts[s : s + size]
            gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, n=n, do_sample=True,
                                   seed=rollout_seed(cfg.seed, step, round_, at + s) if seeded_calls else None)
            calls.append((chunk, generate(model, tokenizer, chunk, gen) if engine is None else engine.generate(chunk, gen, policy=model)))
        return calls

    # rollout_backend=vllm: a colocated engine samples; it is sent the policy's weights after each step's updates.
    engine = VLLMGenerator.for_model(model, tokenizer, options=cfg, seed=cfg.seed) if cfg.rollout_backend == "vllm" else None
    if engine is not None and start:
        engine.sync(model)  # resumed: the engine was built from the initial weights
    bar = tqdm(total=cfg.steps, initial=start, desc=f"rl {cfg.algorithm}", disable=not (cfg.progress and procs.is_main), unit="step")
    t0 = time.time()
    warned_flat = False
    for step in range(start, cfg.steps):
        # --- rollouts of this process's share (dynamic sampling drops flat groups and refills from later prompts)
        g = torch.Generator().manual_seed(cfg.seed * 7919 + step)
        mine = procs.candidates(torch.randperm(len(prompts), generator=g).tolist(), cfg.prompts_per_step)
        share = cfg.prompts_per_step // procs.world
        kept_p, kept_r, kept_rew, kept_parts, cursor, n_groups, n_flat = [], [], [], [], 0, 0, 0
        rounds = 0
        with gather_policy(trained):  # sampling forwards run on the gathered policy, however many each process makes
            while len(kept_p) < share and cursor < len(mine) and rounds <= cfg.max_refill_rounds:
                need = share - len(kept_p)
                batch_prompts = [prompts[i] for i in mine[cursor : cursor + need]]
                at = procs.rank * share if rounds == 0 else cfg.prompts_per_step + cursor * procs.world + procs.rank
                cursor += need
                for call_prompts, ro in sample(batch_prompts, step, rounds, at):
                    total, parts = rewards.scores([call_prompts[j] for j in ro.prompt_index], ro.texts, step=step + 1)
                    total = total.view(len(call_prompts), n)
                    var = group_variance(total)
                    finished = ro.finished
                    for j, p in enumerate(call_prompts):
                        n_groups += 1
                        flat = bool(var[j] <= cfg.variance_threshold)
                        n_flat += flat
                        if flat and (cfg.dynamic_sampling or dpo):  # a tied pair states no preference
                            continue
                        sl = slice(j * n, (j + 1) * n)
                        kept_p.append(p)
                        kept_r.append((ro.prompt_ids[sl], ro.response_ids[sl], ro.texts[sl], finished[sl]))
                        kept_rew.append(total[j])
                        kept_parts.append({k: v[sl] for k, v in parts.items()})
                rounds += 1
                if not cfg.dynamic_sampling:
                    break
        # Every process trains on as many groups as the one that kept fewest (equal shares keep DDP's steps in lockstep).
        keep = int(procs.reduce(len(kept_p), "min"))
        kept_p, kept_r, kept_rew, kept_parts = kept_p[:keep], kept_r[:keep], kept_rew[:keep], kept_parts[:keep]
        n_groups, n_flat = int(procs.reduce(n_groups, "sum")), int(procs.reduce(n_flat, "sum"))
        if not kept_p:
            say(f"alignscope: warning: step {step + 1}: every sampled group had zero reward variance; skipping the update")
            rewards_pn = torch.zeros(0, n)
        else:
            rewards_pn = torch.stack(kept_rew)
        p_ids = [pi for grp in kept_r for pi in grp[0]]
        r_ids = [ri for grp in kept_r for ri in grp[1]]
        texts = [t for grp in kept_r for t in grp[2]]
        truncated = torch.tensor([not f for grp in kept_r for f in grp[3]], dtype=torch.bool, device=device)
        flat_prompts = [p for p in kept_p for _ in range(n)]

        row: dict = {"step": step + 1, "groups_sampled": n_groups, "zero_variance_fraction": n_flat / max(n_groups, 1)}
        if len(kept_p):
            # --- scores: the weighted reward sum, transformed with fixed statistics, plus DAPO's overlong penalty
            scores = transform(rewards_pn) if transform is not None else rewards_pn.clone()
            lengths = torch.tensor([len(r) for r in r_ids], dtype=torch.float32)
            if cfg.overlong_buffer is not None:
                penalty = overlong_penalty(lengths, cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty)
                scores = scores + penalty.view_as(scores)
                row["reward/overlong_penalty_mean"] = float(procs.gather(penalty.to(device)).mean())
            width = int(procs.reduce(max(len(r) for r in r_ids), "max"))  # one width on every process, so rows gather
            all_idx = list(range(len(p_ids)))
            with torch.no_grad(), accelerator.autocast():
                with reference(trained) as ref:
                    ref_out = score_batch(ref, p_ids, r_ids, pad_id=pad_id, return_token_logps=True, padding_free=cfg.padding_free)
            ref_tok = _pad_to(ref_out.token_logps, width).to(device)  # from the CPU with ref_offload
            mask = _pad_to([torch.ones(len(r), device=device) for r in r_ids], width).bool()
            loss_mask = mask & ~truncated.unsqueeze(-1) if cfg.mask_truncated_completions else mask
            trained.train()
            # --- the rollout policy's log-probs (and values): what every update's ratio and clip compare against.
            # One pass over one mini-batch needs no extra forward (the ratio is 1, old = detached current), unless
            # micro-batches split it: then every forward, the rollout policy's included, runs micro_batch_size at a time.
            micro = cfg.micro_batch_size or len(p_ids)
            single = cfg.num_iterations == 1 and cfg.steps_per_generation == 1 and micro >= len(p_ids)
            first = forward(all_idx, width, need_grad=True) if single else None
            tok0, values0 = (first[0], first[1]) if single else score_without_grad(all_idx, width)
            old_tok = tok0.detach()
            old_values = values0.detach() if values0 is not None else None
            kl_coef = kl_ctl.value
            seq_kl = (pg.kl_k1(old_tok, ref_tok) * mask).sum(-1)
            all_mask, all_loss_mask = procs.gather(mask), procs.gather(loss_mask)
            if dpo:  # online DPO: each pair's higher-scored sample is its chosen response
                chosen = (scores[:, 0] >= scores[:, 1]).repeat_interleave(2).to(device)
                chosen[1::2] = ~chosen[0::2]
                adv = returns = None
            else:  # advantages over the whole batch (every process's groups), then this process's rows
                mine_rows = slice(procs.rank * len(p_ids), (procs.rank + 1) * len(p_ids))
                adv, returns = compute_advantages(cfg, procs.gather(scores.to(device)), all_mask,
                                                  procs.gather(pg.kl_estimate(old_tok, ref_tok, kl_est) * mask), kl_coef,
                                                  procs.gather(old_values) if ppo else None)
                adv, returns = adv[mine_rows], (returns[mine_rows] if returns is not None else None)
            size = math.ceil(len(p_ids) / cfg.steps_per_generation)
            size += size % n if dpo else 0  # a mini-batch holds whole pairs
            minibatches = [all_idx[i : i + size] for i in range(0, len(p_ids), size)]
            num_items = float(all_loss_mask.sum()) / len(minibatches)  # dapo: the rollout's tokens per optimizer step
            high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high

            def whole(idx: list[int]) -> list[int]:
                """The rows of every process's mini-batch that matches this process's `idx`."""
                return [r * len(p_ids) + i for r in range(procs.world) for i in idx]

            def share(kind: str, part_mask: torch.Tensor, whole_mask: torch.Tensor) -> float:
                """A micro-batch's share of the whole mini-batch's loss, x world: DDP averages the processes' gradients."""
                return procs.world * pg.micro_batch_weight(kind, part_mask, whole_mask)

            for _ in range(cfg.num_iterations):
                for idx in minibatches:
                    optimizer.zero_grad(set_to_none=True)
                    loss_value, n_clipped = 0.0, 0.0
                    batch_loss_mask, batch_mask = all_loss_mask[whole(idx)], all_mask[whole(idx)]
                    micro_parts = [idx[i : i + micro] for i in range(0, len(idx), micro)]
                    for k, part in enumerate(micro_parts):
                        last = k == len(micro_parts) - 1
                        sync = contextlib.nullcontext() if last or launch else accelerator.no_sync(trained)
                        with sync:
                            tok, values, entropy = first if single else forward(part, width, need_grad=True)
                            if dpo:
                                seq, ref_seq, c = (tok * loss_mask[part]).sum(-1), (ref_tok[part] * loss_mask[part]).sum(-1), chosen[part]
                                loss = share("grpo", loss_mask[part], batch_loss_mask) * preference_loss(
                                    "sigmoid", seq[c], seq[~c], ref_seq[c], ref_seq[~c], beta=cfg.beta).losses.mean()
                            else:
                                loss = share(loss_type, loss_mask[part], batch_loss_mask) * pg.policy_gradient_loss(
                                    tok, adv[part], loss_mask[part], old_token_logps=old_tok[part], epsilon=cfg.epsilon,
                                    epsilon_high=cfg.epsilon_high, loss_type=loss_type, max_len=cfg.max_new_tokens, num_items=num_items,
                                    importance_sampling_level=cfg.importance_sampling_level,
                                    kl_coef=kl_coef if cfg.kl_mode == "loss" else 0.0, ref_token_logps=ref_tok[part], kl_estimator=kl_est,
                                    use_bias_correction_kl=cfg.use_bias_correction_kl,
                                )
                            if entropy is not None:
                                loss = loss - cfg.entropy_coef * share("bnpo", loss_mask[part], batch_loss_mask) \
                                    * pg.aggregate_tokens(entropy, loss_mask[part], "bnpo")
                            if values is not None:
                                loss = loss + cfg.vf_coef * share("bnpo", mask[part], batch_mask) \
                                    * pg.value_loss(values, old_values[part], returns[part], mask[part], clip=cfg.cliprange_value)
                            if not torch.isfinite(loss):
                                raise TrainingError(f"RL loss is {loss.item()} at step {step + 1}", "lower lr or kl_coef; the last good checkpoint is kept")
                            if launch is not None:  # the engine reduces each micro-batch; clips and steps after the last
                                deepspeed_backward(trained, loss, boundary=last)
                            else:
                                accelerator.backward(loss)
                        loss_value += float(loss.detach()) / procs.world
                        with torch.no_grad():
                            ratio = pg.importance_ratio(tok.detach(), old_tok[part], loss_mask[part], cfg.importance_sampling_level)
                            n_clipped += float((((ratio < 1 - cfg.epsilon) | (ratio > 1 + high)).expand_as(tok) & loss_mask[part]).sum())
                    loss_value = procs.reduce(loss_value, "sum")
                    clip_fraction = procs.reduce(n_clipped, "sum") / max(float(batch_loss_mask.sum()), 1.0)
                    if launch is None:
                        if cfg.max_grad_norm is not None:
                            accelerator.clip_grad_norm_(trained.parameters(), cfg.max_grad_norm)
                        optimizer.step()
            scheduler.step()
            if dpo:
                row.update(online_dpo_metrics(cfg.beta, *(procs.gather(x) for x in (
                    (old_tok * loss_mask).sum(-1), (ref_tok * loss_mask).sum(-1), chosen.long(), (score_without_grad(all_idx, width)[0] * loss_mask).sum(-1)))))
                displacement.append(row)
                for pitfall in online_displacement(displacement, cfg.steps, fired_displacement):
                    fired_displacement = True
                    logger.pitfall(step + 1, pitfall)
            if engine is not None:
                engine.sync(model)
            # --- metrics over the whole batch
            all_seq_kl = procs.gather(seq_kl)
            mean_kl = float(all_seq_kl.mean())
            kl_ctl.update(mean_kl, len(all_seq_kl))
            all_rewards = procs.gather(rewards_pn.to(device)).cpu()
            all_lengths = procs.gather(lengths.to(device)).cpu()
            all_old_tok = procs.gather(old_tok)
            var = group_variance(all_rewards)
            part_means = {k: float(procs.gather(torch.cat([pp[k] for pp in kept_parts]).to(device)).mean()) for k in rewards.names} \
                if len(rewards.names) > 1 else {}
            row.update({
                "loss": loss_value,
                "reward/proxy_mean": float(all_rewards.mean()),
                "reward/proxy_std": float(all_rewards.std()) if all_rewards.numel() > 1 else 0.0,
                **{f"reward/{k}_mean": v for k, v in part_means.items()},
                "kl": mean_kl,
                "kl_coef": kl_coef,
                **({} if dpo else {"clip_fraction": clip_fraction}),
                "entropy": float(-(all_old_tok * all_mask).sum() / all_mask.sum()),
                "response_length": float(all_lengths.mean()),
                "truncated_fraction": float(procs.gather(truncated.float()).mean()),
                "reward_variance/mean": float(var.mean()),
                "reward_variance/low_fraction": float((var <= cfg.variance_threshold).float().mean()),
            })
            gold_values = torch.as_tensor(gold(flat_prompts, texts), dtype=torch.float32) if gold is not None else None
            if gold_values is not None:
                row["reward/gold_mean"] = float(procs.gather(gold_values.to(device)).mean())
            if cfg.log_completions:
                parts_flat = {k: torch.cat([pp[k] for pp in kept_parts]) for k in rewards.names}
                logged = [{"prompt": prompt_text(flat_prompts[k]), "response": texts[k],
                           "rewards": {name: float(v[k]) for name, v in parts_flat.items()},
                           "gold": float(gold_values[k]) if gold_values is not None else None}
                          for k in range(min(cfg.log_completions, len(texts)))]
                for entry in procs.gather_list(logged)[: cfg.log_completions]:
                    logger.append_jsonl(rf.COMPLETIONS, {"step": step + 1, **entry})
        done = step + 1
        if eval_prompts and (done == cfg.steps or (cfg.eval_steps and done % cfg.eval_steps == 0)):
            with gather_policy(trained):
                if procs.is_main:  # the held-out prompts are sampled once, by the main process, with the evaluation's own seed
                    row.update(evaluate_policy(model, tokenizer, eval_prompts, rewards, gold, cfg, done, engine))
            accelerator.wait_for_everyone()
        logger.log(row)
        if "reward/proxy_mean" in row:
            logger.append_jsonl(rf.RL_METRICS, {"step": step + 1, "proxy_reward": row["reward/proxy_mean"],
                                                     "gold_reward": row.get("reward/gold_mean"), "kl": row["kl"]})
            if procs.is_main:
                for pitfall in alarms.update(row):
                    logger.pitfall(step + 1, pitfall)
        logger.append_jsonl(rf.REWARD_VARIANCE_STEPS, {"step": step + 1, "variances": var.tolist() if len(kept_p) else []})
        if len(kept_p) and not warned_flat and n > 1:
            # The paper's estimator: per-prompt variance of rewards standardised over all of the step's samples.
            for pitfall in detect_flat_objective(var / (all_rewards.var() + 1e-12)):
                warned_flat = True
                logger.pitfall(step + 1, pitfall)
        if cfg.save_steps and done % cfg.save_steps == 0 or done == cfg.steps:
            accelerator.wait_for_everyone()
            if launch is not None:  # the whole weights, and DeepSpeed's own state staged for the checkpoint to take in
                gathered = deepspeed_state(accelerator, trained, out_dir / ".tmp-deepspeed")
            else:
                gathered = full_state(trained, optimizer) if sharded else {}
            if procs.is_main:
                ckpt.save_checkpoint(out_dir, done, trainable, optimizer, scheduler,
                                     {"step": done, "kl_coef": kl_ctl.value, **({"deepspeed": launch} if launch else {})}, cfg.keep_last,
                                     **gathered)
        bar.update(1)
        if "reward/proxy_mean" in row:
            bar.set_postfix(reward=f"{row['reward/proxy_mean']:.3f}", kl=f"{row['kl']:.3f}")
    bar.close()
    if engine is not None:
        engine.close()
    accelerator.wait_for_everyone()
    # Sharded or partitioned: the whole policy gathered by every process, for the main one to write.
    final_state = (accelerator.get_state_dict(trained) or {}) if launch is not None else full_state(trained)["tensors"] if sharded else None
    policy_state = {k.removeprefix("policy."): v for k, v in final_state.items() if k.startswith("policy.")} if final_state is not None else None
    if procs.is_main:
        overoptimization_summary(out_dir, logger)
        if cfg.lora is not None:
            model, policy_state = save_adapter_and_merge(model, out_dir / "final" / "adapter", policy_state)
        model.save_pretrained(out_dir / "final", state_dict=policy_state)
        tokenizer.save_pretrained(out_dir / "final")
    logger.close()
    # accelerate's documented end: the process group is torn down by every process together, not by interpreter exit
    # (a rank leaving its gloo threads to exit-time destructors aborted with 'terminate called' in 1 of ~4 resumed runs).
    accelerator.wait_for_everyone()
    accelerator.end_training()
    say(f"done: {cfg.steps} RL steps in {time.time() - t0:.1f}s; metrics in {out_dir / rf.METRICS}")
    return out_dir
