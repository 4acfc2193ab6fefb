"""`alignscope train sft|rm|dpo|kto|rank|rl --config FILE.yaml [key=value ...]`."""

from __future__ import annotations

import argparse

from alignscope.options import (
    build_config,
    load_yaml,
    merge,
    options_help,
    parse_overrides,
)
from alignscope.training.config import METHODS, RLConfig, TrainConfig

DESCRIPTIONS = {
    "sft": "supervised fine-tuning on prompt/completion or chat data",
    "rm": "a Bradley-Terry reward model from pairwise data (optionally a k-head ensemble)",
    "dpo": "direct preference optimisation and its variants (every direct preference loss, ORPO)",
    "kto": "KTO on unpaired desirable/undesirable examples",
    "rank": "ranked lists: Plackett-Luce DPO, PRO, or Curry-DPO's pairs",
    "rl": "on-policy RL from a reward (reinforce, rloo, grpo, dr_grpo, ppo)",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model: sft, rm (reward model), dpo (and every direct preference loss), kto, rank, rl",
                       description="Train a model. Options come from --config and key=value overrides; "
                                   "`alignscope train METHOD --help` describes each.")
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True)
    for method in METHODS + ("rl",):
        cls = RLConfig if method == "rl" else TrainConfig
        m = methods.add_parser(
            method, help=DESCRIPTIONS[method], description=f"Train: {DESCRIPTIONS[method]}.",
            epilog="options (YAML keys or key=value overrides):\n" + "\n".join(options_help(cls)),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        m.add_argument("--config", help="YAML file with training options")
        m.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in output_dir")
        m.add_argument("--overwrite", action="store_true", help="replace the run already in output_dir (without it, a folder holding a run is refused)")
        m.add_argument("overrides", nargs="*", help="key=value options overriding the config, e.g. beta=0.05 loss=[sigmoid,sft:0.2]")
        m.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raw = load_yaml(args.config) if args.config else {}
    raw = merge(raw, parse_overrides(args.overrides))
    if args.method == "rl":
        from alignscope.training.rl import train_rl

        train_rl(build_config(RLConfig, raw), resume=args.resume, overwrite=args.overwrite)
        return 0
    raw["method"] = args.method
    cfg = build_config(TrainConfig, raw)
    from alignscope.training.loop import train

    train(cfg, resume=args.resume, overwrite=args.overwrite)
    return 0
