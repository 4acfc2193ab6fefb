"""RLOO and GRPO raise the reward of the lab's tiny model; flat prompts are reported and skipped;
a run interrupted mid-way resumes to the same result."""

from __future__ import annotations

import json

import pytest
import torch

from alignscope.rollout.generation import GenerationConfig, generate
from alignscope.training.checkpoint import list_checkpoints
from alignscope.training.rl import RLConfig, train_rl
from alignscope.world.generate import prompt_data
from alignscope.world.gold import gold_rewards
from alignscope.world.language import default_world

PROMPTS = [p.prompt for p in prompt_data(default_world(0), 32, seed=1)]


def rl(tmp_path, lab_tiny, name, **over):
    import copy

    model, tok = copy.deepcopy(lab_tiny[0]), lab_tiny[1]
    opts = {"algorithm": "rloo", "output_dir": str(tmp_path / name), "steps": 30,
            "prompts_per_step": 8, "samples_per_prompt": 8, "max_new_tokens": 16, "lr": 2e-4, "kl_coef": 0.0, "progress": False, **over}
    return model, tok, RLConfig(**opts)


def mean_gold(model, tok) -> float:
    ro = generate(model, tok, PROMPTS, GenerationConfig(max_new_tokens=16, n=4, seed=123))
    return float(torch.tensor(gold_rewards([PROMPTS[i] for i in ro.prompt_index], ro.texts)).mean())


@pytest.mark.parametrize("algorithm", ["rloo", "grpo", "ppo"])
def test_rl_raises_gold_reward(tmp_path, lab_tiny, algorithm):
    model, tok, cfg = rl(tmp_path, lab_tiny, algorithm, algorithm=algorithm, **({"lr": 1e-4, "num_iterations": 2} if algorithm == "ppo" else {}))
    before = mean_gold(model, tok)
    train_rl(cfg, model=model, tokenizer=tok, prompts=PROMPTS, reward=gold_rewards, log=lambda *a: None)
    after = mean_gold(model, tok)
    assert after > before + 0.2, (before, after)


def test_zero_variance_prompts_reported_and_skipped(tmp_path, lab_tiny):
    from alignscope.data.records import prompt_text

    def half_constant(prompts, responses):
        return [0.5 if len(prompt_text(p)) % 2 == 0 else len(r) / 10 for p, r in zip(prompts, responses)]

    flat = [p for p in PROMPTS if len(prompt_text(p)) % 2 == 0]
    assert 0.2 < len(flat) / len(PROMPTS) < 0.8
    model, tok, cfg = rl(tmp_path, lab_tiny, "plain", steps=2)
    train_rl(cfg, model=model, tokenizer=tok, prompts=PROMPTS, reward=half_constant, log=lambda *a: None)
    rows = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["zero_variance_fraction"] > 0.1 for r in rows)
    model, tok, cfg = rl(tmp_path, lab_tiny, "dynamic", steps=2, dynamic_sampling=True)
    train_rl(cfg, model=model, tokenizer=tok, prompts=PROMPTS, reward=half_constant, log=lambda *a: None)
    rows = [json.loads(line) for line in (tmp_path / "dynamic" / "metrics.jsonl").read_text().splitlines()]
    variances = [json.loads(line)["variances"] for line in (tmp_path / "dynamic" / "reward_variance.jsonl").read_text().splitlines()]
    assert all(r["groups_sampled"] > cfg.prompts_per_step for r in rows)  # flat groups were dropped and refilled
    assert all(v > cfg.variance_threshold for step in variances for v in step)
    assert all(r["reward_variance/low_fraction"] == 0.0 for r in rows)


def test_interrupted_rl_run_resumes_exactly(tmp_path, lab_tiny):
    calls = {"n": 0}

    def dying_gold(prompts, responses):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt  # a kill in the middle of step 6, after step 5 logged its samples
        return gold_rewards(prompts, responses)

    model, tok, cfg = rl(tmp_path, lab_tiny, "full", steps=6, save_steps=2, algorithm="grpo")
    train_rl(cfg, model=model, tokenizer=tok, prompts=PROMPTS, reward=gold_rewards, log=lambda *a: None)
    full = {k: v.clone() for k, v in model.state_dict().items()}
    model, tok, cfg = rl(tmp_path, lab_tiny, "killed", steps=6, save_steps=2, algorithm="grpo")
    with pytest.raises(KeyboardInterrupt):
        train_rl(cfg, model=model, tokenizer=tok, prompts=PROMPTS, reward=dying_gold, log=lambda *a: None)
    assert [p.name for p in list_checkpoints(tmp_path / "killed")] == ["checkpoint-2", "checkpoint-4"]
    model, tok, cfg = rl(tmp_path, lab_tiny, "killed", steps=6, save_steps=2, algorithm="grpo")
    train_rl(cfg, resume=True, model=model, tokenizer=tok, prompts=PROMPTS, reward=gold_rewards, log=lambda *a: None)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, full[k], atol=1e-6, rtol=0)
    a = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    b = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert json.loads(x)["loss"] == pytest.approx(json.loads(y)["loss"], abs=1e-6)
    # The samples of step 5, logged before the kill, are cut back with the checkpoint (step 4), not appended twice.
    steps = [[json.loads(line)["step"] for line in (tmp_path / run / "completions.jsonl").read_text().splitlines()] for run in ("full", "killed")]
    assert steps[0] == steps[1] and 5 in steps[0]


def test_ppo_clips_against_the_rollout_policy():
    """PPO's old log-probs, old values and GAE advantages are fixed at the rollout: a second epoch
    sees ratios != 1 and value clipping that binds, not a REINFORCE step repeated."""
    from alignscope.losses import policy_gradient as pg
    from alignscope.training.rl import compute_advantages

    cfg = RLConfig(algorithm="ppo", prompts="x", reward="x", samples_per_prompt=2, gae_lambda=1.0)
    scores = torch.tensor([[1.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    values = torch.tensor([[0.5, 0.5], [0.2, 0.0]])
    adv, returns = compute_advantages(cfg, scores, mask, torch.zeros(2, 2), 0.0, values)
    # gamma = lambda = 1: returns are the final reward at every valid token; advantages = returns - V, whitened.
    torch.testing.assert_close(returns, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    raw = torch.tensor([0.5, 0.5, -0.2])
    torch.testing.assert_close(adv[mask], (raw - raw.mean()) / (raw.std() + 1e-8))
    # After an update the value head fits the returns exactly, a move larger than the clip range:
    # against the rollout's values the clipped term still charges for it; against itself it would not.
    clipped = pg.value_loss(returns.clone(), values, returns, mask, clip=0.2)
    assert clipped == pytest.approx(0.5 * (2 * 0.3**2 + 0.0) / 3)
    assert pg.value_loss(returns.clone(), returns.clone(), returns, mask, clip=0.2) == 0.0


def test_rl_monitor_reports_gold_peak_and_gao_fit(tmp_path, lab_tiny):
    model, tok, cfg = rl(tmp_path, lab_tiny, "monitor", steps=4, save_steps=2)
    train_rl(cfg, model=model, tokenizer=tok, prompts=PROMPTS, reward=lambda p, r: [len(x) / 10 for x in r],
             gold=gold_rewards, log=lambda *a: None)
    summary = json.loads((tmp_path / "monitor" / "overoptimization.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "monitor" / "rl_metrics.jsonl").read_text().splitlines()]
    gold = [r["gold_reward"] for r in rows]
    assert summary["gold_peak"]["peak_gold"] == pytest.approx(max(gold))
    assert summary["gold_peak"]["peak_step"] == rows[gold.index(max(gold))]["step"]
    assert summary["checkpoints_kept"] == [2, 4]
    assert summary["nearest_checkpoint_to_peak"] in (2, 4)
    assert set(summary["gao_fit_rl"]) >= {"alpha", "beta", "r2", "d_peak"}


def test_flat_objective_warned_once(tmp_path, lab_tiny):
    from alignscope.data.records import prompt_text

    def mostly_constant(prompts, responses):
        return [len(r) / 10 if len(prompt_text(p)) % 4 == 0 else 0.5 for p, r in zip(prompts, responses)]

    flat_share = sum(len(prompt_text(p)) % 4 != 0 for p in PROMPTS) / len(PROMPTS)
    assert flat_share > 0.6
    model, tok, cfg = rl(tmp_path, lab_tiny, "flat", steps=2, prompts_per_step=16)
    said = []
    train_rl(cfg, model=model, tokenizer=tok, prompts=PROMPTS, reward=mostly_constant, log=said.append)
    pitfalls = [json.loads(line) for line in (tmp_path / "flat" / "pitfalls.jsonl").read_text().splitlines()]
    assert [p["name"] for p in pitfalls] == ["flat RL objective"]  # once, at the first step
    assert pitfalls[0]["step"] == 1 and pitfalls[0]["size"] > 0.5
    assert any("flat RL objective" in line and "select-prompts" in line for line in said)


def test_prompt_file_mapped_and_sent_as_chat(tmp_path, lab_tiny):
    """`map` and `as_chat` reach the RL prompts: a `question` file arrives as one user message per prompt."""
    path = tmp_path / "questions.jsonl"
    questions = [p[-1]["content"] for p in PROMPTS[:4]]  # the lab's chats as plain text
    path.write_text("".join(json.dumps({"question": q, "answer": "x"}) + "\n" for q in questions))
    seen = []

    def record(prompts, responses):
        seen.extend(prompts)
        return [float(len(r) % 3) for r in responses]

    model, tok, cfg = rl(tmp_path, lab_tiny, "chat", steps=1, prompts=str(path), map={"prompt": "question"}, as_chat=True,
                         prompts_per_step=4, samples_per_prompt=2, max_new_tokens=4)
    train_rl(cfg, model=model, tokenizer=tok, reward=record, log=lambda *a: None)
    assert seen and all(p in [[{"role": "user", "content": q}] for q in questions] for p in seen)


def test_two_rewards_eval_prompts_completions_and_tensorboard(tmp_path, lab_tiny):
    from alignscope.report import build_report

    def length(prompts, responses):
        return [len(r) / 10 for r in responses]

    model, tok, cfg = rl(tmp_path, lab_tiny, "multi", steps=2, prompts_per_step=4, samples_per_prompt=2, eval_steps=1,
                         eval_samples=2, log_completions=3, report_to=["tensorboard"])
    train_rl(cfg, model=model, tokenizer=tok, prompts=PROMPTS[:16], eval_prompts=PROMPTS[16:20],
             reward={"correct": gold_rewards, "length": length}, gold=gold_rewards, log=lambda *a: None)
    out = tmp_path / "multi"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        # the sum and each term, in training and on the held-out prompts (equal weights of 1: the sum is their total)
        assert r["reward/proxy_mean"] == pytest.approx(r["reward/correct_mean"] + r["reward/length_mean"], abs=1e-5)
        assert r["eval/proxy_mean"] == pytest.approx(r["eval/correct_mean"] + r["eval/length_mean"], abs=1e-5)
        assert "eval/gold_mean" in r and not any(k.startswith("eval/pass@") for k in r)  # gold rewards are not 0/1
    done = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert [c["step"] for c in done] == [1, 1, 1, 2, 2, 2]
    assert all(set(c["rewards"]) == {"correct", "length"} and c["rewards"]["length"] == pytest.approx(len(c["response"]) / 10)
               and c["gold"] == pytest.approx(c["rewards"]["correct"]) for c in done)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    page = build_report(out).read_text()
    assert "Sampled completions" in page and done[-1]["response"][:20].replace("&", "&amp;").replace("<", "&lt;") in page


def test_eval_pass_at_k_and_the_training_run_untouched_by_evaluation(tmp_path, lab_tiny):
    from alignscope.data.records import prompt_text
    from alignscope.rewards.weighted import RewardTerm, WeightedRewards
    from alignscope.training.rl import evaluate_policy

    model, tok, cfg = rl(tmp_path, lab_tiny, "passk", eval_samples=3)
    first = prompt_text(PROMPTS[0])
    only_first = WeightedRewards([RewardTerm("first", lambda p, r: [float(prompt_text(x) == first) for x in p])])
    res = evaluate_policy(model, tok, PROMPTS[:4], only_first, None, cfg, step=1)
    assert res["eval/pass@3"] == 0.25 and res["eval/proxy_mean"] == 0.25  # 1 prompt of 4 succeeds on all its samples
    # Evaluation samples with its own seed: two runs, one evaluating every step, end with the same weights.
    plain_model, _, plain = rl(tmp_path, lab_tiny, "plain", steps=2)
    evald_model, _, evald = rl(tmp_path, lab_tiny, "evald", steps=2, eval_steps=1)
    train_rl(plain, model=plain_model, tokenizer=tok, prompts=PROMPTS, reward=gold_rewards, log=lambda *a: None)
    train_rl(evald, model=evald_model, tokenizer=tok, prompts=PROMPTS, eval_prompts=PROMPTS[:4], reward=gold_rewards, log=lambda *a: None)
    for (name, a), b in zip(plain_model.state_dict().items(), evald_model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


def test_lora_with_checkpointing_trains_resumes_exactly_and_saves_merged(tmp_path, lab_tiny):
    """RL with a LoRA adapter and activation checkpointing: the reference is the adapter disabled (no copy),
    only the adapted layers change, and a run killed in step 5 resumes to the uninterrupted result."""
    from safetensors.torch import load_file

    from alignscope.training.config import LoraConfig

    lora = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    calls = {"n": 0}

    def dying_gold(prompts, responses):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return gold_rewards(prompts, responses)

    start = {k: v.clone() for k, v in lab_tiny[0].state_dict().items()}
    over = dict(steps=6, save_steps=2, algorithm="grpo", lr=5e-3, kl_coef=0.05, lora=lora, gradient_checkpointing=True)
    model, tok, cfg = rl(tmp_path, lab_tiny, "full", **over)
    train_rl(cfg, model=model, tokenizer=tok, prompts=PROMPTS, reward=gold_rewards, log=lambda *a: None)
    model, tok, cfg = rl(tmp_path, lab_tiny, "killed", **over)
    with pytest.raises(KeyboardInterrupt):
        train_rl(cfg, model=model, tokenizer=tok, prompts=PROMPTS, reward=dying_gold, log=lambda *a: None)
    model, tok, cfg = rl(tmp_path, lab_tiny, "killed", **over)
    train_rl(cfg, resume=True, model=model, tokenizer=tok, prompts=PROMPTS, reward=gold_rewards, log=lambda *a: None)
    full, resumed = (load_file(str(tmp_path / name / "final" / "model.safetensors")) for name in ("full", "killed"))
    assert (tmp_path / "full" / "final" / "adapter" / "adapter_config.json").exists()
    changed = set()
    for k, v in full.items():
        torch.testing.assert_close(resumed[k], v, atol=1e-6, rtol=0, msg=k)
        if not torch.equal(v, start[k]):
            changed.add(k.rsplit(".", 2)[-2])
    assert changed == {"q_proj", "v_proj"}  # merged adapters; every other weight is the base model's
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["kl"] > 0  # the adapter-disabled reference differs from the trained policy


@pytest.mark.parametrize("algorithm,loss_type", [("grpo", "grpo"), ("grpo", "bnpo"), ("grpo", "dr_grpo"), ("grpo", "dapo"), ("ppo", None)])
def test_micro_batches_give_the_same_update(tmp_path, lab_tiny, algorithm, loss_type):
    """Gradient accumulation over micro-batches of 3 sequences (uneven split) trains the same weights as whole
    mini-batches, with ratios away from 1 (2 passes of 2 mini-batches) and the entropy bonus on."""
    finals = []
    for micro in (None, 3):
        model, tok, cfg = rl(tmp_path, lab_tiny, f"{algorithm}-{loss_type}-{micro}", steps=1, prompts_per_step=4,
                             samples_per_prompt=2 if algorithm == "grpo" else 1, algorithm=algorithm, loss_type=loss_type,
                             num_iterations=2, steps_per_generation=2, entropy_coef=0.01, kl_coef=0.05, lr=1e-3,
                             micro_batch_size=micro)
        train_rl(cfg, model=model, tokenizer=tok, prompts=PROMPTS, reward=gold_rewards, log=lambda *a: None)
        finals.append({k: v.clone() for k, v in model.state_dict().items()})
    moved = 0
    for k, v in finals[0].items():
        # Adam's normalised step turns rounding in a near-zero gradient entry into up to lr (1e-3) per step: lr / 10.
        torch.testing.assert_close(finals[1][k], v, atol=1e-4, rtol=0)
        moved += not torch.equal(v, lab_tiny[0].state_dict()[k])
    assert moved > 0


HACKING = {"entropy collapse", "response-length drift", "KL outpacing reward", "held-out reward falling"}


def test_hacking_alarms_fire_on_a_gamed_reward_and_stay_silent_on_a_healthy_run(tmp_path, lab_tiny):
    """30 RLOO steps. Rewarding short answers at a high learning rate collapses the policy's entropy and its
    length; the gold reward with kl_coef 0.2 fires no alarm (seeds 0-2 checked when the detectors were tuned; with
    kl_coef 0.05 two of three seeds fire "KL outpacing reward", rightly: their reward fell 0.4-0.5 while the KL rose)."""
    def pitfalls(name: str) -> dict[str, dict]:
        path = tmp_path / name / "pitfalls.jsonl"
        return {p["name"]: p for p in map(json.loads, path.read_text().splitlines())} if path.exists() else {}

    model, tok, cfg = rl(tmp_path, lab_tiny, "gamed", steps=30, prompts_per_step=8, samples_per_prompt=4, lr=1e-3)
    train_rl(cfg, model=model, tokenizer=tok, prompts=PROMPTS, reward=lambda p, r: [-len(x.split()) / 10 for x in r], log=lambda *a: None)
    gamed = pitfalls("gamed")
    assert {"entropy collapse", "response-length drift"} <= set(gamed), gamed
    assert all(gamed[n]["mitigation"] for n in HACKING & set(gamed))
    model, tok, cfg = rl(tmp_path, lab_tiny, "healthy", steps=30, prompts_per_step=8, samples_per_prompt=4, kl_coef=0.2, seed=0)
    train_rl(cfg, model=model, tokenizer=tok, prompts=PROMPTS, eval_prompts=PROMPTS[:8], reward=gold_rewards, log=lambda *a: None)
    assert not HACKING & set(pitfalls("healthy")), pitfalls("healthy")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_alarm_fires_when_an_entropy_bonus_drives_the_policy_off(tmp_path, lab_tiny, seed):
    """30 RLOO steps on a short-answer proxy with an entropy bonus far too large (entropy_coef 0.1, lr 3e-4, no KL
    penalty): the proxy rises for ~15 steps, then the bonus pushes the policy towards uniform noise, so the KL climbs
    to ~100 nats while the proxy falls back. Fired on seeds 0-11 (and 0-4 with 8 samples) when built; the healthy
    run above stays silent."""
    model, tok, cfg = rl(tmp_path, lab_tiny, "entropy", steps=30, prompts_per_step=8, samples_per_prompt=4, lr=3e-4,
                         entropy_coef=0.1, seed=seed)
    train_rl(cfg, model=model, tokenizer=tok, prompts=PROMPTS, reward=lambda p, r: [-len(x.split()) / 10 for x in r], log=lambda *a: None)
    fired = {p["name"]: p for p in map(json.loads, (tmp_path / "entropy" / "pitfalls.jsonl").read_text().splitlines())}
    assert "KL outpacing reward" in fired, fired
    assert fired["KL outpacing reward"]["mitigation"]
    rows = [json.loads(line) for line in (tmp_path / "entropy" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["kl"] > 10 * rows[5]["kl"]  # the KL kept climbing after the early gain


def test_heldout_alarm_fires_on_a_run_built_to_trigger_it(tmp_path, lab_tiny):
    """A 30-step RLOO run whose proxy pays short answers on the training prompts and long ones on every other prompt,
    evaluated every 3 steps on 8 other prompts: the training proxy rises while the held-out one falls (fired on
    seeds 0-2 when built). The healthy run of the test above stays silent with held-out evaluation on."""
    from alignscope.data.records import prompt_text

    train_set = {prompt_text(p) for p in PROMPTS[:16]}

    def split_reward(prompts, responses):
        return [(-1 if prompt_text(p) in train_set else 1) * len(r.split()) / 10 for p, r in zip(prompts, responses)]

    model, tok, cfg = rl(tmp_path, lab_tiny, "heldout", steps=30, prompts_per_step=8, samples_per_prompt=4, lr=3e-4, eval_steps=3)
    train_rl(cfg, model=model, tokenizer=tok, prompts=PROMPTS[:16], eval_prompts=PROMPTS[16:24], reward=split_reward, log=lambda *a: None)
    path = tmp_path / "heldout" / "pitfalls.jsonl"
    fired = {p["name"]: p for p in map(json.loads, path.read_text().splitlines())}
    assert "held-out reward falling" in fired, fired
    assert fired["held-out reward falling"]["mitigation"]
