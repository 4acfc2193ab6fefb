"""`alignscope compare-rm`: the implicit RM of a DPO policy against an explicit RM."""

from __future__ import annotations

import argparse
import json

from alignscope.cli.args import add_chunk_arguments, add_reward_timeout
from alignscope.models.device import add_device_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare-rm", help="implicit (DPO) vs explicit reward model, in distribution and under shift",
                       description="Accuracy (ties count 1/2, with n and a 95%% Wilson interval) and normalised margins of "
                                   "beta*log(pi/pi_ref) and of an explicit RM on the same pairs, and each set's length bias.")
    p.add_argument("--policy", required=True, help="the DPO-trained policy")
    p.add_argument("--ref", help="its reference model (default: read from the policy's run config.json or adapter_config.json)")
    p.add_argument("--beta", type=float, help="beta of the implicit reward (default: read from the policy's run config.json)")
    p.add_argument("--rm", required=True, help="explicit reward model folder or module:function")
    p.add_argument("--pairs", required=True, help="in-distribution pairwise data")
    p.add_argument("--shifted", help="shifted pairwise data (e.g. paraphrased responses)")
    p.add_argument("--limit", type=int, help="use only the first N pairs of each set")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass of the implicit reward")
    p.add_argument("--out", help="write the rows, length biases and settings as JSON here (a file, or a folder for compare_rm.json)")
    add_chunk_arguments(p, "pairs", 256, sampled=False)
    add_reward_timeout(p)
    add_device_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from alignscope import run_files as rf
    from alignscope.atomic import write_text
    from alignscope.audits.compare_rm import (
        compare_reward_models,
        comparison_doc,
        format_comparison,
        implicit_rewards,
        policy_run_settings,
    )
    from alignscope.audits.outputs import (
        check_number,
        check_output_dir,
        check_output_file,
        command_line,
    )
    from alignscope.data.loader import load_data
    from alignscope.errors import ConfigError
    from alignscope.models.device import load_placed, load_placed_model, placement_from_args

    placement = placement_from_args(args)  # a GPU asked for but absent fails before any work
    check_number(args.limit, "--limit", minimum=1)
    check_number(args.batch_size, "--batch-size", minimum=1)
    if args.beta is not None and not args.beta > 0:
        raise ConfigError(f"--beta must be positive, got {args.beta}", "pass the beta the policy was trained with, e.g. --beta 0.1")
    out = None
    if args.out:
        out = check_output_dir(args.out, "--out") / rf.COMPARE_RM if Path(args.out).is_dir() else check_output_file(args.out, "--out", (".json",))
    sets = {"in-distribution": load_data(args.pairs).examples[: args.limit]}
    if args.shifted:
        sets["shifted"] = load_data(args.shifted).examples[: args.limit]
    found = policy_run_settings(args.policy)
    beta = args.beta if args.beta is not None else found.get("beta")
    ref_spec = args.ref or found.get("ref")
    if beta is None or ref_spec is None:
        missing = " and ".join(n for n, v in (("--beta", beta), ("--ref", ref_spec)) if v is None)
        raise ConfigError(f"{missing} not given and not found in the policy's run (no alignscope config.json with beta above {args.policy})",
                          f"pass {missing} (the values the policy was trained with)")
    settings = {"beta": beta, "ref": ref_spec, "beta_from": "--beta" if args.beta is not None else found.get("from"),
                "ref_from": "--ref" if args.ref else found.get("from")}
    print(f"compare-rm: beta = {beta} (from {settings['beta_from']}), reference = {ref_spec} (from {settings['ref_from']})")
    from alignscope.rewards.sources import load_reward_source

    explicit = load_reward_source(args.rm, placement=placement, timeout=args.reward_timeout)
    policy, tok = load_placed(args.policy, placement)
    ref = load_placed_model(ref_spec, placement)
    rewards = {
        f"implicit (beta={beta})": lambda p, r: implicit_rewards(policy, ref, tok, p, r, beta, batch_size=args.batch_size,
                                                                 progress=f"implicit reward, {len(r)} responses"),
        f"explicit ({args.rm})": explicit,
    }
    import numpy as np

    from alignscope.audits.chunks import distributed, finish, run_in_chunks
    from alignscope.audits.compare_rm import reward_pairs

    rank, world, barrier = distributed()
    chunk_root = (out.parent / f".{out.name}.chunks") if out is not None else Path(".compare_rm.chunks")
    scores = {}
    for set_name, pairs in sets.items():
        def chunk(k: int, start: int, stop: int, pairs=pairs, set_name=set_name) -> dict:
            if rank == 0:
                print(f"compare-rm: scoring {set_name} pairs {start + 1}-{stop} of {len(pairs)}")
            return {name: [x.tolist() for x in reward_pairs(fn, pairs[start:stop])] for name, fn in rewards.items()}

        got = run_in_chunks(len(pairs), args.chunk_pairs, chunk_root / set_name, {**settings, "set": set_name, "pairs": args.pairs,
                            "shifted": args.shifted, "limit": args.limit, "rm": args.rm}, chunk, resume=args.resume, rank=rank,
                            world=world, barrier=barrier)
        for name in rewards:
            if got is not None:
                scores[(name, set_name)] = (np.concatenate([c[name][0] for c in got]), np.concatenate([c[name][1] for c in got]))
    if rank != 0:  # another process of a distributed run: the main one writes the results
        return 0
    finish(chunk_root)
    rows = compare_reward_models(rewards, sets, log=print, scores=scores)
    doc = comparison_doc(rows, sets, settings=settings)
    print(format_comparison(doc))
    if out is not None:
        write_text(out, json.dumps(doc, indent=1))
        manifest = out.parent / rf.MANIFEST if out.name == rf.COMPARE_RM else out.with_name(out.stem + rf.MANIFEST_SUFFIX)
        rf.write_manifest(manifest, "compare-rm", command_line(args, "compare-rm"), {"compare_rm": out.name})
        print(f"written: {out}")
    return 0
