"""Sharded training (FSDP v2) for the offline loop and RL: gathering the whole model for forwards that each process
runs on its own, and whole-model state for checkpoints, so runs of DDP, FSDP and one process resume one another.
Which launches shard, and forwards of a sharded model in step: `models.fsdp`; DeepSpeed ZeRO: `training.zero`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def whole_policy(root: torch.nn.Module) -> Iterator[None]:
    """Under FSDP2, every process gathers the whole policy once for the block: sampling (one forward per decoded
    token) and the main process's evaluation then run without collectives, however many forwards each process makes
    (rows stop at different lengths, refill rounds differ). The gathered weights cost what DDP holds all the time;
    gradients and optimizer states stay sharded, and so do the weights during the update. Without FSDP, nothing.

    Each unit keeps its weights after forward inside the block; at its end they are resharded and each unit's own
    reshard-after-forward setting is restored (torch keeps it only as the group's post-forward mesh)."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in root.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    root._get_fsdp_state()._lazy_init()  # the root claims its units before any of them runs a forward on its own
    groups = [g for m in units for g in m._get_fsdp_state()._fsdp_param_groups]
    meshes = [g.post_forward_mesh_info for g in groups]
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in units:
            m.reshard()
        for g, mesh in zip(groups, meshes):
            g.post_forward_mesh_info = mesh


def full_state(root: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, dict]:
    """FSDP2: the whole model's tensors (and the optimizer's state), gathered onto the main process's CPU in the form
    an unsharded run saves them: `ckpt.save_checkpoint`'s `tensors` and `optimizer_state`. Every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if optimizer is None:
        return {"tensors": get_model_state_dict(root, options=options)}
    tensors, named = get_state_dict(root, optimizer, options=options)
    if not named:  # not the main process: it receives nothing
        return {}
    order = {name: i for i, name in enumerate(name for group in named["param_groups"] for name in group["params"])}
    positional = {"state": {order[name]: v for name, v in named["state"].items()},
                  "param_groups": [{**group, "params": [order[name] for name in group["params"]]} for group in named["param_groups"]]}
    return {"tensors": tensors, "optimizer_state": positional}


def load_full_state(root: torch.nn.Module, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                    optimizer_state: dict) -> None:
    """FSDP2: a checkpoint's whole model and optimizer state into this process's shards. The optimizer state is
    keyed by position, as `Optimizer.state_dict` keys it (so checkpoints of DDP, FSDP and single-process runs
    resume one another); torch's sharded loader wants parameter names."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    names = {param: name for name, param in root.named_parameters()}
    order = [names[param] for group in optimizer.param_groups for param in group["params"]]
    named = {"state": {order[i]: v for i, v in optimizer_state["state"].items()},
             "param_groups": [{**group, "params": [order[i] for i in group["params"]]} for group in optimizer_state["param_groups"]]}
    set_state_dict(root, optimizer, model_state_dict=tensors, optim_state_dict=named, options=StateDictOptions(full_state_dict=True))
