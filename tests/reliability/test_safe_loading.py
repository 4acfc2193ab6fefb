"""Safe loading: nothing alignscope reads can run someone else's code.

Static rules over the source tree (by syntax tree, not by grep, so `model.eval()` is no false
alarm): `torch.load` only with weights_only=True, YAML only through the safe loader, no
eval/exec/compile/pickle, and `trust_remote_code` False unless the user passes it on. Then the
same rules by behaviour: a malicious pickle, YAML tag, custom-code model folder and reward spec
are each refused without running their payload, and a trained run folder holds safetensors only
(besides the optimizer state file that is read with weights_only=True).
"""

from __future__ import annotations

import ast
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import alignscope
from alignscope.cli.main import main
from alignscope.errors import AlignscopeError, ConfigError, ModelError
from alignscope.options import load_yaml
from alignscope.training.checkpoint import list_checkpoints, load_latest

SRC = Path(alignscope.__file__).parent
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_ATTRS = {("pickle", "load"), ("pickle", "loads"), ("marshal", "loads"), ("yaml", "load"), ("yaml", "load_all"),
                   ("yaml", "unsafe_load"), ("yaml", "full_load"), ("dill", "load"), ("dill", "loads")}
WEIGHT_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack", ".npy", ".npz"}
ALLOWED_NON_SAFETENSORS = {"trainer_state.pt"}  # optimizer/scheduler state and torch RNG, read with weights_only=True


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def source_files() -> list[tuple[Path, ast.Module]]:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30
    return [(p, ast.parse(p.read_text(), str(p))) for p in files]


def test_static_rules_hold_in_every_source_file():
    problems = []
    for path, tree in source_files():
        where = lambda n: f"{path.relative_to(SRC)}:{n.lineno}"  # noqa: E731
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = _dotted(node.func)
                kw = {k.arg: k.value for k in node.keywords}
                if name in FORBIDDEN_CALLS:
                    problems.append(f"{where(node)}: {name}()")
                if tuple(name.split(".")[-2:]) in FORBIDDEN_ATTRS:
                    problems.append(f"{where(node)}: {name}()")
                if name.endswith("torch.load") and not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    problems.append(f"{where(node)}: torch.load without weights_only=True")
                trc = kw.get("trust_remote_code")
                if isinstance(trc, ast.Constant) and trc.value is not False:
                    problems.append(f"{where(node)}: trust_remote_code={trc.value!r} hard-coded")
            if isinstance(node, ast.Attribute) and node.attr in ("Loader", "FullLoader", "UnsafeLoader", "UnsafeConstructor"):
                problems.append(f"{where(node)}: yaml.{node.attr}")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults + node.args.kw_defaults
                for arg, default in zip(args, defaults):
                    if arg.arg == "trust_remote_code" and default is not None and not (isinstance(default, ast.Constant) and default.value is False):
                        problems.append(f"{where(node)}: {node.name}(trust_remote_code=...) does not default to False")
            if isinstance(node, ast.AnnAssign) and _dotted(node.target) == "trust_remote_code":
                value = node.value.args[0] if isinstance(node.value, ast.Call) and _dotted(node.value.func) == "opt" else node.value
                if not (isinstance(value, ast.Constant) and value.value is False):
                    problems.append(f"{where(node)}: config field trust_remote_code does not default to False")
    assert problems == []


class Payload:
    """Unpickling this runs `touch <marker>`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _train_argv(method: str, data: Path, out: Path, **over) -> list[str]:
    opts = {"model": "tiny", "data": data, "output_dir": out, "batch_size": 4, "max_length": 32, "max_steps": 4,
            "save_steps": 2, "progress": "false", **over}
    return ["train", method, *(f"{k}={v}" for k, v in opts.items())]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("safe") / "pairs.jsonl"
    rows = [{"prompt": f"question {i}?", "chosen": "yes it is good", "rejected": "no it is bad"} for i in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("method", ["rm", "dpo"])
def test_run_folder_holds_safetensors_only(pairs, tmp_path, method):
    out = tmp_path / "run"
    assert main(_train_argv(method, pairs, out)) == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert {"model.safetensors"} <= {p.name for p in weights}
    if method == "rm":
        assert (out / "final" / "reward_head.safetensors") in weights
    else:
        assert any(p.parent.name == "ref_cache" for p in weights)
    for p in weights:
        load_file(str(p))
    other = [p for p in files if p.suffix in WEIGHT_SUFFIXES]
    assert other and all(p.name in ALLOWED_NON_SAFETENSORS and p.parent.name.startswith("checkpoint-") for p in other)
    for p in other:
        torch.load(p, weights_only=True)


def test_malicious_trainer_state_is_refused_and_the_previous_checkpoint_used(pairs, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    assert main(_train_argv("sft", pairs, out)) == 0
    newest = list_checkpoints(out)[-1]
    with open(newest / "trainer_state.pt", "wb") as f:
        pickle.dump({"optimizer": Payload(marker)}, f, protocol=2)
    messages: list[str] = []
    found = load_latest(out, log=messages.append)
    assert not marker.exists()
    assert found is not None and found[2]["step"] == 2
    assert any(f"checkpoint {newest} is corrupt" in m for m in messages)


def test_yaml_tags_are_not_constructed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"lr: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(path)
    assert not marker.exists()


def test_custom_model_code_is_not_run_without_trust_remote_code(tmp_path):
    from alignscope.models.loading import load_model

    marker, folder = tmp_path / "pwned", tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"},
    }))
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    with pytest.raises(ModelError, match="needs its own Python code") as e:
        load_model(str(folder))
    assert "trust_remote_code: true" in str(e.value) and not marker.exists()


def test_reward_spec_is_imported_not_evaluated(tmp_path, monkeypatch):
    from alignscope.rewards.sources import load_reward_source

    monkeypatch.chdir(tmp_path)
    with pytest.raises(AlignscopeError):
        load_reward_source("__import__('pathlib').Path('pwned').touch() or os:path")
    assert not (tmp_path / "pwned").exists()
