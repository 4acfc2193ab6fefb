"""One owner per run folder: a lock, no silent overwrite, and a resume that matches the saved config.

Two runs writing one `output_dir` interleave their metrics and prune each other's checkpoints, and
a fresh run started into a finished one destroys it. `owns_output_dir` wraps `train()` and
`train_rl()` so that, before the body runs:

- the folder is locked (`run_files.LOCK`, created atomically, holding pid, host and start time); a
  second run exits 2 naming the first. A lock whose pid is dead on this host is stale: it is
  removed with a message. A lock from another host cannot be checked and is refused.
- a folder holding a run (config, checkpoints, logs or `final/`) is continued only with
  `--resume`, replaced only with `--overwrite`, and otherwise refused.
- `--resume` compares the saved `config.json` with the new config: only the keys in
  `SAFE_TO_CHANGE` may differ (the others would change what the checkpoint means).

A refused or failed run leaves the folder as it found it: a folder it created is removed when
nothing was written into it, and a run replaced by `--overwrite` is put back when the new run
failed before writing anything of its own.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from alignscope import run_files as rf
from alignscope.errors import ConfigError

# Keys a resumed run may change: how long it runs, how often it logs, evaluates and saves, how it
# reports. The LR schedule is re-planned for a new length (as TRL does); everything else (data,
# model, method, losses, optimiser settings, seed) must match the checkpoint.
SAFE_TO_CHANGE = frozenset({
    "max_steps", "steps", "epochs", "save_steps", "keep_last", "logging_steps", "eval_steps",
    "progress", "report_to", "nan_policy", "output_dir", "ref_cache_dir",
})


def _run_entries(out: Path) -> list[Path]:
    """What a run writes into its folder (so other files there, and the lock, are left alone)."""
    names = {rf.CONFIG, "final", *rf.STEP_LOGS, rf.EVAL_START, rf.EVAL_START_PROBS, rf.OVEROPTIMIZATION, "ref_cache"}
    return sorted(p for p in out.iterdir() if p.name in names or p.name.startswith(("checkpoint-", ".tmp-checkpoint-", ".old-checkpoint-"))
                  or p.name in (".tmp-final", ".old-final"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) answers kill(0) but holds nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def acquire_lock(out: Path, log: Callable[..., Any] = print) -> Path:
    """Create `out/LOCK` atomically (write a temp file, hard-link it into place), or refuse naming the owner."""
    lock = out / rf.LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    tmp = out / f"{rf.LOCK}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(me))
    try:
        for _ in range(3):
            try:
                os.link(tmp, lock)
                return lock
            except FileExistsError:
                pass
            try:
                owner = json.loads(lock.read_text())
                pid, host, started = int(owner["pid"]), str(owner["host"]), str(owner.get("started", "?"))
            except FileNotFoundError:
                continue  # released between our two calls
            except (OSError, ValueError, KeyError, TypeError):
                log(f"alignscope: {lock} is unreadable (not written by alignscope); removing it")
                lock.unlink(missing_ok=True)
                continue
            if host == me["host"] and (pid == me["pid"] or not _pid_alive(pid)):
                if pid != me["pid"]:
                    log(f"alignscope: removing the stale lock of process {pid} (started {started}), which is no longer running")
                lock.unlink(missing_ok=True)
                continue
            raise ConfigError(
                f"output_dir '{out}' is in use by process {pid} on host {host} (started {started})",
                "wait for that run to finish, stop it, or choose another output_dir; if that process is gone "
                f"(another host cannot be checked from here), delete {lock}",
            )
        raise ConfigError(f"could not lock output_dir '{out}'", f"check that nothing else keeps creating {lock}")
    finally:
        tmp.unlink(missing_ok=True)


def config_differences(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every key, other than SAFE_TO_CHANGE, whose value differs."""
    new = json.loads(json.dumps(new, default=str))
    return [f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(saved) | set(new))
            if k not in SAFE_TO_CHANGE and saved.get(k) != new.get(k)]


def check_resume(out: Path, cfg: Any) -> None:
    """Refuse a resume whose config differs from the saved one in a key that cannot change mid-run."""
    path = out / rf.CONFIG
    if not path.exists():
        return
    try:
        saved = rf.read_json(path)
    except Exception:
        saved = None
    if not isinstance(saved, dict):
        raise ConfigError(f"the saved config {path} is unreadable, so the resume cannot be checked",
                          "resume into a copy of the run after restoring config.json, or start again with --overwrite")
    diff = config_differences(saved, asdict(cfg))
    if diff:
        raise ConfigError(
            f"--resume into '{out}' with a config that differs from the saved one in {len(diff)} key(s) that cannot "
            f"change mid-run: {'; '.join(diff[:8])}" + (" ..." if len(diff) > 8 else ""),
            f"resume with the saved settings (only {', '.join(sorted(SAFE_TO_CHANGE))} may change), "
            "or start again with --overwrite or another output_dir",
        )


def _describe(entries: list[Path]) -> str:
    names = {p.name for p in entries}
    if "final" in names:
        return "a finished run (final/)"
    ckpts = sorted((int(n.split("-")[1]) for n in names if n.startswith("checkpoint-") and n.split("-")[1].isdigit()))
    return f"an unfinished run (newest checkpoint-{ckpts[-1]})" if ckpts else "the files of an earlier run"


@contextmanager
def claim(out: Path, cfg: Any, *, resume: bool, overwrite: bool, log: Callable[..., Any] = print) -> Iterator[None]:
    """Own `out` for the duration of the block (see the module docstring)."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other", "pass --resume to continue the run, or --overwrite to start again")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir '{out}' is a file, not a folder", "set output_dir to a folder path")
    missing = [p for p in [out, *out.parents] if not p.exists()]
    top_new = missing[-1] if missing else None  # the highest folder this run creates, removed if it fails empty
    out.mkdir(parents=True, exist_ok=True)
    aside: Path | None = None
    lock = None
    try:
        lock = acquire_lock(out, log)
        entries = _run_entries(out)
        if resume:
            check_resume(out, cfg)
        elif entries and not overwrite:
            raise ConfigError(
                f"output_dir '{out}' already holds {_describe(entries)}",
                "pass --resume to continue it, --overwrite to replace it, or choose another output_dir",
            )
        elif entries:
            aside = out / f"{rf.OVERWRITTEN}.{os.getpid()}"
            shutil.rmtree(aside, ignore_errors=True)
            aside.mkdir()
            for p in entries:
                p.rename(aside / p.name)
            log(f"--overwrite: replacing {_describe(entries)} in {out}")
        yield
    except BaseException:
        if aside is not None and aside.exists():
            if not _run_entries(out):  # the new run wrote nothing of its own: put the old one back
                for p in aside.iterdir():
                    p.rename(out / p.name)
            shutil.rmtree(aside, ignore_errors=True)
        _release(lock)
        if top_new is not None and top_new.exists() and not any(f.is_file() for f in top_new.rglob("*")):
            shutil.rmtree(top_new, ignore_errors=True)
        raise
    else:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        _release(lock)


def _release(lock: Path | None) -> None:
    if lock is not None:
        try:
            if json.loads(lock.read_text()).get("pid") == os.getpid():
                lock.unlink()
        except (OSError, ValueError, AttributeError):
            pass


def owns_output_dir(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a trainer `fn(cfg, *, resume, ...)`: it runs while owning `cfg.output_dir`, and takes `overwrite=`.

    Only the main process (RANK 0 or unset) claims the folder; the other ranks of a distributed run write nothing there.
    """

    @functools.wraps(fn)
    def wrapper(cfg: Any, *args: Any, resume: bool = False, overwrite: bool = False, **kw: Any) -> Any:
        if not str(cfg.output_dir).strip():  # `output_dir=$OUT` with $OUT unset: the run would fill the working folder
            raise ConfigError("output_dir is empty", "set output_dir to the run's folder, e.g. output_dir=runs/dpo")
        if os.environ.get("RANK", "0") != "0":
            return fn(cfg, *args, resume=resume, **kw)
        with claim(Path(cfg.output_dir), cfg, resume=resume, overwrite=overwrite, log=kw.get("log") or print):
            return fn(cfg, *args, resume=resume, **kw)

    return wrapper
