"""Typed training configs. YAML files and `key=value` overrides become a `TrainConfig` (offline
objectives) or an `RLConfig` (on-policy RL); both validate with readable errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from alignscope.errors import ConfigError


def _check_output_dir(output_dir: str) -> None:
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ConfigError(f"output_dir '{output_dir}' is a file, not a folder", "set output_dir to a new or existing folder")


def _check_positive(cfg: object, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"'{name}' must be a positive integer, got {getattr(cfg, name)}")


METHODS = ("sft", "rm", "dpo", "kto", "rank")


@dataclass
class LossTerm:
    """One term of a (possibly mixed) objective, e.g. {type: sigmoid, weight: 1.0}."""

    type: str = "sigmoid"
    weight: float = 1.0

    @classmethod
    def from_str(cls, text: str) -> LossTerm:
        """'sigmoid' or 'sft:0.5' (type:weight)."""
        name, _, weight = text.partition(":")
        try:
            return cls(name.strip(), float(weight) if weight else 1.0)
        except ValueError:
            raise ConfigError(f"loss term '{text}' has a weight that is not a number", "write e.g. sft:0.5") from None


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TrainConfig:
    """Every option of `alignscope train`. Unknown keys fail with a suggestion."""

    method: Literal["sft", "rm", "dpo", "kto", "rank"] = "dpo"
    model: str = "tiny"  # folder, .gguf, 'smollm2', hub id, or 'tiny' (a random 2-layer Llama for smoke tests)
    ref_model: str | None = None  # default: the initial policy (its log-probs are precomputed)
    data: str = ""
    eval_data: str | None = None
    eval_fraction: float = 0.0  # held out from `data` when eval_data is not given
    format: str | None = None
    map: dict = field(default_factory=dict)
    as_chat: bool = False  # plain-text prompts become one user message (the chat template applies)
    on_error: Literal["fail", "skip"] = "fail"
    max_examples: int | None = None  # use only the first N training (and eval) examples
    output_dir: str = "runs/train"
    max_length: int = 512
    max_prompt_length: int | None = 256
    # optimisation
    lr: float = 5e-6
    weight_decay: float = 0.0
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8  # per process, before accumulation
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    warmup_ratio: float = 0.0
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    share_prompts: bool = True  # run a pair's prompt once for chosen and rejected (same numbers, fewer tokens)
    padding_free: bool = True  # a batch as one row of real tokens with per-sequence attention (sdpa; same numbers)
    group_by_length: bool = False  # batches of similar-length items (less padding; batch order stays random)
    # objectives
    loss: list[LossTerm] = field(default_factory=lambda: [LossTerm()])
    beta: float = 0.1
    label_smoothing: float = 0.0
    gamma: float = 0.5  # SimPO target margin (sigmoid_norm)
    orpo: bool = False  # ORPO instead of `loss` (reference-free)
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0
    rank_objective: Literal["plackett_luce", "curry"] = "plackett_luce"
    rm_heads: int = 1  # k > 1: an ensemble of k scalar heads
    rm_aggregate: Literal["mean", "min", "mean_minus_std"] = "mean"
    rm_center_coef: float = 0.0
    lora: LoraConfig | None = None
    # bookkeeping
    logging_steps: int = 1
    eval_steps: int | None = None
    save_steps: int | None = None
    keep_last: int = 2
    nan_policy: Literal["stop", "skip"] = "stop"
    ref_cache_dir: str | None = None  # default: <output_dir>/ref_cache
    report_to: list[str] = field(default_factory=list)  # tensorboard, wandb (offline)
    trust_remote_code: bool = False
    progress: bool = True

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("no training data given", "set data: path/to/file.jsonl (or data=... on the command line)")
        _check_output_dir(self.output_dir)
        _check_positive(self, ("batch_size", "grad_accum", "epochs", "max_length", "logging_steps", "keep_last", "rm_heads"))
        for name in ("max_steps", "eval_steps", "save_steps", "max_prompt_length", "max_examples"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ConfigError(f"'{name}' must be a positive integer or null, got {v}")
        if self.lr <= 0:
            raise ConfigError(f"'lr' must be positive, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"'warmup_ratio' must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"'eval_fraction' must be in [0, 1), got {self.eval_fraction}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"'label_smoothing' must be in [0, 0.5), got {self.label_smoothing}")
        if self.method == "dpo" and not self.orpo:
            from alignscope.losses.preference import PREFERENCE_LOSSES

            from alignscope.errors import did_you_mean

            if not self.loss:
                raise ConfigError("no loss terms given", "give at least one, e.g. loss=sigmoid or loss=[sigmoid,sft:0.2]")
            for term in self.loss:
                if term.type not in PREFERENCE_LOSSES:
                    raise ConfigError(
                        f"unknown loss type '{term.type}'" + did_you_mean(term.type, PREFERENCE_LOSSES),
                        f"choose from {', '.join(PREFERENCE_LOSSES)}",
                    )


ALGORITHMS = ("reinforce", "rloo", "grpo", "dr_grpo", "ppo")


@dataclass
class RLConfig:
    algorithm: Literal["reinforce", "rloo", "grpo", "dr_grpo", "ppo"] = "rloo"
    model: str = "lab:tiny"
    prompts: str = ""  # a prompt-only data file (or any format with prompts)
    format: str | None = None
    map: dict = field(default_factory=dict)
    as_chat: bool = False  # plain-text prompts become one user message (the chat template applies)
    reward: str = ""  # 'module:function', a reward-model folder, or 'lab:gold'
    gold: str | None = None  # optional gold reward for monitoring ('module:function' or 'lab:gold')
    output_dir: str = "runs/rl"
    steps: int = 50
    prompts_per_step: int = 8
    samples_per_prompt: int = 4
    max_new_tokens: int = 24
    temperature: float = 1.0
    top_p: float = 1.0
    lr: float = 1e-4
    max_grad_norm: float | None = 1.0
    kl_coef: float = 0.05
    kl_mode: Literal["reward", "loss"] = "loss"  # k1 penalty in the reward, or k3 term in the loss
    adaptive_kl_target: float | None = None  # set to use Ziegler et al.'s adaptive controller
    clip_eps: float = 0.2
    ppo_epochs: int = 2
    value_lr: float = 1e-3
    vf_coef: float = 0.5  # PPO: weight of the clipped value loss
    gae_lambda: float = 0.95
    dynamic_sampling: bool = False  # drop groups whose reward variance is below `variance_threshold`, refill
    variance_threshold: float = 1e-6
    max_refill_rounds: int = 4
    reward_standardize: bool = False
    padding_free: bool = True  # score a group's completions as one row of real tokens (sdpa; same numbers)
    seed: int = 0
    save_steps: int | None = None
    keep_last: int = 2
    progress: bool = True
    trust_remote_code: bool = False

    def validate(self) -> None:
        if not self.prompts:
            raise ConfigError("no prompts given", "set prompts: path/to/prompts.jsonl")
        if not self.reward:
            raise ConfigError("no reward given", "set reward: module:function, a reward-model folder, or lab:gold")
        _check_output_dir(self.output_dir)
        _check_positive(self, ("steps", "prompts_per_step", "samples_per_prompt", "max_new_tokens", "ppo_epochs", "keep_last"))
        if self.samples_per_prompt < 2 and self.algorithm in ("rloo", "grpo", "dr_grpo"):
            raise ConfigError(f"{self.algorithm} needs samples_per_prompt >= 2 (it compares samples of one prompt)")
