"""TRL's GRPOTrainer watched by alignscope's reward-variance monitor, with a gold reward (docs/trl.md).

    python examples/trl_grpo_variance.py --steps 10 --out runs/trl-grpo
    alignscope report runs/trl-grpo

The training reward is the lab's `ScaledGold`: the gold reward itself, scaled down 1000x on three
quarters of the prompts. It orders every pair of responses exactly as gold does, yet on those
prompts its variance is almost nil, so the objective is nearly flat there (Razin et al.): the
monitor flags them in reward_variance.jsonl and, once most of a step's prompts are flat, prints
the flat-objective pitfall. The gold reward is logged
beside it (rl_metrics.jsonl, overoptimization.json). Minutes on a CPU with the default lab model.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def completion_text(completion) -> str:
    """A TRL completion as text: a chat completion is a list of messages, the last one the response."""
    return completion[-1]["content"] if isinstance(completion, list) else completion


def trl_reward(source, name: str):
    """An alignscope reward source (prompts, responses) -> rewards as a TRL reward function, named `name`."""

    def reward(prompts, completions, **kwargs):
        return [float(r) for r in source(prompts, [completion_text(c) for c in completions])]

    reward.__name__ = name
    return reward


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lab:tiny", help="the policy: lab:tiny, smollm2, a model folder or a cached hub id")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps")
    p.add_argument("--out", default="runs/trl-grpo", help="the trainer's output_dir")
    p.add_argument("--prompts", type=int, default=64, help="training prompts")
    p.add_argument("--max-new-tokens", type=int, default=24, help="longest completion in tokens")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate")
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient (> 0 for the KL column of rl_metrics.jsonl)")
    args = p.parse_args(argv)

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from alignscope.integrations.trl import RewardVarianceMonitor
    from alignscope.models.loading import load_model_and_tokenizer
    from alignscope.world.generate import prompt_data
    from alignscope.world.gold import GoldReward, ScaledGold
    from alignscope.world.language import default_world

    world = default_world()
    gold = GoldReward(world)
    monitor = RewardVarianceMonitor(gold=trl_reward(gold, "gold"))
    # TRL builds its reference model from the policy's path, so the policy is given as a saved folder.
    model, tokenizer = load_model_and_tokenizer(args.model)
    init = Path(args.out) / "init"
    model.save_pretrained(init)
    tokenizer.save_pretrained(init)
    config = GRPOConfig(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=16, num_generations=4,
        max_completion_length=args.max_new_tokens, learning_rate=args.lr, beta=args.beta, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, bf16=False,
    )
    trainer = GRPOTrainer(
        model=str(init), args=config, processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"prompt": x.prompt} for x in prompt_data(world, args.prompts, seed=0)]),
        reward_funcs=monitor.wrap([trl_reward(ScaledGold(gold, fraction=0.75), "scaled_gold")]), callbacks=[monitor],
    )
    trainer.train()
    trainer.save_state()  # trainer_state.json: the report draws TRL's curves from it
    print(f"alignscope: reward-variance files in {args.out}; render them with: alignscope report {args.out}")
    return Path(args.out)


if __name__ == "__main__":
    main()
