"""FSDP (v2) for models that only score: which launches shard, and forwards of a sharded model's inner modules
(the scoring engine runs the body and the head itself, never the root's forward), as the offline trainer's
reference pass and evaluation, the CHES audit and the TRL monitor make them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import torch

from alignscope.errors import ConfigError


def shards_model(accelerator, command: str, log: Callable[[str], None] = print) -> bool:
    """Whether the launch shards the trained model (FSDP v2). FSDP v1 is refused: alignscope's gathers are FSDP2's.
    An FSDP config that accelerate runs as DDP (it does on CPUs) is said, since the memory it was meant to save is not."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP:
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
            log(f"alignscope: {command}: the launch asks for FSDP but accelerate runs it as {accelerator.distributed_type.value} "
                "(accelerate 1.16 shards only on accelerators, not on CPUs): every process holds the whole model")
        return False
    if not accelerator.is_fsdp2:
        raise ConfigError(f"{command} runs under FSDP version 2 (torch's fully_shard) only, this config asks for version 1",
                          "set fsdp_version: 2 in the accelerate config")
    return True


@contextlib.contextmanager
def sharded_forwards(root: torch.nn.Module) -> Iterator[None]:
    """Under FSDP2, forwards of the model's inner modules outside the root's own forward (the reference pass,
    evaluation): the root unit's weights (embeddings, final norm, head) are gathered for the block and each block
    gathers its own as it runs, as in training, so a process never holds more than one block's whole weights above
    its shards. Each block's gather is a collective, so every process must make the same forwards. Without FSDP,
    nothing."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(root, FSDPModule):
        yield
        return
    root._get_fsdp_state()._lazy_init()  # the root claims its units before any of them runs a forward on its own
    root.unshard()  # not recursive: the root unit's own weights only
    try:
        yield
    finally:
        root.reshard()


def whole_tensor(t: torch.Tensor) -> torch.Tensor:
    """A parameter's whole value: FSDP2 holds a shard of it (a DTensor), DeepSpeed ZeRO-3 an empty placeholder whose
    partitions the processes hold (marked by `ds_id`). Gathering either is a collective: every process calls it."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        return t.full_tensor()
    if hasattr(t, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([t]):
            return t.detach().clone()
    return t
