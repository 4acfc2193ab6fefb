"""`alignscope train sft|rm|dpo|kto|rank --config FILE.yaml [key=value ...]`."""

from __future__ import annotations

import argparse
import dataclasses

from alignscope.config import build_config, load_yaml, merge, parse_overrides
from alignscope.training.config import METHODS, RLConfig, TrainConfig


def _options_help() -> str:
    lines = []
    for title, cls in (("sft, rm, dpo, kto, rank", TrainConfig), ("rl (algorithm: reinforce, rloo, grpo, dr_grpo, ppo)", RLConfig)):
        lines.append(f"options for {title} (YAML keys or key=value overrides):")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name} (default: {default!r})")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model: sft, rm (reward model), dpo (and every direct preference loss), kto, rank, rl",
        description="Train with one of the offline objectives. Options come from --config and key=value overrides.",
        epilog=_options_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("method", choices=METHODS + ("rl",), help="the objective")
    p.add_argument("--config", help="YAML file with training options")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in output_dir")
    p.add_argument("overrides", nargs="*", help="key=value options overriding the config, e.g. beta=0.05 loss=[sigmoid,sft:0.2]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raw = load_yaml(args.config) if args.config else {}
    raw = merge(raw, parse_overrides(args.overrides))
    if args.method == "rl":
        from alignscope.training.rl import train_rl

        train_rl(build_config(RLConfig, raw), resume=args.resume)
        return 0
    raw["method"] = args.method
    cfg = build_config(TrainConfig, raw)
    from alignscope.training.loop import train

    train(cfg, resume=args.resume)
    return 0
