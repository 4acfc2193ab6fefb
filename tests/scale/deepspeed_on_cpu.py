"""The alignscope CLI under accelerate's DeepSpeed on CPUs, for tests (started by `accelerate launch --config_file
examples/accelerate/deepspeed_zero{2,3}.yaml`, which sets ACCELERATE_USE_DEEPSPEED=true and the ZeRO stage).

accelerate 1.16 does not run DeepSpeed on a CPU-only host: with `Accelerator(cpu=True)` (what alignscope passes on
CPUs) the DeepSpeed config is silently ignored and the run is DDP; with cpu=False its private
`PartialState._prepare_backend` finds no accelerator and reports (None, NO), so every process thinks it is the only
one. DeepSpeed itself runs on CPUs (its CPU accelerator, gloo). This launcher patches, before the CLI starts:

- `PartialState._prepare_backend` (private): under a DeepSpeed launch with no accelerator it reports (gloo,
  MULTI_CPU), so accelerate's DeepSpeed branch initialises deepspeed.comm on gloo and sets the state to DEEPSPEED
  with the right rank and world size;
- `Accelerator.__init__`: cpu=False under a DeepSpeed launch (else accelerate takes the DDP path above);
- `deepspeed.comm.torch.build_shm_op` (private): DeepSpeed's CPU accelerator would JIT-compile a shared-memory
  allreduce op with g++ (about 95 s) and tear it down racily at exit; plain gloo collectives are used instead."""

from __future__ import annotations

import importlib
import os
import runpy
import sys

import accelerate
import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType

_backend = PartialState._prepare_backend
_start = accelerate.Accelerator.__init__


def _deepspeed_launch() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and int(os.environ.get("LOCAL_RANK", -1)) != -1


def _prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
    chosen, kind = _backend(self, cpu, sagemaker_dp, backend)
    if kind == DistributedType.NO and not cpu and _deepspeed_launch() and torch.accelerator.current_accelerator() is None:
        return backend or "gloo", DistributedType.MULTI_CPU
    return chosen, kind


def _start_on_cpu(self, *args, **kwargs) -> None:
    if _deepspeed_launch():
        kwargs["cpu"] = False
    _start(self, *args, **kwargs)


if __name__ == "__main__":
    PartialState._prepare_backend = _prepare_backend
    accelerate.Accelerator.__init__ = _start_on_cpu
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # `import deepspeed.comm.torch` binds torch
    sys.argv[0] = "alignscope"
    runpy.run_module("alignscope.cli.main", run_name="__main__", alter_sys=True)
