"""alignscope's monitors inside real TRL trainers (`alignscope.integrations.trl`), on the tiny model.

The displacement monitor must report exactly what alignscope's own engine (`training.monitor.evaluate`)
measures on the same weights and pairs; the reward-variance monitor must report the variances of the
rewards the trainer computed, checked by hand.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install 'alignscope[trl]')")

from datasets import Dataset  # noqa: E402

from alignscope import run_files as rf  # noqa: E402
from alignscope.data.records import PairExample  # noqa: E402
from alignscope.diagnostics.displacement import displacement_stats  # noqa: E402
from alignscope.diagnostics.warnings import DISPLACEMENT_FIX, FLAT_OBJECTIVE_FIX  # noqa: E402
from alignscope.errors import ConfigError, DataError  # noqa: E402
from alignscope.integrations.trl import DisplacementMonitor, RewardVarianceMonitor, eval_pairs_from  # noqa: E402
from alignscope.models.scoring import pad_token_id, score_sequences  # noqa: E402
from alignscope.report.html import render_report  # noqa: E402
from alignscope.training.config import TrainConfig  # noqa: E402
from alignscope.training.methods.dpo import DPO  # noqa: E402
from alignscope.training.monitor import evaluate  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# High-CHES pairs (the rejected response is a preamble plus the chosen one, as in the lab's refusal-opener
# pairs): lowering the rejected response lowers the chosen one with it, which is likelihood displacement.
ANSWERS = [" I will not do that.", " Paris is the capital of France.", " The quick brown fox jumps.", " Yes"]


def high_ches_pairs(prompts: list[str]) -> list[dict]:
    return [{"prompt": p, "chosen": a, "rejected": " Please answer politely and briefly:" + a} for p, a in zip(prompts, ANSWERS)]


PAIRS = high_ches_pairs(["Can you do this?", "What is the capital of France?", "Tell me about the fox.", "Will you help?"])
# Held out: other prompts; the last chosen response is short, so the mass-gainers monitor runs too.
EVAL = high_ches_pairs(["Do it now.", "Which city is the capital?", "What does the fox do?", "Answer yes or no:"])


def _section(page: str, name: str) -> str:
    """The verdict of one report section ('clean', 'flagged', ...)."""
    m = re.search(rf'data-section="{name}">.*?data-verdict="([^"]+)"', page, re.S)
    assert m, f"no {name} section"
    return m.group(1)


# --- DPO: the displacement monitor


def test_dpo_monitor_writes_alignscope_files_equal_to_its_own_engine(tiny_model, bpe_tokenizer, tmp_path, capsys):
    """High-CHES pairs at a high learning rate: the chosen log-probs of held-out pairs fall while the margin grows."""
    from trl import DPOConfig, DPOTrainer

    out = tmp_path / "dpo"
    start_weights, ours_ref = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=4, max_steps=4, learning_rate=0.1, logging_steps=1,
                     eval_steps=2, save_strategy="steps", save_steps=4, report_to="none", use_cpu=True, bf16=False,
                     disable_dropout=True)
    trainer = DPOTrainer(model=tiny_model.train(), ref_model=copy.deepcopy(tiny_model).eval(), args=args,
                         train_dataset=Dataset.from_list(PAIRS), processing_class=bpe_tokenizer)
    DisplacementMonitor(EVAL).attach(trainer)  # eval_steps from the trainer's args
    trainer.train()

    for name in (rf.DISPLACEMENT, rf.EVAL_LOGPS, rf.PITFALLS, rf.EVAL_START):
        assert (out / name).is_file(), name
    logps, disp = rf.read_jsonl(out / rf.EVAL_LOGPS), rf.read_jsonl(out / rf.DISPLACEMENT)
    assert [r["step"] for r in logps] == [r["step"] for r in disp] == [0, 2, 4]
    pitfalls = [p for p in rf.read_jsonl(out / rf.PITFALLS) if p["name"] == "likelihood displacement"]
    assert pitfalls and all(p["mitigation"] == DISPLACEMENT_FIX for p in pitfalls)
    printed = capsys.readouterr().out
    assert "alignscope: warning: likelihood displacement" in printed and DISPLACEMENT_FIX in printed

    # alignscope's own engine, on the same pairs, the start weights and the final weights.
    records = [PairExample(r["prompt"], r["chosen"], r["rejected"]) for r in EVAL]
    items = DPO(TrainConfig(method="dpo", data="x", max_prompt_length=None)).eval_items(records, bpe_tokenizer)
    pad = pad_token_id(bpe_tokenizer)
    ref_lp = score_sequences(ours_ref, [it.prompt_ids for it in items for _ in range(2)],
                             [r for it in items for r in it.responses[:2]], pad_id=pad).logps.view(-1, 2)
    ref = {i: ref_lp[i].tolist() for i in range(len(items))}
    final_weights = copy.deepcopy(start_weights)
    final_weights.load_state_dict(trainer.model.state_dict())
    start, final = (evaluate(m, items, ref, pad, 0.1, 8) for m in (start_weights, final_weights))
    for row, ours in ((logps[0], start), (logps[-1], final)):
        for side in ("chosen", "rejected"):
            np.testing.assert_allclose(row[side], ours[side], atol=1e-5, rtol=0)
    stats = displacement_stats(start["chosen"], final["chosen"], start["rejected"], final["rejected"])
    for key, value in stats.items():
        assert disp[-1][key] == pytest.approx(value, abs=1e-5), key
    assert disp[-1]["implicit_reward_accuracy"] == pytest.approx(final["implicit_reward_accuracy"], abs=1e-5)
    assert disp[0]["implicit_reward_accuracy"] == pytest.approx(start["implicit_reward_accuracy"], abs=1e-5)
    assert disp[-1]["mass_gainers"], "the short pair's first-token mass moved"

    # The trainer's own logs (what report_to receives) carry the same numbers, on the eval steps' rows.
    logged = {h["step"]: h for h in trainer.state.log_history if "alignscope/fraction_chosen_fell" in h}
    assert sorted(logged) == [2, 4]
    for row in disp[1:]:
        assert logged[row["step"]]["alignscope/mean_chosen_change"] == row["mean_chosen_change"]
        assert logged[row["step"]]["alignscope/implicit_reward_accuracy"] == row["implicit_reward_accuracy"]

    # The report reads a TRL output dir: TRL's curves (checkpoint-4/trainer_state.json) and the monitor's files.
    page = render_report(out)
    assert "TRL run" in page and _section(page, "displacement") == "flagged" and _section(page, "training") == "measured"


@pytest.mark.parametrize("setup", ["peft", "precompute", "kto", "orpo"])
def test_each_trainer_s_reference_is_the_monitor_s(setup, tiny_model, bpe_tokenizer, tmp_path, monkeypatch):
    """peft: the adapter disabled; precomputed reference log-probs: the policy at train start; KTO: its
    reference model (loaded by TRL from the policy's path); ORPO: none, so no implicit-reward accuracy."""
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    common = dict(output_dir=str(tmp_path / setup), max_steps=2, learning_rate=0.1, logging_steps=1, eval_steps=1,
                  save_strategy="no", report_to="none", use_cpu=True, bf16=False)
    data = Dataset.from_list(PAIRS)
    if setup == "peft":
        peft = pytest.importorskip("peft")
        model = peft.get_peft_model(tiny_model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        trainer = DPOTrainer(model=model, args=DPOConfig(per_device_train_batch_size=4, **common), train_dataset=data,
                             processing_class=bpe_tokenizer)
    elif setup == "precompute":
        trainer = DPOTrainer(model=tiny_model, args=DPOConfig(per_device_train_batch_size=4, precompute_ref_log_probs=True, **common),
                             train_dataset=data, processing_class=bpe_tokenizer)
    elif setup == "kto":
        tiny_model.save_pretrained(tmp_path / "policy")
        rows = [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"} for r in PAIRS for side in ("chosen", "rejected")]
        trainer = KTOTrainer(model=str(tmp_path / "policy"), args=KTOConfig(per_device_train_batch_size=8, **common),
                             train_dataset=Dataset.from_list(rows), processing_class=bpe_tokenizer)
    else:
        monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        trainer = ORPOTrainer(model=tiny_model, args=ORPOConfig(per_device_train_batch_size=4, **common), train_dataset=data,
                              processing_class=bpe_tokenizer)
    DisplacementMonitor(EVAL, log=lambda _: None).attach(trainer)
    trainer.train()
    rows = rf.read_jsonl(tmp_path / setup / rf.DISPLACEMENT)
    assert [r["step"] for r in rows] == [0, 1, 2]
    if setup == "orpo":
        assert all("implicit_reward_accuracy" not in r for r in rows)
    else:  # the reference is the initial policy: every implicit reward starts at 0, a tie counting 1/2
        assert rows[0]["implicit_reward_accuracy"] == 0.5 and all("implicit_reward_accuracy" in r for r in rows)


def test_a_resumed_dpo_run_measures_against_the_same_start(tiny_model, bpe_tokenizer, tmp_path):
    """Resuming from checkpoint-2 keeps the logged start and the rows up to step 2, and re-logs the rest."""
    from trl import DPOConfig, DPOTrainer

    out = tmp_path / "dpo"
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=4, max_steps=4, learning_rate=0.1, logging_steps=1,
                     eval_steps=2, save_strategy="steps", save_steps=2, report_to="none", use_cpu=True, bf16=False)

    def run(resume: str | None) -> list[dict]:
        model = copy.deepcopy(tiny_model)
        trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(tiny_model), args=args, train_dataset=Dataset.from_list(PAIRS),
                             processing_class=bpe_tokenizer)
        DisplacementMonitor(EVAL, log=lambda _: None).attach(trainer)
        trainer.train(resume_from_checkpoint=resume)
        return rf.read_jsonl(out / rf.DISPLACEMENT)

    whole = run(None)
    resumed = run(str(out / "checkpoint-2"))
    assert [r["step"] for r in resumed] == [0, 2, 4]
    for a, b in zip(whole, resumed):
        for key in ("mean_chosen_change", "fraction_chosen_fell", "implicit_reward_accuracy"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), (a["step"], key)


def test_dpo_monitor_without_its_trainer_says_how_to_add_it(tiny_model, bpe_tokenizer, tmp_path):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, report_to="none", use_cpu=True,
                     bf16=False, save_strategy="no")
    trainer = DPOTrainer(model=tiny_model, ref_model=copy.deepcopy(tiny_model), args=args, train_dataset=Dataset.from_list(PAIRS),
                         processing_class=bpe_tokenizer, callbacks=[DisplacementMonitor(EVAL)])
    with pytest.raises(ConfigError, match=r"attach\(trainer\)"):
        trainer.train()


def test_eval_pairs_accept_trl_rows_and_records_and_name_a_bad_row():
    chat = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
            "rejected": [{"role": "assistant", "content": "go away"}]}
    pairs = eval_pairs_from([PAIRS[0], chat, PairExample("p", "a", "b")])
    assert pairs[1] == PairExample([{"role": "user", "content": "hi"}], "hello", "go away")
    with pytest.raises(DataError, match=r"eval_pairs\[1\].*chosen"):
        eval_pairs_from([PAIRS[0], {"prompt": "x", "rejected": "y"}])
    with pytest.raises(DataError, match="no eval pairs"):
        eval_pairs_from([])


# --- GRPO / RLOO: the reward-variance monitor

PROMPTS = ["What is", "Please answer", "Numbers:", "The quick brown fox"]
CONSTANT = {"What is": 3.0, "Numbers:": 0.0}  # the reward on these prompts ignores the completion


@pytest.fixture()
def policy_dir(tiny_model, bpe_tokenizer, tmp_path) -> Path:
    """The tiny policy as a folder: TRL builds its reference model (beta > 0) from the policy's path."""
    path = tmp_path / "policy"
    tiny_model.save_pretrained(path)
    bpe_tokenizer.save_pretrained(path)
    return path


def _train(kind: str, policy_dir: Path, tokenizer, out: Path, monitor: RewardVarianceMonitor, reward_funcs, steps: int = 2,
           beta: float = 0.0):
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config, trainer_cls = (GRPOConfig, GRPOTrainer) if kind == "grpo" else (RLOOConfig, RLOOTrainer)
    args = config(output_dir=str(out), per_device_train_batch_size=16, num_generations=4, max_completion_length=6,
                  max_steps=steps, logging_steps=1, learning_rate=1e-3, beta=beta, save_strategy="no", report_to="none",
                  use_cpu=True, bf16=False)
    trainer = trainer_cls(model=str(policy_dir), args=args, processing_class=tokenizer, callbacks=[monitor],
                          train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]),
                          reward_funcs=monitor.wrap(reward_funcs))
    trainer.train()
    return trainer


def _by_position(scale: float, calls: list):
    """Constant on half the prompts; elsewhere 0, 1, 2, 3 (times `scale`) across each group's 4 completions,
    so each group's variance is known exactly whatever the tiny model samples."""

    def half_constant(prompts, completions, **kwargs):
        rewards = [CONSTANT[p] if p in CONSTANT else scale * (i % 4) for i, p in enumerate(prompts)]
        calls.append((list(prompts), rewards))
        return rewards

    return half_constant


def test_grpo_flags_exactly_the_prompts_where_the_reward_is_constant(policy_dir, bpe_tokenizer, tmp_path):
    calls: list = []
    monitor = RewardVarianceMonitor()
    trainer = _train("grpo", policy_dir, bpe_tokenizer, tmp_path / "grpo", monitor, [_by_position(1.0, calls)])
    rows = rf.read_jsonl(tmp_path / "grpo" / rf.REWARD_VARIANCE_STEPS)
    assert [r["step"] for r in rows] == [1, 2] and len(calls) == 2
    for row, (prompts, rewards) in zip(rows, calls):
        group_prompts = prompts[::4]
        # By hand: the unbiased variance of each group's 4 rewards; 0, 1, 2, 3 gives 5/3.
        by_hand = []
        for g in range(4):
            r = rewards[4 * g : 4 * g + 4]
            mean = sum(r) / 4
            by_hand.append(sum((x - mean) ** 2 for x in r) / 3)
        assert row["variances"] == pytest.approx(by_hand, abs=1e-12)
        assert sorted(set(by_hand)) == pytest.approx([0.0, 5 / 3])
        # Standardised over the batch: every reward of the step, mean 1.5, unbiased variance 28/15.
        assert row["standardized_variances"] == pytest.approx([v / (28 / 15) for v in by_hand], abs=1e-9)
        assert sorted(row["low_variance_prompts"]) == sorted(p for p in group_prompts if p in CONSTANT)
        assert row["low_variance_fraction"] == 0.5
    # Half the prompts flat is not most of them: the detector's rule (more than half) does not fire.
    assert not (tmp_path / "grpo" / rf.PITFALLS).exists()
    logged = [h for h in trainer.state.log_history if "alignscope/reward_variance/low_fraction" in h]
    assert [h["alignscope/reward_variance/low_fraction"] for h in logged] == [0.5, 0.5]


def test_grpo_writes_and_prints_the_flat_objective_once(policy_dir, bpe_tokenizer, tmp_path, capsys):
    """The other half varies too, but 300x less than the reward's spread across prompts: standardised,
    every prompt is flat, which is the flat objective (Razin et al.)."""
    calls: list = []
    _train("grpo", policy_dir, bpe_tokenizer, tmp_path / "grpo", RewardVarianceMonitor(), [_by_position(0.01, calls)])
    rows = rf.read_jsonl(tmp_path / "grpo" / rf.REWARD_VARIANCE_STEPS)
    for row, (prompts, _) in zip(rows, calls):
        constant = [v for v, p in zip(row["variances"], prompts[::4]) if p in CONSTANT]
        varying = [v for v, p in zip(row["variances"], prompts[::4]) if p not in CONSTANT]
        assert constant == [0.0, 0.0] and varying == pytest.approx([0.01**2 * 5 / 3] * 2)
        assert row["low_variance_fraction"] == 1.0
    pitfalls = rf.read_jsonl(tmp_path / "grpo" / rf.PITFALLS)
    assert [(p["step"], p["name"], p["mitigation"]) for p in pitfalls] == [(1, "flat RL objective", FLAT_OBJECTIVE_FIX)]
    assert capsys.readouterr().out.count("alignscope: warning: flat RL objective") == 1


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_a_gold_reward_gives_proxy_gold_and_kl_rows(kind, policy_dir, bpe_tokenizer, tmp_path):
    golds: list = []

    def gold(prompts, completions, **kwargs):
        values = [len(c) / 10 for c in completions]
        golds.append(values)
        return values

    def proxy(prompts, completions, **kwargs):
        return [int(hashlib.sha256(c.encode()).hexdigest()[:6], 16) / 16**6 for c in completions]

    out = tmp_path / kind
    trainer = _train(kind, policy_dir, bpe_tokenizer, out, RewardVarianceMonitor(gold=gold), [proxy], steps=3, beta=0.04)
    rows = rf.read_jsonl(out / rf.RL_METRICS)
    assert [r["step"] for r in rows] == [1, 2, 3] and len(golds) == 3
    history = {h["step"]: h for h in trainer.state.log_history if "kl" in h}
    for row, values in zip(rows, golds):
        assert row["gold_reward"] == pytest.approx(sum(values) / len(values), abs=1e-12)
        h = history[row["step"]]
        assert row["proxy_reward"] == pytest.approx(h["reward"], abs=1e-6)
        assert row["kl"] == pytest.approx(h["kl"] * h["completions/mean_length"], abs=1e-9)
    summary = json.loads((out / rf.OVEROPTIMIZATION).read_text())
    assert summary["gold_peak"]["peak_gold"] == pytest.approx(max(r["gold_reward"] for r in rows))
    page = render_report(out)
    assert _section(page, "overoptimization") in ("clean", "flagged")


def test_reward_models_cannot_be_wrapped_and_an_unwrapped_monitor_says_so(policy_dir, bpe_tokenizer, tmp_path):
    monitor = RewardVarianceMonitor()
    with pytest.raises(ConfigError, match="as a function"):
        monitor.wrap(["some-org/some-reward-model"])
    with pytest.raises(ConfigError, match=r"monitor\.wrap"):
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, max_completion_length=4,
                          max_steps=1, report_to="none", use_cpu=True, bf16=False, save_strategy="no")
        GRPOTrainer(model=str(policy_dir), args=args, processing_class=bpe_tokenizer, callbacks=[RewardVarianceMonitor()],
                    train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]),
                    reward_funcs=[lambda prompts, completions, **kw: [0.0] * len(prompts)]).train()


# --- the examples, with 1-2 steps on the lab's tiny model


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_trl_dpo_monitor_runs(lab_tiny, tmp_path):
    out = _example("trl_dpo_monitor").main(["--steps", "2", "--eval-steps", "1", "--pairs", "16", "--out", str(tmp_path / "dpo")])
    assert [r["step"] for r in rf.read_jsonl(out / rf.DISPLACEMENT)] == [0, 1, 2]
    assert _section(render_report(out), "displacement") in ("clean", "flagged")


def test_example_trl_grpo_variance_runs(lab_tiny, tmp_path):
    out = _example("trl_grpo_variance").main(["--steps", "1", "--prompts", "8", "--max-new-tokens", "8", "--out", str(tmp_path / "grpo")])
    rows = rf.read_jsonl(out / rf.REWARD_VARIANCE_STEPS)
    assert len(rows) == 1 and len(rows[0]["variances"]) == 4
    assert rf.read_jsonl(out / rf.RL_METRICS)[0]["gold_reward"] is not None
