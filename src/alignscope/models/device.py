"""One device and precision policy for every config and command.

`device`, `dtype` and `attn_implementation` are resolved here once, into a `Placement`, and
every command that loads a model asks for it the same way: configs adopt `DeviceOptions`'
fields, argparse commands call `add_device_arguments`. `auto` means the accelerator's GPU (the
process's `LOCAL_RANK` under torchrun / accelerate launch) in bfloat16 where the GPU supports it,
and float32 on a CPU. The weights' dtype never decides the precision of results: the scoring
engine upcasts logits before the log-softmax and sums log-probabilities, CHES terms and rewards in
float32 (`models.scoring`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from alignscope.errors import ConfigError, ModelError
from alignscope.options import Options, opt

if TYPE_CHECKING:  # torch is imported where a placement is resolved, so `--help` of a command stays fast
    import torch
    from torch import nn

DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def check_device_spec(device: str) -> None:
    """Refuse a device string that is none of auto, cpu, cuda, cuda:N."""
    if not _DEVICE.match(device):
        raise ConfigError(f"device '{device}' is not one of auto, cpu, cuda, cuda:N",
                          "use device=auto (the GPU when there is one), cpu, cuda or cuda:0")


@dataclass
class DeviceOptions(Options):
    """Where a model runs and in what precision; configs adopt these fields, commands the matching flags."""

    device: str = opt("auto", "where the model runs: auto (this process's GPU when there is one, else cpu), cpu, cuda or cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "the weights' dtype: auto (bfloat16 on a GPU that supports it, else float32); sums stay float32")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = opt(
        "auto", "the attention kernel: auto (sdpa), sdpa, eager, or flash_attention_2 (CUDA, 16-bit, flash-attn installed)")

    def validate(self) -> None:
        super().validate()
        check_device_spec(self.device)

    def placement(self) -> Placement:
        return resolve_placement(self.device, self.dtype, self.attn_implementation)


@dataclass(frozen=True)
class Placement:
    """A resolved policy: the torch device, the weights' dtype, and transformers' attention implementation name."""

    device: torch.device
    dtype: torch.dtype
    attn_implementation: str

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for a spec; a GPU that is asked for but absent is a ModelError naming the fix."""
    import torch

    check_device_spec(device)
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ModelError(f"device={device} was asked for, but this machine has no usable CUDA GPU "
                         "(torch.cuda.is_available() is False: no GPU, no driver, or a CPU-only torch build)",
                         "use device=cpu (or auto), or install a CUDA build of torch on a machine with an NVIDIA GPU")
    index = int(device.split(":")[1]) if ":" in device else int(os.environ.get("LOCAL_RANK", "0"))
    count = torch.cuda.device_count()
    if index >= count:
        raise ModelError(f"device={device} was asked for, but this machine has {count} GPU(s) (cuda:0 to cuda:{count - 1})",
                         "use device=cuda (this process's GPU) or an index below the GPU count")
    return torch.device("cuda", index)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto = bfloat16 on a GPU that supports it (float32 on older GPUs and CPUs); 16-bit formats are checked against the GPU."""
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}", "use dtype=auto, float32, bfloat16 or float16")
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ModelError(f"dtype=bfloat16 was asked for, but {torch.cuda.get_device_name(device)} does not support it",
                         "use dtype=float16 (and mixed_precision=fp16 in training) or dtype=float32")
    return getattr(torch, dtype)


def resolve_attn(attn_implementation: str, device: torch.device, dtype: torch.dtype) -> str:
    """The attention kernel: auto = sdpa (the padding-free scoring path needs it); flash_attention_2 is checked here."""
    import torch

    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"attn_implementation '{attn_implementation}' is not one of {', '.join(ATTN_IMPLEMENTATIONS)}",
                          "use auto, sdpa, eager or flash_attention_2")
    if attn_implementation != "flash_attention_2":
        return "sdpa" if attn_implementation == "auto" else attn_implementation
    if device.type != "cuda":
        raise ModelError(f"attn_implementation=flash_attention_2 runs only on a CUDA GPU, and the device is {device}",
                         "use attn_implementation=sdpa (or auto) on a CPU")
    if importlib.util.find_spec("flash_attn") is None:
        raise ModelError("attn_implementation=flash_attention_2 needs the flash-attn package, which is not installed",
                         "pip install flash-attn --no-build-isolation, or use attn_implementation=sdpa (or auto)")
    if dtype not in (torch.bfloat16, torch.float16):
        raise ModelError(f"flash_attention_2 runs in bfloat16 or float16, and the dtype is {dtype}",
                         "use dtype=bfloat16 (or auto), or attn_implementation=sdpa")
    return attn_implementation


def resolve_placement(device: str = "auto", dtype: str = "auto", attn_implementation: str = "auto") -> Placement:
    """Resolve the three options together (the dtype and the attention kernel depend on the device)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    return Placement(dev, dt, resolve_attn(attn_implementation, dev, dt))


def place_model(model: nn.Module, placement: Placement) -> nn.Module:
    """Move a loaded model to the placement's device and dtype and switch its attention kernel."""
    if hasattr(model, "set_attn_implementation") and getattr(getattr(model, "config", None), "_attn_implementation", None) != placement.attn_implementation:
        model.set_attn_implementation(placement.attn_implementation)
    return model.to(device=placement.device, dtype=placement.dtype)


def load_placed(spec: str, placement: Placement, *, texts: Sequence[str] = (), trust_remote_code: bool = False, seed: int = 0):
    """(model, tokenizer) for any model spec, on the placement's device, dtype and attention kernel.

    Folder, GGUF and hub specs are loaded directly in the target dtype (no float32 copy first);
    'tiny' (its tokenizer trained on `texts`) and lab models are built in float32 on the CPU and then moved.
    """
    from alignscope.models.loading import load_model_and_tokenizer, load_tokenizer

    if spec == "tiny" or spec.startswith("lab:"):
        model, tok = load_model_and_tokenizer(spec, texts=texts, trust_remote_code=trust_remote_code, seed=seed)
        return place_model(model, placement), tok
    return load_placed_model(spec, placement, trust_remote_code=trust_remote_code, seed=seed), load_tokenizer(spec, trust_remote_code=trust_remote_code)


def load_placed_model(spec: str, placement: Placement, *, trust_remote_code: bool = False, seed: int = 0) -> nn.Module:
    """The model of a spec alone (a reference model), placed like `load_placed`'s."""
    from alignscope.models.loading import load_model

    return place_model(load_model(spec, dtype=placement.dtype, trust_remote_code=trust_remote_code, device=placement.device, seed=seed),
                       placement)


def use_device(placement: Placement) -> None:
    """Make the placement's GPU this process's current one, so accelerate (which takes the current CUDA device) uses `cuda:N`."""
    import torch

    if placement.device.type == "cuda":
        torch.cuda.set_device(placement.device)


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """`--device`, `--dtype`, `--attn-implementation` for an argparse command (read back with `placement_from_args`)."""
    g = parser.add_argument_group("device and precision")
    g.add_argument("--device", default="auto", help="auto (this process's GPU when there is one, else cpu), cpu, cuda or cuda:N")
    g.add_argument("--dtype", default="auto", choices=DTYPES, help="the weights' dtype; auto = bfloat16 on a GPU that supports it, "
                   "else float32 (log-prob sums and rewards are float32 either way)")
    g.add_argument("--attn-implementation", default="auto", choices=ATTN_IMPLEMENTATIONS,
                   help="attention kernel; auto = sdpa; flash_attention_2 needs a CUDA GPU and the flash-attn package")


def placement_from_args(args: argparse.Namespace) -> Placement:
    return resolve_placement(args.device, args.dtype, args.attn_implementation)
