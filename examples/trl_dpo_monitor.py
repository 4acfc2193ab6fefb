"""TRL's DPOTrainer watched by alignscope's likelihood-displacement monitor (docs/trl.md).

    python examples/trl_dpo_monitor.py --steps 20 --out runs/trl-dpo
    alignscope report runs/trl-dpo

Trains the lab's tiny pretrained model (or `--model smollm2`, a folder, a hub id) on pairs of the
lab language, with held-out pairs scored at the start and every `--eval-steps`. The output folder
gets TRL's checkpoints and alignscope's displacement.jsonl, eval_logps.jsonl and pitfalls.jsonl.
Minutes on a CPU with the default lab model.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path


def trl_row(pair) -> dict:
    """A PairExample as a TRL preference row: a chat prompt takes message-list responses."""
    if isinstance(pair.prompt, str):
        return {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}
    return {"prompt": pair.prompt, "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}]}


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lab:tiny", help="the policy: lab:tiny, smollm2, a model folder or a cached hub id")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps")
    p.add_argument("--out", default="runs/trl-dpo", help="the trainer's output_dir")
    p.add_argument("--pairs", type=int, default=64, help="training pairs (32 more are held out for the monitor)")
    p.add_argument("--eval-steps", type=int, default=5, help="score the held-out pairs every N steps")
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate")
    p.add_argument("--beta", type=float, default=0.1, help="DPO's beta")
    args = p.parse_args(argv)

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from alignscope.integrations.trl import DisplacementMonitor
    from alignscope.models.loading import load_model_and_tokenizer
    from alignscope.world.generate import pairwise_data
    from alignscope.world.language import default_world

    model, tokenizer = load_model_and_tokenizer(args.model)
    pairs = pairwise_data(default_world(), args.pairs + 32, seed=0)
    train, held_out = [trl_row(x) for x in pairs[: args.pairs]], [trl_row(x) for x in pairs[args.pairs :]]
    config = DPOConfig(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=8, learning_rate=args.lr, beta=args.beta,
        logging_steps=1, eval_steps=args.eval_steps, save_strategy="steps", save_steps=args.steps, report_to="none",
        use_cpu=True, bf16=False,
    )
    # The reference is a copy of the initial policy (TRL would otherwise reload it from the model's path).
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model).eval(), args=config,
                         train_dataset=Dataset.from_list(train), processing_class=tokenizer)
    DisplacementMonitor(held_out).attach(trainer)
    trainer.train()
    print(f"alignscope: displacement files in {args.out}; render them with: alignscope report {args.out}")
    return Path(args.out)


if __name__ == "__main__":
    main()
