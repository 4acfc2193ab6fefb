"""`alignscope compare-rm`: the implicit RM of a DPO policy against an explicit RM."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare-rm", help="implicit (DPO) vs explicit reward model, in distribution and under shift",
                       description="Accuracy (ties count 1/2) and normalised margins of beta*log(pi/pi_ref) and of an explicit RM on the same pairs.")
    p.add_argument("--policy", required=True, help="the DPO-trained policy")
    p.add_argument("--ref", required=True, help="its reference model")
    p.add_argument("--beta", type=float, default=0.1, help="beta of the implicit reward")
    p.add_argument("--rm", required=True, help="explicit reward model folder or module:function")
    p.add_argument("--pairs", required=True, help="in-distribution pairwise data")
    p.add_argument("--shifted", help="shifted pairwise data (e.g. paraphrased responses)")
    p.add_argument("--limit", type=int, help="use only the first N pairs of each set")
    p.add_argument("--out", help="write the rows as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alignscope.atomic import write_text
    from alignscope.audits.compare_rm import (
        compare_reward_models,
        format_comparison,
        implicit_rewards,
    )
    from alignscope.data.loader import load_data
    from alignscope.models.loading import load_model_and_tokenizer
    from alignscope.rewards.sources import load_reward_source

    policy, tok = load_model_and_tokenizer(args.policy)
    ref, _ = load_model_and_tokenizer(args.ref)
    sets = {"in-distribution": load_data(args.pairs).examples[: args.limit]}
    if args.shifted:
        sets["shifted"] = load_data(args.shifted).examples[: args.limit]
    rewards = {
        f"implicit (beta={args.beta})": lambda p, r: implicit_rewards(policy, ref, tok, p, r, args.beta),
        f"explicit ({args.rm})": load_reward_source(args.rm),
    }
    rows = compare_reward_models(rewards, sets)
    print(format_comparison(rows))
    if args.out:
        write_text(args.out, json.dumps(rows, indent=1))
    return 0
