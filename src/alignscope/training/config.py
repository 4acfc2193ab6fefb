"""Typed training configs. YAML files and `key=value` overrides become a `TrainConfig` (offline
objectives) or an `RLConfig` (on-policy RL). Each option carries its description and range (`opt`),
checked whenever a config is built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alignscope.errors import ConfigError
from alignscope.models.device import DeviceOptions
from alignscope.options import Options, opt
from alignscope.rollout.options import RolloutOptions


def _check_output_dir(output_dir: str) -> None:
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ConfigError(f"output_dir '{output_dir}' is a file, not a folder", "set output_dir to a new or existing folder")


METHODS = ("sft", "rm", "dpo", "kto", "rank")


@dataclass
class LossTerm(Options):
    """One term of a (possibly mixed) objective, e.g. {type: sigmoid, weight: 1.0}."""

    type: str = opt("sigmoid", "the loss name (see `loss`)")
    weight: float = opt(1.0, "the term's weight in the sum", ge=0)

    @classmethod
    def from_str(cls, text: str) -> LossTerm:
        """'sigmoid' or 'sft:0.5' (type:weight)."""
        name, _, weight = text.partition(":")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ConfigError(f"loss term '{text}' has a weight that is not a number", "write e.g. sft:0.5") from None
        return cls(name.strip(), value)


@dataclass
class LoraConfig(Options):
    """A LoRA adapter (peft): only the adapter trains; the reference is the adapter disabled."""

    r: int = opt(8, "the adapter's rank", ge=1, le=4096)
    alpha: int = opt(16, "LoRA's scaling numerator (the update is scaled by alpha / r)", ge=1)
    dropout: float = opt(0.0, "dropout on the adapter's input", ge=0, lt=1)
    target_modules: list[str] = opt(["q_proj", "k_proj", "v_proj", "o_proj"], "names of the linear layers that get an adapter")

    def validate(self) -> None:
        if not self.target_modules:
            raise ConfigError("lora.target_modules is empty", "name at least one linear layer, e.g. [q_proj, v_proj]")


@dataclass
class TrainConfig(DeviceOptions):
    """Every option of `alignscope train sft|rm|dpo|kto|rank`. Unknown keys fail with a suggestion."""

    method: Literal["sft", "rm", "dpo", "kto", "rank"] = opt("dpo", "the objective (set by the command: `train dpo`, ...)")
    model: str = opt("tiny", "the policy: a folder, a .gguf file, 'smollm2', a cached hub id, or 'tiny' (random 2-layer Llama)")
    ref_model: str | None = opt(None, "the reference model, in the same forms as `model`; null = the initial policy")
    data: str = opt("", "training data: a JSONL/JSON/Parquet/CSV file, a saved `datasets` folder, or a Hub dataset "
                        "hf:NAME[:SUBSET][@SPLIT] (default split train; read from the local datasets cache when offline)")
    eval_data: str | None = opt(None, "held-out data for evaluation and the displacement monitor, in the same forms as `data` (e.g. hf:NAME@test)")
    eval_fraction: float = opt(0.0, "fraction of `data` held out for evaluation when eval_data is not given", ge=0, lt=1)
    format: str | None = opt(None, "the data format (pairwise, ranked, unpaired, sft, prompt); null = detect")
    map: dict = opt({}, "column renames, e.g. {chosen: response_a}")
    as_chat: bool = opt(False, "send plain-text prompts as one user message, so the chat template applies")
    on_error: Literal["fail", "skip"] = opt("fail", "on a bad row: stop, or skip it and write it to the run folder's rejects file")
    max_examples: int | None = opt(None, "use only the first N training (and eval) examples", ge=1)
    output_dir: str = opt("runs/train", "the run folder: metrics, checkpoints, final model")
    max_length: int = opt(512, "longest sequence in tokens (prompt + response); longer ones are truncated", ge=1)
    max_prompt_length: int | None = opt(256, "longest prompt in tokens (truncated from the left); null = no limit", ge=1)
    lr: float = opt(5e-6, "peak learning rate (AdamW)", gt=0, le=1)
    weight_decay: float = opt(0.0, "AdamW weight decay", ge=0, le=1)
    epochs: int = opt(1, "passes over the training data", ge=1)
    max_steps: int | None = opt(None, "stop after this many optimizer steps; null = run all epochs", ge=1)
    batch_size: int = opt(8, "examples per micro-batch per process, before gradient accumulation", ge=1)
    grad_accum: int = opt(1, "micro-batches per optimizer step", ge=1)
    max_grad_norm: float | None = opt(1.0, "clip the gradient's global norm to this; null = no clipping", gt=0)
    warmup_ratio: float = opt(0.0, "fraction of the steps spent warming the learning rate up from 0", ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant"] = opt("linear", "learning-rate schedule after warm-up")
    seed: int = opt(0, "random seed (data order, initialisation, sampling)", ge=0, lt=2**32)
    mixed_precision: Literal["no", "bf16", "fp16"] = opt("no", "accelerate's mixed precision for the forward and backward")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward (less memory, ~30% more time)")
    share_prompts: bool = opt(True, "run a pair's prompt once for chosen and rejected (same numbers, fewer tokens)")
    padding_free: bool = opt(True, "a batch as one row of real tokens with per-sequence attention (sdpa; same numbers)")
    group_by_length: bool = opt(False, "batches of similar-length examples (less padding; batch order stays random)")
    loss: list[LossTerm] = opt([LossTerm()], "DPO loss terms, e.g. [sigmoid, sft:0.2] (a weighted sum)")
    beta: float = opt(0.1, "DPO/KTO temperature: how far the policy may move from the reference", gt=0)
    label_smoothing: float = opt(0.0, "assumed fraction of flipped labels (conservative/robust DPO, simpo, below 0.5); exo_pair's epsilon (below 1)", ge=0, lt=1)
    simpo_gamma: float = opt(0.5, "SimPO's target reward margin (the simpo loss; TRL's CPOConfig name)", ge=0)
    orpo: bool = opt(False, "train with ORPO instead of `loss` (reference-free)")
    kto_desirable_weight: float = opt(1.0, "KTO: weight of desirable examples", gt=0)
    kto_undesirable_weight: float = opt(1.0, "KTO: weight of undesirable examples", gt=0)
    rank_objective: Literal["plackett_luce", "pro", "curry"] = opt(
        "plackett_luce", "ranked data: the Plackett-Luce DPO loss, PRO (reference-free), or Curry-DPO's pairs")
    pro_sft_weight: float = opt(0.0, "PRO: weight of the NLL of the best-ranked response added to the loss", ge=0)
    rm_heads: int = opt(1, "reward model heads; k > 1 trains an ensemble of k scalar heads", ge=1, le=64)
    rm_aggregate: Literal["mean", "min", "mean_minus_std"] = opt("mean", "how an ensemble's heads combine into one reward")
    rm_center_coef: float = opt(0.0, "reward centring: weight of the mean squared reward added to the loss", ge=0)
    lora: LoraConfig | None = opt(None, "train a LoRA adapter instead of all weights, e.g. {r: 16, alpha: 32}")
    logging_steps: int = opt(1, "write metrics every N optimizer steps", ge=1)
    eval_steps: int | None = opt(None, "evaluate (and run the displacement monitor) every N steps; null = at the start and end", ge=1)
    save_steps: int | None = opt(None, "write a checkpoint every N steps; null = only the final model", ge=1)
    keep_last: int = opt(2, "checkpoints kept on disk (older ones are pruned)", ge=1)
    nan_policy: Literal["stop", "skip"] = opt("stop", "on a NaN/inf loss: stop with an error, or skip the batch")
    ref_cache_dir: str | None = opt(None, "where reference log-probs are cached; null = <output_dir>/ref_cache")
    report_to: list[str] = opt([], "trackers besides metrics.jsonl: tensorboard, wandb (offline)")
    trust_remote_code: bool = opt(False, "allow a model folder's own Python code (unsafe for untrusted models)")
    progress: bool = opt(True, "show progress bars")

    def validate(self) -> None:
        super().validate()
        if not self.data:
            raise ConfigError("no training data given", "set data: path/to/file.jsonl (or data=... on the command line)")
        _check_output_dir(self.output_dir)
        if self.method == "dpo" and not self.orpo:
            from alignscope.errors import did_you_mean
            from alignscope.losses.preference import PREFERENCE_LOSSES

            if not self.loss:
                raise ConfigError("no loss terms given", "give at least one, e.g. loss=sigmoid or loss=[sigmoid,sft:0.2]")
            for term in self.loss:
                if term.type not in PREFERENCE_LOSSES:
                    raise ConfigError(
                        f"unknown loss type '{term.type}'" + did_you_mean(term.type, PREFERENCE_LOSSES),
                        f"choose from {', '.join(PREFERENCE_LOSSES)}",
                    )
            # exo_pair reads label_smoothing as its epsilon, in [0, 1) (TRL's meaning); elsewhere it is a flip rate, below ½.
            others = [t.type for t in self.loss if t.type != "exo_pair"]
            if self.label_smoothing >= 0.5 and others:
                raise ConfigError(
                    f"label_smoothing {self.label_smoothing} must be below 0.5 with {', '.join(others)}",
                    "ε is the assumed rate of flipped labels; at ½ the labels carry no information (only exo_pair alone takes up to 1)",
                )


ALGORITHMS = ("reinforce", "rloo", "grpo", "dr_grpo", "ppo", "online_dpo")


@dataclass
class RewardSpec(Options):
    """One term of RL's reward sum: a Python function or a reward-model folder, with its weight."""

    fn: str | None = opt(None, "a reward function 'module:function' (or file.py:function, or 'lab:gold')")
    rm: str | None = opt(None, "a reward-model folder (alignscope RM or a Hugging Face sequence classifier)")
    weight: float = opt(1.0, "the term's weight in the summed reward")
    name: str | None = opt(None, "the name its metrics are logged under; null = the function's name or the folder's")

    def validate(self) -> None:
        if (self.fn is None) == (self.rm is None):
            raise ConfigError("a reward term needs exactly one of fn or rm", "write e.g. {fn: my_rewards:length, weight: 1.0} or {rm: runs/rm/final}")

    @property
    def label(self) -> str:
        """The term's metric name."""
        if self.name:
            return self.name
        return self.fn.rpartition(":")[2] if self.fn else Path(self.rm.rstrip("/")).name or self.rm


@dataclass
class RLConfig(DeviceOptions, RolloutOptions):
    """Every option of `alignscope train rl`. The algorithm is the advantage estimator; `loss_type` is how
    the per-token loss is averaged (TRL's names and meanings); the sampling engine's and the device's options come first."""

    algorithm: Literal["reinforce", "rloo", "grpo", "dr_grpo", "ppo", "online_dpo"] = opt(
        "rloo", "the advantage estimator (ppo adds a value head and GAE), or online_dpo: DPO on two samples per prompt ranked by the reward")
    model: str = opt("lab:tiny", "the policy: a folder, a .gguf file, 'smollm2', a cached hub id, or 'lab:SIZE'")
    prompts: str = opt("", "the prompts: a prompt-only data file (or any format with prompts), a saved `datasets` folder, or a Hub "
                           "dataset hf:NAME[:SUBSET][@SPLIT]; not needed when given in memory")
    format: str | None = opt(None, "the prompt file's format; null = detect")
    map: dict = opt({}, "column renames, e.g. {prompt: question}")
    as_chat: bool = opt(False, "send plain-text prompts as one user message, so the chat template applies")
    reward: str = opt("", "the training reward: 'module:function', a reward-model folder, or 'lab:gold' (or use `rewards`)")
    rewards: list[RewardSpec] = opt([], "several rewards summed with weights, e.g. [{fn: m:f, weight: 1.0}, {rm: FOLDER, weight: 0.5}]")
    reward_timeout: float | None = opt(None, "seconds one call of a reward may take before the run stops with an error; null = no limit", gt=0)
    reward_transform: list[Any] = opt([], "transforms of the summed reward, in order: standardize, {clip: [low, high]}, {log_sigmoid_centring: r_ref}")
    reward_transform_samples: int = opt(32, "prompts (samples_per_prompt each) the initial policy answers to fix the transform's statistics", ge=2)
    gold: str | None = opt(None, "a gold reward for monitoring over-optimisation ('module:function' or 'lab:gold')")
    eval_prompts: str | None = opt(None, "held-out prompts sampled at evaluation points (proxy, gold, pass@k), in the same forms as `prompts`; null = no evaluation")
    eval_steps: int | None = opt(None, "evaluate every N steps and after the last; null = only after the last", ge=1)
    eval_samples: int = opt(4, "completions per held-out prompt at an evaluation point (the k of pass@k)", ge=1)
    log_completions: int = opt(8, "completions of each step written to completions.jsonl with each reward; 0 = none", ge=0)
    output_dir: str = opt("runs/rl", "the run folder: metrics, checkpoints, final model")
    steps: int = opt(50, "rollout batches (each followed by num_iterations x steps_per_generation optimizer steps)", ge=1)
    prompts_per_step: int = opt(8, "prompts sampled per rollout batch, over all processes (each samples an equal share)", ge=1)
    generation_batch_size: int | None = opt(
        None, "prompts per sampling call, each call seeded by its place in the batch, so the samples do not depend on the "
              "number of processes; null = one call per process (seeded the same way when there are several)", ge=1)
    samples_per_prompt: int = opt(4, "completions sampled per prompt (the group size)", ge=1)
    max_new_tokens: int = opt(24, "longest completion in tokens", ge=1)
    temperature: float = opt(1.0, "sampling temperature of the rollouts", gt=0)
    top_p: float = opt(1.0, "nucleus sampling: keep the smallest token set with this much probability", gt=0, le=1)
    lr: float = opt(1e-4, "policy learning rate (AdamW)", gt=0, le=1)
    max_grad_norm: float | None = opt(1.0, "clip the gradient's global norm to this; null = no clipping", gt=0)
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] | None = opt(
        None, "loss aggregation as TRL: grpo (per-sequence mean), bnpo (batch token mean), dr_grpo (/ B·max_new_tokens), "
        "dapo (/ the rollout's tokens per step); null = dr_grpo for dr_grpo, else bnpo")
    scale_rewards: Literal["group", "batch", "none"] | None = opt(None, "grpo: divide advantages by the group's or the batch's reward std, or not; null = group")
    epsilon: float = opt(0.2, "ratio clipping: the lower bound is 1 - epsilon", gt=0, lt=1)
    epsilon_high: float | None = opt(None, "the upper bound is 1 + epsilon_high (DAPO's clip-higher, e.g. 0.28); null = epsilon", gt=0)
    num_iterations: int = opt(1, "passes over each rollout batch; after the first the ratio to the rollout policy is no longer 1", ge=1)
    steps_per_generation: int = opt(1, "mini-batches (optimizer steps) per pass over a rollout batch", ge=1)
    micro_batch_size: int | None = opt(None, "sequences per forward and backward; a mini-batch's gradient is accumulated over them "
                                       "(same update, less memory); null = the whole mini-batch at once", ge=1)
    importance_sampling_level: Literal["token", "sequence"] = opt("token", "the ratio per token, or per sequence (GSPO: exp of the mean token log-ratio)")
    mask_truncated_completions: bool = opt(False, "leave completions cut at max_new_tokens out of the loss (they still count in the group's baseline)")
    overlong_buffer: int | None = opt(None, "DAPO's soft overlong penalty: it ramps over the last N tokens before max_new_tokens; null = off", ge=1)
    overlong_penalty: float = opt(1.0, "the overlong penalty at max_new_tokens (reward units)", ge=0)
    entropy_coef: float = opt(0.0, "weight of the entropy bonus (token-mean entropy of the policy, subtracted from the loss)", ge=0)
    kl_coef: float = opt(0.05, "weight of the KL penalty to the reference (online_dpo: beta plays this part)", ge=0)
    beta: float = opt(0.1, "online_dpo: the DPO temperature, how far the policy may move from the reference", gt=0)
    kl_mode: Literal["reward", "loss"] = opt("loss", "the KL penalty subtracted from the reward, or added to the loss")
    kl_estimator: Literal["k1", "k2", "k3"] | None = opt(None, "Schulman's KL estimator; null = k1 in the reward, k3 in the loss")
    use_bias_correction_kl: bool = opt(True, "kl_mode=loss: weight each token's KL by the importance ratio to the rollout policy (TRL's default)")
    adaptive_kl_target: float | None = opt(None, "target KL for Ziegler et al.'s adaptive controller; null = fixed kl_coef", gt=0)
    value_lr: float = opt(1e-3, "PPO: value head learning rate", gt=0, le=1)
    vf_coef: float = opt(0.5, "PPO: weight of the clipped value loss", ge=0)
    cliprange_value: float = opt(0.2, "PPO: how far a value may move from the rollout's value before its loss is clipped", gt=0)
    gae_lambda: float = opt(0.95, "PPO: GAE's lambda", ge=0, le=1)
    dynamic_sampling: bool = opt(False, "drop groups whose reward variance is below variance_threshold and refill")
    variance_threshold: float = opt(1e-6, "a group's reward variance at or below this counts as flat", ge=0)
    max_refill_rounds: int = opt(4, "dynamic sampling: most refill rounds per step", ge=0)
    padding_free: bool = opt(True, "score a group's completions as one row of real tokens (sdpa; same numbers)")
    mixed_precision: Literal["no", "bf16", "fp16"] = opt("no", "accelerate's mixed precision for the forward and backward")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward (less memory, ~30% more time)")
    lora: LoraConfig | None = opt(None, "train a LoRA adapter instead of all weights, e.g. {r: 16, alpha: 32}; the reference is the adapter disabled")
    ref_offload: bool = opt(False, "keep the frozen reference copy on the CPU and score it there: one copy of the weights "
                                   "on the accelerator, a slower reference pass (not with lora, whose reference is no copy)")
    seed: int = opt(0, "random seed (prompt order, sampling, initialisation)", ge=0, lt=2**32)
    save_steps: int | None = opt(None, "write a checkpoint every N steps; null = only the final model", ge=1)
    keep_last: int = opt(2, "checkpoints kept on disk (older ones are pruned)", ge=1)
    report_to: list[str] = opt([], "trackers besides metrics.jsonl: tensorboard, wandb (offline)")
    progress: bool = opt(True, "show progress bars")
    trust_remote_code: bool = opt(False, "allow a model folder's own Python code (unsafe for untrusted models)")

    @property
    def resolved_loss_type(self) -> str:
        """The aggregation in use: `loss_type`, or the algorithm's own."""
        return self.loss_type or ("dr_grpo" if self.algorithm == "dr_grpo" else "bnpo")

    @property
    def resolved_kl_estimator(self) -> str:
        """The KL estimator in use: `kl_estimator`, or k1 in the reward (InstructGPT) and k3 in the loss (GRPO)."""
        return self.kl_estimator or ("k1" if self.kl_mode == "reward" else "k3")

    def validate(self) -> None:
        super().validate()
        if self.reward and self.rewards:
            raise ConfigError("both reward and rewards are set", "give one reward, or list them all under rewards")
        _check_output_dir(self.output_dir)
        if self.algorithm == "online_dpo":
            if self.samples_per_prompt != 2:
                raise ConfigError(f"online_dpo ranks two samples per prompt, got samples_per_prompt {self.samples_per_prompt}",
                                  "set samples_per_prompt: 2")
            if self.micro_batch_size is not None and self.micro_batch_size % 2:
                raise ConfigError(f"online_dpo keeps a pair in one micro-batch, got micro_batch_size {self.micro_batch_size}",
                                  "use an even micro_batch_size")
            if self.kl_mode == "reward" or self.loss_type is not None or self.scale_rewards is not None:
                raise ConfigError("kl_mode: reward, loss_type and scale_rewards are policy-gradient options; online_dpo's loss is DPO's",
                                  "drop them (beta sets how far the policy may move from the reference)")
        if self.ref_offload and self.lora is not None:
            raise ConfigError("ref_offload moves the frozen reference copy to the CPU, but with lora the reference is the "
                              "adapter disabled: there is no copy to move", "drop ref_offload (lora already keeps one copy of the weights)")
        if self.samples_per_prompt < 2 and self.algorithm in ("rloo", "grpo", "dr_grpo"):
            raise ConfigError(f"{self.algorithm} needs samples_per_prompt >= 2 (it compares samples of one prompt)")
        if self.scale_rewards is not None and self.algorithm != "grpo":
            raise ConfigError(f"scale_rewards applies to algorithm grpo, not {self.algorithm}",
                              "drop scale_rewards (dr_grpo is grpo with scale_rewards: none)")
        if self.generation_batch_size is not None and self.prompts_per_step % self.generation_batch_size:
            raise ConfigError(f"prompts_per_step ({self.prompts_per_step}) is not a multiple of generation_batch_size "
                              f"({self.generation_batch_size})", "make generation_batch_size divide prompts_per_step")
        if self.overlong_buffer is not None and self.overlong_buffer > self.max_new_tokens:
            raise ConfigError(f"overlong_buffer ({self.overlong_buffer}) is longer than max_new_tokens ({self.max_new_tokens})",
                              "set overlong_buffer to at most max_new_tokens")
        if self.reward_transform:
            from alignscope.rewards.transforms import RewardTransform

            transform = RewardTransform(self.reward_transform)
            if any(name == "log_sigmoid_centring" and arg is None for name, arg in transform.steps):
                raise ConfigError("log_sigmoid_centring in reward_transform needs its reference reward",
                                  "write {log_sigmoid_centring: 0.5} (the r_ref every reward is centred on)")
