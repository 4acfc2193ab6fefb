"""alignscope's pitfall monitors inside TRL's trainers, as plain `transformers.TrainerCallback`s.

`DisplacementMonitor` (DPOTrainer, KTOTrainer; ORPO/CPO through the policy alone) scores held-out
pairs at train start and every `eval_steps` with alignscope's own engine and monitor
(`training.monitor.evaluate` and `log_eval_point`, `training.metrics.MetricsLogger`), so a TRL run
gets the same `displacement.jsonl`, `eval_logps.jsonl` and `pitfalls.jsonl`, and the same printed
warning with its mitigation, as `alignscope train dpo`. It needs the trainer itself (its reference
model, its loggers), so it is added with `DisplacementMonitor(pairs).attach(trainer)`.

`RewardVarianceMonitor` (GRPOTrainer, RLOOTrainer) measures the per-prompt reward variance of the
groups the trainer already sampled and scored, and the flat-objective pitfall, as `alignscope train
rl` does; with a gold reward it writes proxy vs gold vs KL rows and the over-optimisation summary.

How the reward monitor sees the rewards: it wraps the reward functions,
`reward_funcs=monitor.wrap([f1, f2])`. TRL 1.16 computes each function's rewards in
`GRPOTrainer._calculate_rewards` into a local tensor; no callback event receives them (the
`on_log` logs hold only their batch means and stds, and the per-completion values sit in the
private `trainer._logs` deques, whose layout changes between releases). The reward function call
is TRL's public contract instead: it gets `prompts`, `completions`, `trainer_state` and a
`log_metric` function, in the order of the generation batch (each prompt repeated
`num_generations` times, consecutively). The wrapper returns the function's own values unchanged,
keeps the function's name (so TRL's `rewards/NAME/mean` metrics keep theirs), and records them;
nothing is sampled or scored again. Its numbers reach the trainer's loggers through that
`log_metric`, so `report_to` (TensorBoard, W&B) receives `alignscope/...` beside TRL's own.
Reward models given as a name or an `nn.Module` are called by TRL directly, not through a
function, so they cannot be wrapped: give them as a function that calls the model.

Dynamic sampling (DAPO: drop groups whose rewards are all equal, refill with new prompts) is not
offered for TRL, because TRL 1.16 has no public extension point that can change which groups a
step trains on. The generation batch has a fixed size that `_prepare_inputs` splits into
`steps_per_generation` equal slices (and across processes), the reward functions can only return
values (None makes a completion unscorable with advantage 0, which is what a flat group already
has), callbacks never see the batch, and the experimental `rollout_func` must return completions
for exactly the prompts it was given. Dropping and refilling would mean overriding the private
`_generate_and_score_completions`, which changes between releases. What works with TRL unchanged:
select prompts by reward variance before training with `alignscope select-prompts` (its JSONL
output has TRL's `prompt` column) and train on those; this monitor then shows how the variance of
the selected prompts holds up as the policy moves (docs/trl.md).

Both monitors record on the main process only. Under FSDP (v2) the displacement monitor scores the
sharded policy and reference on every process, each gathering the weights block by block as in
training (`models.fsdp.sharded_forwards`), with the same forwards on each, and the main process
writes; it refuses FSDP v1 and DeepSpeed ZeRO-3. Under data parallelism the reward monitor sees the
main process's share of each generation batch.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from alignscope import run_files as rf
from alignscope.atomic import write_text
from alignscope.data.formats import to_pairwise
from alignscope.data.records import PairExample, Prompt, prompt_text
from alignscope.diagnostics.variance import low_variance_fraction, per_prompt_variance, standardize_global
from alignscope.diagnostics.warnings import detect_flat_objective
from alignscope.errors import ConfigError, DataError
from alignscope.models.fsdp import sharded_forwards, shards_model
from alignscope.models.scoring import check_context, max_positions, pad_token_id
from alignscope.training.config import TrainConfig
from alignscope.training.items import Item
from alignscope.training.loop import compute_reference_logps
from alignscope.training.methods.dpo import DPO
from alignscope.training.metrics import MetricsLogger
from alignscope.training.monitor import evaluate, log_eval_point
from alignscope.training.rl import overoptimization_summary

if TYPE_CHECKING:
    from transformers import Trainer

PREFIX = "alignscope/"  # the name space of the monitors' numbers in the trainer's logs
# The standardised variance at or below which a prompt counts as flat: the flat-objective detector's own default.
FLAT_THRESHOLD: float = inspect.signature(detect_flat_objective).parameters["threshold"].default
# Keys of a displacement row that are not curves: the pair count and the (constant) starting accuracy.
_NOT_LOGGED = ("step", "n_pairs", "ranking_accuracy_start")


def _trl():
    """TRL's helpers, imported when first needed so this module loads without TRL installed."""
    try:
        from trl.trainer import utils
    except ImportError:
        raise ConfigError("the TRL callbacks need TRL", "pip install 'alignscope[trl]'") from None
    return utils


def eval_pairs_from(rows: Iterable[Any]) -> list[PairExample]:
    """Held-out pairs as alignscope records: `PairExample`s as they are, dict rows (a TRL preference
    dataset's `prompt`/`chosen`/`rejected`, standard or conversational) through alignscope's own
    converter, so a TRL eval split can be passed unchanged."""
    pairs = []
    for i, row in enumerate(rows):
        if isinstance(row, PairExample):
            pairs.append(row)
        elif isinstance(row, Mapping):
            try:
                pairs.append(to_pairwise(dict(row)))
            except DataError as e:
                raise DataError(e.problem, e.fix, source=f"eval_pairs[{i}]", field=e.field) from None
        else:
            raise DataError(f"expected a PairExample or a dict with prompt/chosen/rejected, got {type(row).__name__}",
                            "pass TRL-style rows ({'prompt': ..., 'chosen': ..., 'rejected': ...}) or PairExample records",
                            source=f"eval_pairs[{i}]")
    if not pairs:
        raise DataError("no eval pairs given", "pass a few held-out preference pairs (16-64 is typical)", source="eval_pairs")
    return pairs


def _every(value: int | float | None, max_steps: int) -> int | None:
    """An interval in steps from a Trainer setting, where a float below 1 is a fraction of the run."""
    if not value:
        return None
    return max(1, math.ceil(value * max_steps)) if value < 1 else int(value)


def _shards(trainer) -> bool:
    """Whether the trainer shards the model (FSDP v2: every process then scores, in step); refuses the
    partitioned launches the monitor cannot score under (DeepSpeed ZeRO-3, FSDP v1)."""
    plugin = getattr(getattr(trainer.accelerator, "state", None), "deepspeed_plugin", None)
    if getattr(plugin, "zero_stage", 0) == 3:
        raise ConfigError("DisplacementMonitor cannot score a policy partitioned by DeepSpeed ZeRO-3",
                          "train with FSDP (fsdp_version: 2), data parallelism or ZeRO-1/2, or score a saved checkpoint "
                          "with alignscope afterwards")
    if not getattr(trainer, "is_fsdp_enabled", False):
        return False
    return shards_model(trainer.accelerator, "DisplacementMonitor", log=lambda *a: None)


class DisplacementMonitor(TrainerCallback):
    """Likelihood displacement on held-out pairs during a TRL preference run (DPO, KTO, ORPO, CPO).

    At train start and every `eval_steps` it scores `eval_pairs` with alignscope's engine and writes
    what `alignscope train dpo` writes into the trainer's `output_dir`: per-pair log-probs
    (`eval_logps.jsonl`), the change since the start, the fraction of pairs whose chosen fell,
    ranking and implicit-reward accuracy and, for short responses, the tokens that gained mass
    (`displacement.jsonl`), and detected displacement with its mitigation (`pitfalls.jsonl`, printed).
    The same numbers go to the trainer's loggers as `alignscope/...`.

    The reference is the trainer's: `trainer.ref_model`; for a peft policy without one, the adapter
    disabled (TRL's `ref` adapter when there is one); with `precompute_ref_log_probs` and no
    reference model, the policy at train start. A reference-free trainer (ORPO, CPO) has none, and
    implicit-reward accuracy is then omitted.
    """

    def __init__(self, eval_pairs: Iterable[PairExample | Mapping[str, Any]], *, eval_steps: int | None = None,
                 batch_size: int = 8, log: Callable[[str], Any] = print):
        """`eval_steps`: None = the trainer's `eval_steps`, else its `logging_steps`; `batch_size`:
        sequences per scoring batch (each eval point costs one no-grad pass over 2 x len(eval_pairs)
        sequences, plus one position's softmax for short responses)."""
        if eval_steps is not None and eval_steps < 1:
            raise ConfigError(f"eval_steps must be at least 1, got {eval_steps}", "pass a step count, or None for the trainer's")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}", "pass a positive number of sequences")
        self.pairs = eval_pairs_from(eval_pairs)
        self.eval_steps, self.batch_size, self.say = eval_steps, batch_size, log
        self.trainer = None
        self.active = False
        self.pending: dict[str, float] = {}

    def attach(self, trainer: Trainer) -> DisplacementMonitor:
        """Add the monitor to `trainer`'s callbacks, first in line: its `on_log` then adds the
        `alignscope/...` numbers before the reporting callbacks (TensorBoard, W&B) read the logs."""
        self.trainer = trainer
        trainer.add_callback(self)
        callbacks = trainer.callback_handler.callbacks
        callbacks.insert(0, callbacks.pop(callbacks.index(self)))
        return self

    # --- setup: mirrors training.loop.train (items, reference log-probs, the start point)

    def _policy(self):
        return self.trainer.accelerator.unwrap_model(self.trainer.model)

    def _config(self, args, policy) -> TrainConfig:
        """The alignscope settings of the eval items: TRL's max_length (capped by the model's positions)
        and beta; the prompt is not cut separately, as TRL does not either."""
        limits = [v for v in (getattr(args, "max_length", None), max_positions(policy)) if v]
        beta = getattr(args, "beta", None)
        return TrainConfig(
            method="dpo", data="<the TRL trainer's dataset>", output_dir=str(args.output_dir),
            max_length=min(limits) if limits else TrainConfig.max_length, max_prompt_length=None,
            beta=beta if isinstance(beta, (int, float)) and beta > 0 else TrainConfig.beta,
            batch_size=self.batch_size, progress=False,
        )

    def _reference(self, args, policy, cfg: TrainConfig, start: dict[str, Any] | None) -> dict[int, list[float]] | None:
        """Reference log-probs of each eval pair's chosen and rejected (item index -> [chosen, rejected])."""
        pairs = [[(it.prompt_ids, r) for r in it.responses[:2]] for it in self.items]
        cache = Path(args.output_dir) / "ref_cache"

        def score(model, root) -> dict[int, list[float]]:
            """Sharded: every process scores its share of the pairs in step with the others (and the main one joins them)."""
            say = self.say if self.main else (lambda *a: None)
            with sharded_forwards(root):
                return compute_reference_logps(cfg, model, pairs, self.pad_id, cache, say,
                                               self.trainer.accelerator if self.sharded else None, lockstep=self.sharded)

        ref = getattr(self.trainer, "ref_model", None)
        if ref is not None:
            return score(self.trainer.accelerator.unwrap_model(ref), ref)
        from accelerate.utils import is_peft_model

        if is_peft_model(policy):
            with _trl().use_adapter(policy, adapter_name="ref" if "ref" in policy.peft_config else None):
                return score(policy, self.trainer.model)
        if getattr(args, "precompute_ref_log_probs", False):
            if start is not None:  # a resumed run: the policy at train start is no longer the reference
                return {i: [c, r] for i, (c, r) in enumerate(zip(start["chosen"], start["rejected"]))}
            return score(policy, self.trainer.model)
        return None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer is None:
            raise ConfigError("DisplacementMonitor was added without its trainer",
                              "add it with DisplacementMonitor(eval_pairs).attach(trainer): it reads the trainer's reference "
                              "model and reports to the trainer's loggers")
        self.main, self.sharded = state.is_world_process_zero, _shards(self.trainer)
        self.active = self.main or self.sharded  # a sharded model is scored by every process together
        if not self.active:
            return
        policy = self._policy()
        processor = self.trainer.processing_class
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.cfg = self._config(args, policy)
        self.items: list[Item] = DPO(self.cfg).eval_items(self.pairs, self.tokenizer)
        check_context(policy, max(len(it.prompt_ids) + len(r) for it in self.items for r in it.responses))
        self.pad_id = pad_token_id(self.tokenizer)
        self.every = self.eval_steps or _every(getattr(state, "eval_steps", None), state.max_steps) \
            or _every(state.logging_steps, state.max_steps) or 1
        out_dir = Path(args.output_dir)
        self.metrics = MetricsLogger(out_dir, enabled=self.main, truncate_after=state.global_step, log=self.say)
        start_file, probs_file = out_dir / rf.EVAL_START, out_dir / rf.EVAL_START_PROBS
        if state.global_step > 0 and start_file.exists():
            self.start = json.loads(start_file.read_text())
            self.start_probs = load_file(str(probs_file))["probs"] if probs_file.exists() else None
            self.ref = self._reference(args, policy, self.cfg, self.start)
        else:
            self.ref = self._reference(args, policy, self.cfg, None)
            self.start = self._evaluate()
            self.start_probs = self.start.pop("first_token_probs", None)
            if self.main:
                if self.start_probs is not None:
                    save_file({"probs": self.start_probs}, str(probs_file))
                write_text(start_file, json.dumps(self.start))
                self.metrics.eval_point(state.global_step, self.start, self.start)
        self.last = state.global_step

    def _evaluate(self) -> dict[str, Any]:
        with sharded_forwards(self.trainer.model):
            return evaluate(self._policy(), self.items, self.ref, self.pad_id, self.cfg.beta, self.batch_size)

    def on_step_end(self, args, state, control, **kwargs):
        done = state.global_step
        if not self.active or done == self.last or (done % self.every and done != state.max_steps):
            return
        now = self._evaluate()
        self.last = done
        control.should_log = True  # this step's row then carries the eval point
        if not self.main:
            return
        row = log_eval_point(self.metrics, done, now, self.start, self.start_probs, self.tokenizer)
        self.pending = {PREFIX + k: v for k, v in row.items()
                        if k not in _NOT_LOGGED and isinstance(v, (int, float)) and not isinstance(v, bool)}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.pending or logs is None:
            return
        logs.update(self.pending)
        # The trainer appended its copy of these logs to log_history (trainer_state.json) just before this call.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self.pending)
        self.pending = {}

    def on_train_end(self, args, state, control, **kwargs):
        if self.active:
            self.metrics.close()


def _as_floats(values: Iterable[Any]) -> list[float]:
    """A reward function's values as floats, None (TRL's "does not apply") as NaN, as TRL reads them."""
    return [math.nan if v is None else float(v) for v in values]


def _whole_groups(prompts: list[Prompt], n: int) -> bool:
    """Whether `prompts` is consecutive runs of `n` copies of one prompt, as TRL's sampler lays out a batch."""
    return len(prompts) % n == 0 and all(prompts[i] == prompts[i - i % n] for i in range(len(prompts)))


class RewardVarianceMonitor(TrainerCallback):
    """Per-prompt reward variance of every step's groups in TRL's GRPOTrainer (and RLOOTrainer).

    Add it in two places: `reward_funcs=monitor.wrap([f1, f2])` and `callbacks=[monitor]`. Each
    generation batch gives one row of `reward_variance.jsonl` (the raw per-prompt variances of the
    weighted reward, as `alignscope train rl` writes them, plus the variances standardised over the
    batch, the low-variance prompts, and the same per reward function); the first batch where most
    prompts are flat gives the flat-objective pitfall (`pitfalls.jsonl`, printed once). Every logged
    step gives an `rl_metrics.jsonl` row (proxy, gold, KL) and, at the end of training, with a gold
    reward, the over-optimisation summary (`overoptimization.json`).

    `gold` is a reward function called like TRL's (prompts=, completions=, **kwargs) on the same
    completions; it is logged, never trained on. `threshold`: the standardised variance at or below
    which a prompt counts as flat.
    """

    def __init__(self, gold: Callable[..., Any] | None = None, *, threshold: float = FLAT_THRESHOLD,
                 log: Callable[[str], Any] = print):
        if gold is not None and not callable(gold):
            raise ConfigError(f"gold must be a reward function, got {type(gold).__name__}",
                              "pass a function (prompts, completions, **kwargs) -> list[float], as for TRL's reward_funcs")
        if threshold < 0:
            raise ConfigError(f"threshold must be non-negative, got {threshold}", f"the default is {FLAT_THRESHOLD}")
        self.gold, self.threshold, self.say = gold, threshold, log
        self.funcs: list[Callable] = []
        self.names: list[str] = []
        self.started = self.active = self.warned_flat = False
        self.told: set[str] = set()
        self.batch: dict[int, list[float]] = {}
        self.proxy: list[float] = []
        self.golds: list[float] = []

    def wrap(self, reward_funcs: Callable | list[Callable]) -> Callable | list[Callable]:
        """The reward functions to give the trainer: each returns its function's own values and lets the
        monitor see them. Wrap every reward function the trainer gets, in one call (the weighted sum needs them all)."""
        utils = _trl()
        single = callable(reward_funcs) and not isinstance(reward_funcs, (list, tuple))
        funcs = [reward_funcs] if single else list(reward_funcs)
        if not funcs:
            raise ConfigError("no reward functions to wrap", "pass the list you would give GRPOTrainer(reward_funcs=...)")
        for f in funcs:
            if isinstance(f, (str, torch.nn.Module)) or not callable(f):
                raise ConfigError(f"cannot watch the reward {f!r}: TRL calls reward models itself, not through a function",
                                  "give it as a function (prompts, completions, **kwargs) -> list[float] that calls the model")
        self.funcs, self.names = funcs, [utils.get_callable_name(f) for f in funcs]
        wrapped = [self._watch(i, f, utils.is_async_callable(f)) for i, f in enumerate(funcs)]
        return wrapped[0] if single else wrapped

    def _watch(self, i: int, fn: Callable, is_async: bool) -> Callable:
        if is_async:
            async def watched(prompts, completions, **kwargs):
                rewards = await fn(prompts=prompts, completions=completions, **kwargs)
                self._seen(i, prompts, completions, rewards, kwargs)
                return rewards
        else:
            def watched(prompts, completions, **kwargs):
                rewards = fn(prompts=prompts, completions=completions, **kwargs)
                self._seen(i, prompts, completions, rewards, kwargs)
                return rewards
        watched.__name__ = watched.__qualname__ = self.names[i]
        watched.__doc__, watched.__wrapped__ = fn.__doc__, fn
        return watched

    def _tell_once(self, key: str, text: str) -> None:
        if key not in self.told:
            self.told.add(key)
            self.say(text)

    def _seen(self, i: int, prompts: list, completions: list, rewards: Any, kwargs: dict[str, Any]) -> None:
        """One reward function's values on one generation batch; the batch is measured once every function has been seen."""
        if not self.started:
            self._tell_once("callback", "alignscope: the RewardVarianceMonitor is not among the trainer's callbacks "
                                        "(callbacks=[monitor]); rewards are not recorded")
            return
        if not self.active or (self.model is not None and not self.model.training):
            return  # another process's share, or an evaluation batch
        values = _as_floats(rewards)
        if len(values) != len(prompts):
            return  # TRL itself rejects the batch with its own error
        self.batch[i] = values
        if len(self.batch) == len(self.funcs):
            batch, self.batch = self.batch, {}
            self._measure(list(prompts), list(completions), batch, kwargs)

    def _variance(self, grouped: np.ndarray, prompts: list[Prompt] | None = None) -> dict[str, Any]:
        """Per-prompt variances of a [P, n] block, raw and standardised over the batch (alignscope's
        estimators, `diagnostics.variance`); groups holding a NaN (a function that did not apply) are left out."""
        ok = np.isfinite(grouped).all(axis=1)
        if not ok.any():
            return {"variances": [], "groups_measured": 0}
        g = grouped[ok]
        raw, std = per_prompt_variance(g), per_prompt_variance(standardize_global(g))
        out: dict[str, Any] = {"variances": raw.tolist(), "standardized_variances": std.tolist(),
                               "low_variance_fraction": low_variance_fraction(std, self.threshold), "groups_measured": int(ok.sum())}
        if prompts is not None:
            kept = [p for p, keep in zip(prompts, ok) if keep]
            out["low_variance_prompts"] = [prompt_text(p) for p, v in zip(kept, std) if v <= self.threshold]
        return out

    def _measure(self, prompts: list, completions: list, batch: dict[int, list[float]], kwargs: dict[str, Any]) -> None:
        step = (kwargs.get("trainer_state") or self.state).global_step + 1  # the optimizer step these completions train
        n = self.n
        if not _whole_groups(prompts, n):
            self._tell_once("groups", f"alignscope: step {step}: this process's completions are not whole groups of "
                                      f"num_generations={n}; reward variance is not measured (make the per-device "
                                      "generation batch a multiple of num_generations)")
            return
        per_func = np.array([batch[j] for j in range(len(self.funcs))], dtype=np.float64).T  # [N, F]
        scored = ~np.isnan(per_func).all(axis=1)
        # TRL's reward: the weighted sum over functions, NaN-skipping; a completion no function scored stays NaN.
        total = np.where(scored, np.nansum(per_func * self.weights, axis=1), np.nan)
        row: dict[str, Any] = {"step": step, **self._variance(total.reshape(-1, n), prompts[::n])}
        row["functions"] = {name: self._variance(per_func[:, j].reshape(-1, n)) for j, name in enumerate(self.names)}
        self.metrics.append_jsonl(rf.REWARD_VARIANCE_STEPS, row)

        numbers: dict[str, float] = {}
        if row["variances"]:
            numbers[PREFIX + "reward_variance/mean"] = float(np.mean(row["variances"]))
            numbers[PREFIX + "reward_variance/low_fraction"] = row["low_variance_fraction"]
            if not self.warned_flat:
                for pitfall in detect_flat_objective(row["standardized_variances"], self.threshold):
                    self.warned_flat = True
                    self.metrics.pitfall(step, pitfall)
        for name, stats in row["functions"].items():
            if stats["variances"] and len(self.names) > 1:
                numbers[f"{PREFIX}reward_variance/{name}/low_fraction"] = stats["low_variance_fraction"]
        if scored.any():
            self.proxy.append(float(np.nanmean(total)))
        if self.gold is not None:
            gold = np.array(_as_floats(self.gold(prompts=prompts, completions=completions, **kwargs)), dtype=np.float64)
            if np.isfinite(gold).any():
                self.golds.append(float(np.nanmean(gold)))
                numbers[PREFIX + "gold_reward"] = self.golds[-1]
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            for key, value in numbers.items():
                log_metric(key, value)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.funcs:
            raise ConfigError("the RewardVarianceMonitor has no reward functions to watch",
                              "give the trainer reward_funcs=monitor.wrap([f1, f2]) as well as callbacks=[monitor]")
        n = getattr(args, "num_generations", None)
        if not isinstance(n, int) or n < 2:
            raise ConfigError(f"the RewardVarianceMonitor needs groups of at least 2 completions per prompt, got num_generations={n}",
                              "use it with GRPOTrainer or RLOOTrainer and num_generations >= 2")
        weights = getattr(args, "reward_weights", None)
        if weights is not None and len(weights) != len(self.funcs):
            raise ConfigError(f"the trainer weighs {len(weights)} rewards but the monitor wrapped {len(self.funcs)}",
                              "wrap every reward function the trainer gets: reward_funcs=monitor.wrap([...all of them])")
        self.weights = np.ones(len(self.funcs)) if weights is None else np.asarray(weights, dtype=np.float64)
        self.n, self.state, self.model = n, state, model
        self.started, self.active = True, state.is_world_process_zero
        if self.active:
            self.metrics = MetricsLogger(Path(args.output_dir), truncate_after=state.global_step, log=self.say)

    def on_log(self, args, state, control, logs=None, **kwargs):
        """One `rl_metrics.jsonl` row per logged step: mean proxy and gold reward of the batches since the
        last log, and the sequence KL (TRL logs KL per token; times the mean completion length of the
        same log it is the per-sequence KL that alignscope's RL logs and Gao's sqrt(KL) reads)."""
        if not self.active or not self.proxy or logs is None or any(k.startswith("eval_") for k in logs):
            return
        kl, length = logs.get("kl"), logs.get("completions/mean_length")
        row = {"step": state.global_step, "proxy_reward": float(np.mean(self.proxy)),
               "gold_reward": float(np.mean(self.golds)) if self.golds else None,
               "kl": kl * length if kl is not None and length is not None else None, "kl_per_token": kl}
        self.metrics.append_jsonl(rf.RL_METRICS, row)
        self.proxy, self.golds = [], []

    def on_train_end(self, args, state, control, **kwargs):
        if self.active:
            overoptimization_summary(Path(args.output_dir), self.metrics)
            self.metrics.close()
