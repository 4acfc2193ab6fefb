"""`alignscope select-prompts` (keep the prompts with the most reward variance) and `alignscope bon` (best-of-n)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from alignscope.cli.args import add_chunk_arguments, add_reward_timeout, check_output, number
from alignscope.models.device import add_device_arguments
from alignscope.rollout.options import add_rollout_arguments


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, help="policy model spec (folder, .gguf, smollm2, lab:tiny)")
    p.add_argument("--prompts", required=True, help="prompts: a file, a saved `datasets` folder, or hf:NAME[:SUBSET][@SPLIT]")
    p.add_argument("--map", action="append", default=[], metavar="NEW=OLD",
                   help="rename a column, e.g. --map prompt=question (repeatable)")
    p.add_argument("--as-chat", action="store_true",
                   help="send plain-text prompts as one user message (the chat template of an instruct model applies)")
    p.add_argument("--reward", required=True, help="reward: module:function, a reward-model folder, or lab:gold")
    p.add_argument("--n", "--samples-per-prompt", dest="n", type=number(int, ge=1), default=8,
                   help="samples per prompt (>= 1; select-prompts needs >= 2); under torchrun write --samples-per-prompt")
    p.add_argument("--max-new-tokens", type=number(int, ge=1), default=32, help="longest response in tokens (>= 1)")
    p.add_argument("--temperature", type=number(float, gt=0), default=1.0, help="sampling temperature (> 0)")
    p.add_argument("--limit", type=number(int, ge=1), help="use only the first N prompts (>= 1)")
    p.add_argument("--seed", type=number(int, ge=0), default=0, help="random seed (>= 0)")
    add_chunk_arguments(p, "prompts", 64, sampled=True)
    add_reward_timeout(p)
    add_device_arguments(p)
    add_rollout_arguments(p)


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("select-prompts", help="keep the prompts with the highest reward variance under the initial policy",
                       description="Low reward variance makes the RL objective flat (Razin et al.): pre-select prompts where the reward varies.")
    _common(s)
    s.add_argument("--keep", type=number(float, gt=0), default=0.5, help="fraction of prompts to keep (0-1] or a count (> 1)")
    s.add_argument("--out", required=True, help="selected prompts (JSONL); a .variances.json file is written beside it")
    s.set_defaults(func=run_select)

    b = sub.add_parser("bon", help="best-of-n sampling under a reward, with the analytic KL bound",
                       description="Sample n responses per prompt and keep the highest-reward one. KL(bon || policy) <= log n - (n-1)/n.")
    _common(b)
    b.add_argument("--gold", help="gold reward to measure over-optimisation (module:function or lab:gold)")
    b.add_argument("--out", required=True, help="best responses (JSONL)")
    b.set_defaults(func=run_bon)


def _sample(args, outputs: list[tuple[str, str]]):
    """Check every argument (outputs included) and load the prompts and rewards, then sample in chunks
    (`audits.chunks`: saved as they finish, shared out between processes, resumable): nothing slow runs
    before a mistake a user can fix is found. None on the processes other than the main one."""
    import torch

    from alignscope.audits.chunks import distributed, finish, run_in_chunks
    from alignscope.data.loader import load_data, parse_mapping
    from alignscope.errors import ConfigError
    from alignscope.models.device import load_placed, placement_from_args
    from alignscope.rewards.sources import call_reward, load_reward_source
    from alignscope.rollout.backend import generate_with, sampling_engine
    from alignscope.rollout.generation import GenerationConfig
    from alignscope.rollout.options import rollout_options_from_args

    placement, rollout = placement_from_args(args), rollout_options_from_args(args)  # a bad device fails before any work
    for path, flag in outputs:
        check_output(path, flag)
    examples = load_data(args.prompts, mapping=parse_mapping(args.map), as_chat=args.as_chat).examples[: args.limit]
    prompts = [ex.prompt for ex in examples]
    if not prompts:
        raise ConfigError(f"nothing to sample: {args.prompts} has no prompts", "give a prompt file with at least one prompt")
    reward = load_reward_source(args.reward, placement=placement, timeout=args.reward_timeout)
    gold = load_reward_source(args.gold, placement=placement, timeout=args.reward_timeout) if getattr(args, "gold", None) else None
    policy, tok = load_placed(args.policy, placement)
    rank, world, barrier = distributed()

    def chunk(k: int, start: int, stop: int) -> dict:
        part = prompts[start:stop]
        ro = generate_with(engine, policy, tok, part,
                           GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, n=args.n, do_sample=True,
                                            seed=args.seed * 1_000_003 + k),
                           progress=f"sampling prompts {start + 1}-{stop} of {len(prompts)} x {args.n}" if rank == 0 else None)
        flat = [part[i] for i in ro.prompt_index]
        return {"texts": list(ro.texts), "rewards": call_reward(reward, flat, ro.texts, args.reward).tolist()}

    out = Path(outputs[0][0])
    chunk_dir = out.parent / f".{out.name}.chunks"
    settings = {"prompts": args.prompts, "policy": args.policy, "reward": args.reward, "n": args.n, "limit": args.limit,
                "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "seed": args.seed, "as_chat": args.as_chat,
                "map": args.map, "dtype": placement.dtype_name, "backend": rollout.rollout_backend}
    with sampling_engine(rollout, policy, tok, placement, args.seed) as engine:
        chunks = run_in_chunks(len(prompts), args.chunk_prompts, chunk_dir, settings, chunk, resume=args.resume, rank=rank,
                               world=world, barrier=barrier)
    if chunks is None:
        return None
    finish(chunk_dir)
    texts = [t for c in chunks for t in c["texts"]]
    rewards = torch.tensor([r for c in chunks for r in c["rewards"]], dtype=torch.float32).view(len(prompts), args.n)
    flat = [p for p in prompts for _ in range(args.n)]
    return prompts, texts, flat, rewards, gold, [dict(ex.meta) for ex in examples]


def run_select(args: argparse.Namespace) -> int:
    from alignscope.atomic import write_text
    from alignscope.audits.data import write_jsonl
    from alignscope.diagnostics.variance import per_prompt_variance
    from alignscope.errors import ConfigError

    if args.n < 2:
        raise ConfigError(f"--n {args.n}: a reward variance needs at least 2 samples per prompt",
                          "pass --n 2 or more (the default is 8)")
    out = Path(args.out)
    sampled = _sample(args, [(args.out, "--out"), (out.with_suffix(".variances.json"), "--out's .variances.json")])
    if sampled is None:  # another process of a distributed run: the main one writes the results
        return 0
    prompts, _, _, rewards, _, columns = sampled
    var = per_prompt_variance(rewards.numpy())
    k = max(1, round(args.keep * len(prompts))) if args.keep <= 1 else min(int(args.keep), len(prompts))
    order = sorted(range(len(prompts)), key=lambda i: -var[i])[:k]
    # The prompt file's other columns (a GSM8K answer, say) stay: TRL hands every column to its reward functions.
    write_jsonl([{**columns[i], "prompt": prompts[i], "reward_variance": float(var[i])} for i in sorted(order)], out)
    write_text(out.with_suffix(".variances.json"), json.dumps([float(v) for v in var]))
    zero = int((var <= 1e-12).sum())
    print(f"{len(prompts)} prompts x {args.n} samples: mean reward variance {var.mean():.4g}, {zero} with zero variance")
    print(f"kept {k} prompts with the highest variance (threshold {var[order[-1]]:.4g}) -> {out}")
    flat_kept = sum(var[i] <= 1e-12 for i in order)
    if flat_kept:
        fewer = f", or keep fewer (--keep {k - flat_kept})" if k > flat_kept else ""
        print(f"warning: {flat_kept} of the {k} kept prompts have zero reward variance under this policy, so RL on them "
              f"has no signal; sample more prompts (--limit), more samples (--n) or longer responses (--max-new-tokens)"
              f"{fewer}")
    return 0


def run_bon(args: argparse.Namespace) -> int:
    import torch

    from alignscope.audits.data import write_jsonl
    from alignscope.losses.policy_gradient import best_of_n_kl_bound

    sampled = _sample(args, [(args.out, "--out")])
    if sampled is None:  # another process of a distributed run: the main one writes the results
        return 0
    prompts, texts, flat, rewards, gold, _ = sampled
    best = rewards.argmax(dim=1)
    rows = []
    for i, p in enumerate(prompts):
        j = i * args.n + int(best[i])
        rows.append({"prompt": p, "completion": texts[j], "reward": float(rewards[i, best[i]])})
    msg = [f"best-of-{args.n} on {len(prompts)} prompts: reward {rewards.mean():.4g} (mean sample) -> {rewards.max(dim=1).values.mean():.4g} (best)",
           f"KL(best-of-n || policy) <= log n - (n-1)/n = {best_of_n_kl_bound(args.n):.4f} nats (sqrt: {math.sqrt(best_of_n_kl_bound(args.n)):.4f})"]
    if gold is not None:
        g = torch.as_tensor(gold(flat, texts), dtype=torch.float64).view(len(prompts), args.n)
        picked = g[torch.arange(len(prompts)), best]
        for r, gv in zip(rows, picked.tolist()):
            r["gold"] = gv
        msg.append(f"gold reward: {g.mean():.4g} (mean sample) -> {picked.mean():.4g} (best under the proxy), {g.max(dim=1).values.mean():.4g} (oracle best)")
    write_jsonl(rows, Path(args.out))
    print("\n".join(msg))
    print(f"written: {args.out}")
    return 0
