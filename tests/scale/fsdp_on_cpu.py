"""The alignscope CLI (or a script: `fsdp_on_cpu.py run.py ARGS`) under accelerate's FSDP on CPUs, for tests (run
by torchrun with the variables that `accelerate launch` sets from an FSDP config: ACCELERATE_USE_FSDP=true,
FSDP_VERSION=2, ...).

accelerate 1.16 picks FSDP only for accelerator devices: on CPUs an FSDP config silently runs DDP
(`AcceleratorState` keeps MULTI_CPU). Its FSDP2 preparation and torch's `fully_shard` do run on CPUs with
gloo, so this marks the state FSDP, with the plugin built from those variables, after `Accelerator` starts."""

from __future__ import annotations

import runpy
import sys

import accelerate
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_start = accelerate.Accelerator.__init__


def _start_with_fsdp(self, *args, **kwargs) -> None:
    _start(self, *args, **kwargs)
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = FullyShardedDataParallelPlugin()


if __name__ == "__main__":
    accelerate.Accelerator.__init__ = _start_with_fsdp
    if sys.argv[1].endswith(".py"):  # a script (a TRL trainer's run, say) rather than the alignscope CLI
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        sys.argv[0] = "alignscope"
        runpy.run_module("alignscope.cli.main", run_name="__main__", alter_sys=True)
