"""DeepSpeed ZeRO-2/3 for the offline loop and RL: the DeepSpeed config filled from alignscope's settings, the
accumulation boundary, loading models whole under a ZeRO-3 launch, the whole policy for forwards that each process
makes on its own, and checkpoints holding DeepSpeed's own partitioned optimizer state beside the whole weights."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from alignscope.errors import ConfigError, TrainingError


@contextlib.contextmanager
def unpartitioned_loading(accelerator) -> Iterator[None]:
    """Models that transformers loads in the block are whole on every process. Under a ZeRO-3 launch accelerate
    registers its DeepSpeed config with transformers whatever `zero3_init_flag` says (and
    `zero3_init_context_manager(enable=False)` registers it again), so `from_pretrained` would partition the weights
    as it loads (zero.Init): the frozen reference copy and the reward models would then hold empty partitions, and the
    policy could not take LoRA or be checked before `prepare`. The registration is lifted for the block and restored
    after it; `prepare` partitions the policy. The CPU RAM is what DDP loads."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None or not plugin.hf_ds_config.is_zero3():
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


@contextlib.contextmanager
def whole_engine(root: torch.nn.Module) -> Iterator[None]:
    """Under ZeRO-3 (`root` a DeepSpeed engine partitioning its weights), every process gathers the whole model for
    the block and ZeRO-3's module hooks are lifted for it, so forwards of the model or its inner modules run without
    collectives, however many each process makes (sampling, the main process's evaluation, LoRA's reference pass).
    Gathering alone is not enough: after a training step the hooks' prefetcher still fetches partitions on a forward,
    which broke an evaluation that only the main process ran. DeepSpeed's `unwrap_model_for_generation` (TRL's recipe)
    does both and re-registers the hooks after the block. Without ZeRO-3, nothing."""
    partitioned = getattr(root, "zero_optimization_partition_weights", None)
    if partitioned is None or not partitioned():
        yield
        return
    from deepspeed.runtime.zero import unwrap_model_for_generation

    with unwrap_model_for_generation(root):
        yield


DEEPSPEED_TAG = "zero"  # DeepSpeed's own state inside a checkpoint: checkpoint-N/deepspeed/zero/


def deepspeed_launch(accelerator, command: str, *, batch_size: int, grad_accum: int, max_grad_norm: float | None,
                     log: Callable[[str], None] = print, names: tuple[str, str] = ("batch_size", "grad_accum")
                     ) -> dict[str, int] | None:
    """Under DeepSpeed, {"zero_stage", "processes"} (checkpoints record it: only the same launch resumes them), with
    DeepSpeed's config filled from alignscope's settings before `prepare`; None otherwise.

    DeepSpeed clips and accumulates by its own config, so train_micro_batch_size_per_gpu, gradient_accumulation_steps
    and gradient_clipping must be alignscope's batch_size, grad_accum and max_grad_norm (`names`: what the command calls
    the first two, as its error messages say them): left out or 'auto' they are
    filled, set to other values they are refused. What this path has not been built for is refused too: ZeRO
    stages 0 and 1, offload, and an optimizer or scheduler in the DeepSpeed config (alignscope builds its own AdamW
    and schedule). A DeepSpeed config that accelerate runs as something else (it does on CPUs) is said."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true"):
            log(f"alignscope: {command}: the launch asks for DeepSpeed but accelerate runs it as {accelerator.distributed_type.value} "
                "(accelerate 1.16 runs DeepSpeed only on accelerators, not on CPUs): every process holds the whole model")
        return None
    plugin = accelerator.state.deepspeed_plugin
    config, stage = plugin.deepspeed_config, int(plugin.zero_stage)
    if stage not in (2, 3):
        raise ConfigError(f"{command} runs under DeepSpeed ZeRO stages 2 and 3 only, this config asks for stage {stage}",
                          "set zero_stage: 2 or 3 in the accelerate config (or use DDP: no DeepSpeed)")
    zero = config.get("zero_optimization", {})
    offload = [k for k in ("offload_optimizer", "offload_param") if str(zero.get(k, {}).get("device", "none")).lower() != "none"]
    if offload:
        raise ConfigError(f"{command} under DeepSpeed does not offload ({', '.join(offload)} is set): alignscope builds a torch "
                          "AdamW, and DeepSpeed offloads with its own compiled CPU Adam, which this path was not built for",
                          "set offload_optimizer_device and offload_param_device to none in the accelerate config")
    owned = [k for k in ("optimizer", "scheduler") if k in config]
    if owned:
        raise ConfigError(f"the DeepSpeed config sets {' and '.join(owned)}: alignscope builds its own AdamW and learning-rate "
                          "schedule (lr, weight_decay, scheduler, warmup_ratio)", f"remove {' and '.join(owned)} from the DeepSpeed config")
    wanted = {"train_micro_batch_size_per_gpu": (names[0], batch_size), "gradient_accumulation_steps": (names[1], grad_accum),
              "gradient_clipping": ("max_grad_norm", 0.0 if max_grad_norm is None else max_grad_norm)}
    wrong = [f"{key} {config[key]} (alignscope's {name} is {value})" for key, (name, value) in wanted.items()
             if config.get(key, "auto") != "auto" and float(config[key]) != float(value)]
    if wrong:
        raise ConfigError(f"the DeepSpeed config disagrees with alignscope's settings: {'; '.join(wrong)}",
                          "remove these keys from the accelerate/DeepSpeed config (or set them to 'auto'): alignscope fills them "
                          f"from {names[0]}, {names[1]} and max_grad_norm (null max_grad_norm = gradient_clipping 0)")
    config.update({key: value for key, (_, value) in wanted.items()})
    accelerator.gradient_accumulation_steps = grad_accum  # accelerate's own count, which prepare checks against DeepSpeed's
    config["train_batch_size"] = batch_size * grad_accum * accelerator.num_processes
    if stage == 3:  # accelerate's get_state_dict gathers the whole model only with it
        config.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True
    return {"zero_stage": stage, "processes": accelerator.num_processes}


def deepspeed_backward(engine, loss: torch.Tensor, boundary: bool) -> None:
    """One micro-batch's backward through DeepSpeed's engine: `loss` is already divided by the micro-batches of the
    step, so DeepSpeed does not divide it again; on the last micro-batch (`boundary`) the engine reduces, clips and
    steps. accelerate's `backward` would step on every micro-batch: its boundary is `sync_gradients`, which only its
    own `accumulate` counter clears."""
    engine.set_gradient_accumulation_boundary(boundary)
    engine.backward(loss, scale_wrt_gas=False)
    if boundary:
        engine.step()


def deepspeed_grad_norm(engine) -> float:
    """The gradient's global norm before clipping, as DeepSpeed computed it in the step (NaN where it computed none)."""
    norm = engine.get_global_grad_norm()
    return float("nan") if norm is None else float(norm)


def deepspeed_state(accelerator, engine, staging: Path) -> dict:
    """DeepSpeed: what `ckpt.save_checkpoint` writes, gathered by every process (a collective under ZeRO-3): the whole
    model's tensors on the main process and DeepSpeed's own checkpoint (the optimizer state, partitioned per process,
    each process writing its part) in `staging`, which the checkpoint takes in as `deepspeed/`. That state is not
    converted to the position-keyed form the other launches write, so `trainer_state.pt` holds none and only the same
    launch resumes it (`ckpt.check_launch`)."""
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    # ZeRO-3 gathers with every process; under ZeRO-2 each holds the whole weights, and only the main one copies them.
    tensors = accelerator.get_state_dict(engine) if accelerator.is_main_process or engine.zero_optimization_partition_weights() else {}
    engine.save_checkpoint(str(staging), tag=DEEPSPEED_TAG)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return {}
    return {"tensors": {k: v.detach().cpu() for k, v in tensors.items()}, "optimizer_state": {"state": {}, "param_groups": []},
            "engine_state": staging}


def load_deepspeed_state(engine, checkpoint: Path) -> None:
    """A DeepSpeed checkpoint's weights and optimizer state back into the engine (every process reads its part)."""
    path, _ = engine.load_checkpoint(str(checkpoint / "deepspeed"), tag=DEEPSPEED_TAG, load_optimizer_states=True,
                                     load_lr_scheduler_states=False)
    if path is None:
        raise TrainingError(f"{checkpoint / 'deepspeed'} holds no DeepSpeed state", "resume from a checkpoint this DeepSpeed launch wrote")
