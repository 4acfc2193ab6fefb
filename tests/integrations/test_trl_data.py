"""alignscope's data outputs go straight into TRL: `audit data --filter` writes pairs a DPOTrainer takes,
`select-prompts` writes prompts a GRPOTrainer takes, each through `load_dataset("json", ...)`, in the
form (conversational or plain) the input had. The real CLI commands run on the lab's tiny model and data.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install 'alignscope[trl]')")

from datasets import load_dataset  # noqa: E402
from trl.data_utils import is_conversational  # noqa: E402

from alignscope.cli.main import main  # noqa: E402
from alignscope.data.loader import load_data  # noqa: E402
from alignscope.data.records import PairExample  # noqa: E402
from alignscope.world.generate import pairwise_data, prompt_data  # noqa: E402
from alignscope.world.language import default_world  # noqa: E402

COMMON = dict(max_steps=2, learning_rate=1e-4, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False)


def _prompt(messages: list[dict], kind: str):
    """The lab's chat prompt as it is, or as plain text (its one user message)."""
    return messages if kind == "chat" else messages[-1]["content"]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _trained(trainer) -> bool:
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return trainer.state.global_step == 2 and len(losses) == 2


@pytest.mark.parametrize("kind", ["chat", "plain"])
def test_audit_data_filtered_pairs_train_trl_s_dpo(kind, lab_tiny, tmp_path, capsys):
    from trl import DPOConfig, DPOTrainer

    world = default_world(0)
    pairs = pairwise_data(world, 16, seed=3, noise=0.0)
    data = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": _prompt(p.prompt, kind), "chosen": p.chosen, "rejected": p.rejected,
                                                    "margin": p.margin} for p in pairs])
    assert main(["audit", "data", "--model", "lab:tiny", "--data", str(data), "--out", str(tmp_path / "audit"),
                 "--filter", "drop:0.25"]) == 0
    filtered = tmp_path / "audit" / "ches.filtered.jsonl"
    dataset = load_dataset("json", data_files=str(filtered), split="train")
    assert len(dataset) == 12 and {"prompt", "chosen", "rejected"} <= set(dataset.column_names)
    assert all(is_conversational(row) == (kind == "chat") for row in dataset)
    # alignscope reads its own output back as the very pairs it kept, margins included.
    given = [PairExample(_prompt(p.prompt, kind), p.chosen, p.rejected, p.margin) for p in pairs]
    read = load_data(filtered).examples
    assert len(read) == 12 and all(ex in given for ex in read)
    dropped = load_dataset("json", data_files=str(tmp_path / "audit" / "ches.filtered.dropped.jsonl"), split="train")
    assert len(dropped) == 4 and "ln_ches" in dropped.column_names

    model, tok = lab_tiny
    trainer = DPOTrainer(model=copy.deepcopy(model).train(), ref_model=copy.deepcopy(model).eval(), processing_class=tok,
                         args=DPOConfig(output_dir=str(tmp_path / "dpo"), per_device_train_batch_size=4, **COMMON),
                         train_dataset=dataset)
    assert _trained(trainer)


@pytest.mark.parametrize("kind", ["chat", "plain"])
def test_selected_prompts_train_trl_s_grpo(kind, lab_tiny, tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    world = default_world(0)
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": _prompt(p.prompt, kind), "answer": f"a{i}"}
                                                        for i, p in enumerate(prompt_data(world, 12, seed=2))])
    out = tmp_path / "selected.jsonl"
    assert main(["select-prompts", "--policy", "lab:tiny", "--prompts", str(prompts), "--reward", "lab:gold", "--n", "4",
                 "--max-new-tokens", "8", "--keep", "0.5", "--out", str(out)]) == 0
    dataset = load_dataset("json", data_files=str(out), split="train")
    assert len(dataset) == 6 and {"prompt", "answer", "reward_variance"} <= set(dataset.column_names)
    assert all(is_conversational(row) == (kind == "chat") for row in dataset)

    seen: list[dict] = []

    def length_reward(prompts, completions, **kwargs):
        seen.append(kwargs)
        return [float(len(c[-1]["content"] if isinstance(c, list) else c)) for c in completions]

    model, tok = lab_tiny
    policy = tmp_path / "policy"
    model.save_pretrained(policy)
    tok.save_pretrained(policy)
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4, num_generations=2, max_completion_length=6,
                      beta=0.0, **COMMON)
    trainer = GRPOTrainer(model=str(policy), reward_funcs=[length_reward], args=args, train_dataset=dataset, processing_class=tok)
    assert _trained(trainer)
    # The extra column reaches TRL's reward functions as a keyword, as any dataset column does.
    assert seen and all(len(kw["reward_variance"]) == 4 for kw in seen)
    assert all(a.startswith("a") for kw in seen for a in kw["answer"])  # the prompt file's own columns are kept
