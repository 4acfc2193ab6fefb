"""Atomic checkpoints: a run killed at any moment resumes from the last complete one.

A checkpoint is a folder `checkpoint-<step>` holding the trainable weights (safetensors), the
optimizer and scheduler states, RNG states and the data position. It is written into a temp
folder and renamed into place, and carries a `complete.json` written last; a folder without a
valid `complete.json` is partial or corrupt and is skipped with a message.

Test hook: ALIGNSCOPE_TEST_DIE_IN_CHECKPOINT=STEP:PHASE makes the process SIGKILL itself while
writing checkpoint-STEP, at PHASE `weights` (temp folder half written), `rename` (temp folder
complete, not yet renamed) or `prune` (renamed, older checkpoints not yet deleted), so the kill
tests hit a checkpoint write deterministically. Unset, it does nothing.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from alignscope.errors import ConfigError, TrainingError

MARKER = "complete.json"


def rng_state() -> dict[str, Any]:
    """Python and NumPy RNG states as JSON-able lists (so no pickle is ever loaded)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached]}


def set_rng_state(state: dict[str, Any], torch_state: torch.Tensor) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch_state)


def _test_kill_point(step: int, phase: str) -> None:
    if os.environ.get("ALIGNSCOPE_TEST_DIE_IN_CHECKPOINT") == f"{step}:{phase}":
        os.kill(os.getpid(), signal.SIGKILL)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep_last: int = 2,
    *,
    tensors: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    engine_state: Path | None = None,
) -> Path:
    """Write checkpoint-<step> atomically and delete all but the newest `keep_last`.

    `tensors` and `optimizer_state` stand in for the model's and optimizer's own state where those hold shards
    (FSDP: the whole ones, which every process gathers and the main process writes). `engine_state`: a folder of
    DeepSpeed's own checkpoint (written by every process), moved in as `deepspeed/` before the checkpoint is complete."""
    run_dir = Path(run_dir)
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".tmp-checkpoint-{step}"
    old = run_dir / f".old-checkpoint-{step}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tensors = trainable_state(model) if tensors is None else tensors
        # safetensors refuses shared storage (tied embeddings): store a copy per name.
        save_file({k: v.clone() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
        _test_kill_point(step, "weights")
        optimizer_state = optimizer.state_dict() if optimizer_state is None else optimizer_state
        torch.save(
            {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state()},
            tmp / "trainer_state.pt",
        )
        (tmp / "state.json").write_text(json.dumps({**state, "rng": rng_state()}))
        if engine_state is not None:
            Path(engine_state).rename(tmp / "deepspeed")
        (tmp / MARKER).write_text(json.dumps({"step": step}))
        _test_kill_point(step, "rename")
        if final.exists():
            final.rename(old)
        tmp.rename(final)
    except Exception as e:  # a full disk shows as RuntimeError in torch.save, SafetensorError, OSError, ...
        shutil.rmtree(tmp, ignore_errors=True)
        if engine_state is not None:
            shutil.rmtree(engine_state, ignore_errors=True)
        if old.exists() and not final.exists():
            old.rename(final)
        kept = [p.name for p in list_checkpoints(run_dir) if _valid(p)]
        raise TrainingError(
            f"could not write checkpoint-{step} in {run_dir} ({type(e).__name__}: {e}); "
            + (f"the last good checkpoint, {kept[-1]}, is kept" if kept else "no earlier checkpoint exists"),
            "free disk space or fix the folder's permissions, then run again with --resume",
        ) from None
    shutil.rmtree(old, ignore_errors=True)
    _test_kill_point(step, "prune")
    for stale in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


@contextmanager
def atomic_folder(path: Path, kept: str) -> Iterator[Path]:
    """Yield a temporary folder beside `path` (the run's `final/`); when the block succeeds, it replaces `path`. Any
    failure (a full disk is an OSError, a RuntimeError from torch.save, a SafetensorError) removes the temporary folder
    and is a `TrainingError` saying that `kept` (the checkpoint just written) is on disk; an old `path` stays."""
    path = Path(path)
    tmp, old = path.with_name(f".tmp-{path.name}"), path.with_name(f".old-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    except Exception as e:  # noqa: BLE001 (any writer's failure)
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            old.rename(path)
        raise TrainingError(f"could not write {path} ({type(e).__name__}: {e}); {kept} is kept",
                            f"free disk space or fix the folder's permissions, then run again with --resume "
                            f"(it starts from {kept} and writes {path.name}/)") from None
    shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    out = []
    for p in Path(run_dir).glob("checkpoint-*"):
        try:
            out.append((int(p.name.split("-")[1]), p))
        except ValueError:
            continue
    return [p for _, p in sorted(out)]


def _valid(path: Path) -> bool:
    try:
        return json.loads((path / MARKER).read_text())["step"] == int(path.name.split("-")[1])
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return False


def check_contents(path: Path, tensors: dict[str, torch.Tensor], trainer: Any, state: Any) -> str | None:
    """What is missing from a parseable checkpoint (so it cannot be resumed), or None when it is whole."""
    if not tensors:
        return "model.safetensors holds no tensors"
    if not isinstance(trainer, dict):
        return f"trainer_state.pt holds a {type(trainer).__name__}, not a mapping"
    for key in ("optimizer", "scheduler", "torch_rng"):
        if key not in trainer:
            return f"trainer_state.pt has no '{key}'"
    if not isinstance(trainer["optimizer"], dict) or "state" not in trainer["optimizer"] or "param_groups" not in trainer["optimizer"]:
        return "trainer_state.pt's optimizer state has no 'state' or 'param_groups'"
    if not isinstance(trainer["torch_rng"], torch.Tensor) or trainer["torch_rng"].dtype != torch.uint8:
        return "trainer_state.pt's torch_rng is not a byte tensor"
    if not isinstance(state, dict):
        return f"state.json holds a {type(state).__name__}, not an object"
    if state.get("step") != int(path.name.split("-")[1]):
        return f"state.json's step is {state.get('step')!r}, not {path.name.split('-')[1]}"
    rng = state.get("rng")
    if not isinstance(rng, dict) or not {"python", "numpy"} <= set(rng):
        return "state.json has no Python and NumPy RNG states"
    return None


def fits(tensors: dict[str, torch.Tensor], trainer: dict[str, Any], model: torch.nn.Module | None,
         optimizer: torch.optim.Optimizer | None) -> str | None:
    """Why a whole checkpoint cannot be loaded into `model` and `optimizer` (another model, LoRA setting or
    optimizer; a tensor cut short or holding NaN), or None when it fits."""
    if model is not None:
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        missing = [k for k in expected if k not in tensors]
        unexpected = [k for k in tensors if k not in expected]
        if missing or unexpected:
            return (f"model.safetensors does not match the model: {len(missing)} tensor(s) missing, {len(unexpected)} unexpected "
                    f"(e.g. {(missing + unexpected)[:3]})")
        for k, shape in expected.items():
            if tuple(tensors[k].shape) != shape:
                return f"model.safetensors' {k} has shape {tuple(tensors[k].shape)}, the model's is {shape}"
        for k, v in tensors.items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                return f"model.safetensors' {k} holds NaN or inf"
    if optimizer is not None:
        saved, current = trainer["optimizer"]["param_groups"], optimizer.param_groups
        sizes = [len(g.get("params", [])) for g in saved] if all(isinstance(g, dict) for g in saved) else None
        if sizes != [len(g["params"]) for g in current]:
            return f"the optimizer state has parameter groups of {sizes} tensors, the run's optimizer {[len(g['params']) for g in current]}"
        params = [p for g in current for p in g["params"]]
        ids = [i for g in saved for i in g["params"]]
        state = trainer["optimizer"]["state"]
        for index, param in zip(ids, params):
            for name, value in (state.get(index) or {}).items() if isinstance(state, dict) else ():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != tuple(param.shape):
                    return f"the optimizer's {name} of parameter {index} has shape {tuple(value.shape)}, the parameter's is {tuple(param.shape)}"
    return None


def load_latest(run_dir: Path, log=print, model: torch.nn.Module | None = None,
                optimizer: torch.optim.Optimizer | None = None,
                deepspeed: dict[str, int] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]] | None:
    """(model tensors, trainer state, run state) of the newest whole checkpoint, or None; each one skipped is named.

    Given the run's `model` and `optimizer`, a checkpoint must also fit them (`fits`) to be used. `deepspeed`: the
    run's DeepSpeed launch ({"zero_stage", "processes"}, None without DeepSpeed); a checkpoint written under another
    launch is refused, since DeepSpeed's optimizer state is its own, partitioned per process."""
    for path in reversed(list_checkpoints(run_dir)):
        if not _valid(path):
            log(f"alignscope: checkpoint {path} is partial (no valid {MARKER}); using the previous one")
            continue
        try:
            tensors = load_file(str(path / "model.safetensors"))
            trainer = torch.load(path / "trainer_state.pt", weights_only=True)
            state = json.loads((path / "state.json").read_text())
        except Exception as e:  # a corrupt file of any kind: fall back, say so
            log(f"alignscope: checkpoint {path} is corrupt ({type(e).__name__}: {e}); using the previous one")
            continue
        problem = check_contents(path, tensors, trainer, state)
        if problem is None:
            check_launch(path, state.get("deepspeed"), deepspeed)
            problem = fits(tensors, trainer, model, optimizer)
        if problem:
            log(f"alignscope: checkpoint {path} is incomplete ({problem}); using the previous one")
            continue
        return tensors, trainer, state
    return None


def check_launch(path: Path, saved: dict[str, int] | None, current: dict[str, int] | None) -> None:
    """Refuse resuming a checkpoint under another launch where DeepSpeed is on either side: a DeepSpeed checkpoint's
    optimizer state is DeepSpeed's own (partitioned per process), and DeepSpeed reads no other."""
    if saved == current:
        return

    def name(launch: dict[str, int] | None) -> str:
        return "without DeepSpeed" if launch is None else f"under DeepSpeed ZeRO-{launch['zero_stage']} by {launch['processes']} processes"

    raise ConfigError(f"{path} was written {name(saved)}, this run is {name(current)}; a DeepSpeed "
                      "checkpoint's optimizer state is DeepSpeed's own, partitioned per process, so only the launch that wrote "
                      "it resumes it",
                      f"resume {name(saved)} (the same accelerate config and process count), or start a new run in another output_dir")


def load_logps_cache(path: Path, expected: int, log=print) -> torch.Tensor | None:
    """A cached log-prob vector of `expected` finite values, or None (the caller recomputes it) when the
    file is missing, unreadable, the wrong length or holds NaN/inf; a wrong cache is named and removed."""
    if not path.exists():
        return None
    try:
        flat = load_file(str(path))["logps"]
        problem = None if flat.dim() == 1 and len(flat) == expected else f"{tuple(flat.shape)} values for {expected} responses"
        if problem is None and not torch.isfinite(flat).all():
            problem = "non-finite values"
    except Exception as e:
        problem = f"{type(e).__name__}: {e}"
    if problem is None:
        return flat
    log(f"alignscope: the reference log-prob cache {path} is wrong ({problem}); recomputing it")
    path.unlink(missing_ok=True)
    return None


def load_model_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    wrong = [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(expected[k].shape)} in the model"
             for k, v in tensors.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise TrainingError(f"checkpoint does not match the model ({len(wrong)} tensor(s) of another shape, e.g. {wrong[:2]})",
                            "resume with the same model and LoRA settings as the run that wrote it")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or [m for m in missing if m not in tensors]:
        bad = (missing or [])[:3] + (unexpected or [])[:3]
        if bad:
            raise TrainingError(
                f"checkpoint does not match the model ({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {bad})",
                "resume with the same model and LoRA settings as the run that wrote it",
            )
