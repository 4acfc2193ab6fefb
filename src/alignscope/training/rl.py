"""On-policy RL from a reward source: REINFORCE, RLOO, GRPO, Dr. GRPO and PPO, with KL control.

One loop, read top to bottom: sample n responses per prompt -> rewards -> per-prompt reward
variance (the flat-objective pitfall) -> optional dynamic sampling that drops low-variance
groups -> advantages -> policy-gradient loss with the KL term -> step. Metrics each step
include proxy and gold reward, KL, entropy, lengths and reward-variance statistics.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from alignscope import run_files as rf
from alignscope.atomic import write_text
from alignscope.diagnostics.overoptimization import fit_rl, gold_peak, sqrt_kl
from alignscope.diagnostics.variance import per_prompt_variance
from alignscope.diagnostics.warnings import (
    detect_flat_objective,
    detect_overoptimization,
)
from alignscope.errors import DataError, TrainingError
from alignscope.losses import policy_gradient as pg
from alignscope.models.scoring import Scorer, pad_token_id, score_batch
from alignscope.rewards.sources import load_reward_source
from alignscope.rollout.generation import GenerationConfig, generate
from alignscope.training import checkpoint as ckpt
from alignscope.training.config import ALGORITHMS, RLConfig  # noqa: F401 (re-exported: alignscope.training.rl.RLConfig)
from alignscope.training.metrics import MetricsLogger


def _pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(r) for r in rows)
    out = torch.zeros(len(rows), t)
    mask = torch.zeros(len(rows), t, dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        mask[i, : len(r)] = True
    return out, mask


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

    `scores` is [P, n]; with kl_mode=reward the k1 penalty is subtracted from the reward (per token
    for PPO, summed per sequence otherwise). PPO advantages are whitened over valid tokens; PPO
    also returns the value targets.
    """
    flat = scores.reshape(-1)
    penalise = cfg.kl_mode == "reward"
    if cfg.algorithm == "ppo":
        token_rewards = -kl_coef * kl_tok if penalise else torch.zeros_like(kl_tok)
        last = mask.sum(-1) - 1
        token_rewards[torch.arange(len(last)), last] += flat
        adv, returns = pg.gae(token_rewards, values, mask, gamma=1.0, lam=cfg.gae_lambda)
        valid = adv[mask]
        if valid.numel() > 1:
            adv = (adv - valid.mean()) / (valid.std() + 1e-8) * mask
        return adv, returns
    if penalise:
        flat = flat - kl_coef * kl_tok.sum(-1)
    grouped = flat.view(-1, cfg.samples_per_prompt)
    if cfg.algorithm == "rloo":
        return pg.rloo_advantages(grouped).reshape(-1), None
    if cfg.algorithm == "grpo":
        return pg.grpo_advantages(grouped).reshape(-1), None
    if cfg.algorithm == "dr_grpo":
        return pg.dr_grpo_advantages(grouped).reshape(-1), None
    return pg.reinforce_advantages(grouped, baseline="mean").reshape(-1), None


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


def train_rl(
    cfg: RLConfig, *, resume: bool = False, model=None, tokenizer=None, prompts: list | None = None,
    reward_fn=None, gold_fn=None, log=print,
) -> Path:
    """Run RL; in-memory `model`/`tokenizer`, `prompts` and reward callables replace the config's specs."""
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.output_dir)

    # --- data, policy, reference, rewards (each can fail on bad input: before the run folder is written)
    from alignscope.data.loader import load_data

    if prompts is None:
        prompts = [ex.prompt for ex in load_data(cfg.prompts, format=cfg.format, mapping=cfg.map or None,
                                                   as_chat=cfg.as_chat).examples]
    if model is None:
        from alignscope.training.config import TrainConfig
        from alignscope.training.loop import build_policy

        model, tokenizer = build_policy(TrainConfig(model=cfg.model, data=cfg.prompts, seed=cfg.seed, trust_remote_code=cfg.trust_remote_code), [])
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    reward_fn = reward_fn or load_reward_source(cfg.reward)
    if gold_fn is None and cfg.gold:
        gold_fn = load_reward_source(cfg.gold)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / rf.CONFIG, json.dumps(asdict(cfg), indent=1, default=str))
    pad_id = pad_token_id(tokenizer)
    scorer = Scorer(model)
    value_head = None
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": params, "lr": cfg.lr}], lr=cfg.lr)
    if cfg.algorithm == "ppo":
        value_head = torch.nn.Linear(model.config.hidden_size, 1)
        torch.nn.init.zeros_(value_head.weight)
        torch.nn.init.zeros_(value_head.bias)
        optimizer.add_param_group({"params": list(value_head.parameters()), "lr": cfg.value_lr})
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    kl_ctl = (
        pg.AdaptiveKLController(cfg.kl_coef, cfg.adaptive_kl_target, horizon=10 * cfg.steps)
        if cfg.adaptive_kl_target is not None
        else pg.FixedKLController(cfg.kl_coef)
    )
    trainable = torch.nn.ModuleDict({"policy": model, **({"value": value_head} if value_head is not None else {})})

    start = 0
    if resume:
        found = ckpt.load_latest(out_dir, log=log)
        if found is not None:
            tensors, trainer_state, state = found
            ckpt.load_model_tensors(trainable, tensors)
            optimizer.load_state_dict(trainer_state["optimizer"])
            scheduler.load_state_dict(trainer_state["scheduler"])
            ckpt.set_rng_state(state["rng"], trainer_state["torch_rng"])
            start = state["step"]
            kl_ctl.value = state.get("kl_coef", kl_ctl.value)
            log(f"resumed from step {start} of {cfg.steps}")
    logger = MetricsLogger(out_dir, truncate_after=start if resume else 0, log=log)
    gen_cfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, n=cfg.samples_per_prompt, do_sample=True)

    bar = tqdm(total=cfg.steps, initial=start, desc=f"rl {cfg.algorithm}", disable=not cfg.progress, unit="step")
    t0 = time.time()
    warned_flat = False
    for step in range(start, cfg.steps):
        # --- rollouts (dynamic sampling drops flat groups and refills from later prompts)
        g = torch.Generator().manual_seed(cfg.seed * 7919 + step)
        order = torch.randperm(len(prompts), generator=g).tolist()
        kept_p, kept_r, kept_rew, cursor, n_groups, n_flat = [], [], [], 0, 0, 0
        rounds = 0
        while len(kept_p) < cfg.prompts_per_step and cursor < len(order) and rounds <= cfg.max_refill_rounds:
            need = cfg.prompts_per_step - len(kept_p)
            batch_prompts = [prompts[i] for i in order[cursor : cursor + need]]
            cursor += need
            rounds += 1
            model.eval()
            ro = generate(model, tokenizer, batch_prompts, gen_cfg)
            rewards = torch.as_tensor(reward_fn([batch_prompts[j] for j in ro.prompt_index], ro.texts), dtype=torch.float32)
            rewards = rewards.view(len(batch_prompts), cfg.samples_per_prompt)
            var = group_variance(rewards)
            for j, p in enumerate(batch_prompts):
                n_groups += 1
                flat = bool(var[j] <= cfg.variance_threshold)
                n_flat += flat
                if flat and cfg.dynamic_sampling:
                    continue
                sl = slice(j * cfg.samples_per_prompt, (j + 1) * cfg.samples_per_prompt)
                kept_p.append(p)
                kept_r.append((ro.prompt_ids[sl], ro.response_ids[sl], ro.texts[sl]))
                kept_rew.append(rewards[j])
            if not cfg.dynamic_sampling:
                break
        if not kept_p:
            log(f"alignscope: warning: step {step + 1}: every sampled group had zero reward variance; skipping the update")
            rewards_pn = torch.zeros(0, cfg.samples_per_prompt)
        else:
            rewards_pn = torch.stack(kept_rew)
        p_ids = [pi for grp in kept_r for pi in grp[0]]
        r_ids = [ri for grp in kept_r for ri in grp[1]]
        texts = [t for grp in kept_r for t in grp[2]]
        flat_prompts = [p for p in kept_p for _ in range(cfg.samples_per_prompt)]

        row: dict = {"step": step + 1, "groups_sampled": n_groups, "zero_variance_fraction": n_flat / max(n_groups, 1)}
        if len(kept_p):
            scores = rewards_pn.clone()
            if cfg.reward_standardize:
                scores = (scores - scores.mean()) / (scores.std() + 1e-8)
            with torch.no_grad():
                ref_out = score_batch(reference, p_ids, r_ids, pad_id=pad_id, return_token_logps=True,
                                      padding_free=cfg.padding_free)
            ref_tok, mask = _pad(ref_out.token_logps)
            model.train()
            old_tok = old_values = adv = returns = None
            for epoch in range(cfg.ppo_epochs if cfg.algorithm == "ppo" else 1):
                out = score_batch(scorer, p_ids, r_ids, pad_id=pad_id, return_token_logps=True, return_token_hidden=cfg.algorithm == "ppo",
                                  padding_free=cfg.padding_free)
                tok = torch.nn.utils.rnn.pad_sequence(out.token_logps, batch_first=True)
                values = None
                if cfg.algorithm == "ppo":
                    values = torch.nn.utils.rnn.pad_sequence([value_head(h).squeeze(-1) for h in out.token_hidden], batch_first=True)
                if epoch == 0:
                    # What every PPO epoch compares against is fixed by the rollout policy, before any update.
                    old_tok = tok.detach()
                    kl_tok = (old_tok - ref_tok) * mask
                    seq_kl = kl_tok.sum(-1)
                    kl_coef = kl_ctl.value
                    old_values = values.detach() if values is not None else None
                    adv, returns = compute_advantages(cfg, scores, mask, kl_tok, kl_coef, old_values)
                loss = pg.policy_gradient_loss(
                    tok, adv, mask, old_token_logps=old_tok, clip_eps=cfg.clip_eps,
                    loss_agg="dr_grpo" if cfg.algorithm == "dr_grpo" else "token_mean", max_len=cfg.max_new_tokens,
                    kl_coef=kl_coef if cfg.kl_mode == "loss" else 0.0, ref_token_logps=ref_tok,
                )
                if values is not None:
                    loss = loss + cfg.vf_coef * pg.value_loss(values, old_values, returns, mask, clip=cfg.clip_eps)
                if not torch.isfinite(loss):
                    raise TrainingError(f"RL loss is {loss.item()} at step {step + 1}", "lower lr or kl_coef; the last good checkpoint is kept")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable.parameters(), cfg.max_grad_norm)
                optimizer.step()
            scheduler.step()
            mean_kl = float(seq_kl.mean())
            kl_ctl.update(mean_kl, len(p_ids))
            var = group_variance(rewards_pn)
            row.update({
                "loss": float(loss.detach()),
                "reward/proxy_mean": float(rewards_pn.mean()),
                "reward/proxy_std": float(rewards_pn.std()) if rewards_pn.numel() > 1 else 0.0,
                "kl": mean_kl,
                "kl_coef": kl_coef,
                "entropy": float(-(old_tok * mask).sum() / mask.sum()),
                "response_length": float(mask.sum(-1).float().mean()),
                "reward_variance/mean": float(var.mean()),
                "reward_variance/low_fraction": float((var <= cfg.variance_threshold).float().mean()),
            })
            if gold_fn is not None:
                row["reward/gold_mean"] = float(torch.as_tensor(gold_fn(flat_prompts, texts), dtype=torch.float32).mean())
        logger.log(row)
        if "reward/proxy_mean" in row:
            logger.append_jsonl(rf.RL_METRICS, {"step": step + 1, "proxy_reward": row["reward/proxy_mean"],
                                                     "gold_reward": row.get("reward/gold_mean"), "kl": row["kl"]})
        logger.append_jsonl(rf.REWARD_VARIANCE_STEPS, {"step": step + 1, "variances": var.tolist() if len(kept_p) else []})
        if len(kept_p) and not warned_flat and cfg.samples_per_prompt > 1:
            # The paper's estimator: per-prompt variance of rewards standardised over all of the step's samples.
            for pitfall in detect_flat_objective(var / (rewards_pn.var() + 1e-12)):
                warned_flat = True
                logger.pitfall(step + 1, pitfall)
        done = step + 1
        if cfg.save_steps and done % cfg.save_steps == 0 or done == cfg.steps:
            ckpt.save_checkpoint(out_dir, done, trainable, optimizer, scheduler, {"step": done, "kl_coef": kl_ctl.value}, cfg.keep_last)
        bar.update(1)
        if "reward/proxy_mean" in row:
            bar.set_postfix(reward=f"{row['reward/proxy_mean']:.3f}", kl=f"{row['kl']:.3f}")
    bar.close()
    overoptimization_summary(out_dir, logger)
    model.save_pretrained(out_dir / "final")
    tokenizer.save_pretrained(out_dir / "final")
    logger.close()
    log(f"done: {cfg.steps} RL steps in {time.time() - t0:.1f}s; metrics in {out_dir / 'metrics.jsonl'}")
    return out_dir

