"""Long audits in chunks: each chunk's results are saved when it finishes, so a kill loses at most the
chunks in progress and `--resume` skips the rest; under `torchrun` / `accelerate launch` chunk k goes to
process k mod N. A chunk's items (and its sampling seed) are the same whatever N, so N processes give
the very numbers of one. The main process gathers the chunks in input order; the others get None.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignscope.atomic import write_text
from alignscope.errors import ConfigError

CHUNKS_DIR = ".audit_chunks"  # beside an audit's outputs while it runs; removed once they are written


def distributed() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier) of this process: one process, or one of `torchrun` / `accelerate launch`'s."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.wait_for_everyone


def run_in_chunks(
    n_items: int, chunk_size: int, chunk_dir: Path, settings: dict[str, Any], compute: Callable[[int, int, int], Any], *,
    resume: bool = False, rank: int = 0, world: int = 1, barrier: Callable[[], None] = lambda: None,
    log: Callable[[str], Any] = print, together: bool = False,
) -> list[Any] | None:
    """`compute(k, start, stop)` for each chunk of `chunk_size` items (JSON-able results), saved in `chunk_dir`.

    `settings` are what the results depend on: `resume` refuses a chunk folder saved under others,
    naming them. A failure before any chunk is saved leaves no folder behind. `together`: every process
    computes every chunk with the others (a sharded model) and the one whose `compute` returns the result
    (the main one) saves it.
    """
    n_chunks = math.ceil(n_items / chunk_size)
    meta_path = chunk_dir / "settings.json"
    meta = {**settings, "items": n_items, "chunk_size": chunk_size}
    made = [p for p in [chunk_dir, *chunk_dir.parents] if not p.exists()]  # folders this run creates (removed if it fails early)
    if rank == 0:
        if resume and meta_path.exists():
            saved = json.loads(meta_path.read_text())
            changed = sorted(k for k in set(saved) | set(meta) if saved.get(k) != meta.get(k))
            if changed:
                raise ConfigError(f"--resume: the unfinished audit in {chunk_dir.parent} was run with other settings ({', '.join(changed)})",
                                  "pass the same arguments as the first run, or drop --resume to start again")
            done = sum((chunk_dir / f"chunk-{k:05d}.json").exists() for k in range(n_chunks))
            log(f"resuming: {done} of {n_chunks} chunks of {chunk_size} already done")
        else:
            if chunk_dir.exists():
                if not resume:
                    log(f"discarding the chunks of an unfinished earlier audit in {chunk_dir} (pass --resume to continue one)")
                shutil.rmtree(chunk_dir)
            chunk_dir.mkdir(parents=True)
            write_text(meta_path, json.dumps(meta, indent=1))
    barrier()
    try:
        for k in range(n_chunks) if together else range(rank, n_chunks, world):
            path = chunk_dir / f"chunk-{k:05d}.json"
            if not path.exists():
                result = compute(k, k * chunk_size, min(n_items, (k + 1) * chunk_size))
                if result is not None:
                    write_text(path, json.dumps(result))
    except Exception:
        if rank == 0 and not any(chunk_dir.glob("chunk-*.json")):
            shutil.rmtree(made[-1] if made else chunk_dir, ignore_errors=True)
        raise
    barrier()
    if rank != 0:
        return None
    return [json.loads((chunk_dir / f"chunk-{k:05d}.json").read_text()) for k in range(n_chunks)]


def sharding_launch(placement, command: str, log: Callable[[str], Any] = print):
    """Under an FSDP launch of several processes (`accelerate launch` with an FSDP config), the Accelerator that
    shards the audited model over them; else None: each process holds the whole model (data parallelism)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() not in ("1", "true") or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    from alignscope.models.fsdp import shards_model

    accelerator = Accelerator(cpu=placement.device.type == "cpu")
    return accelerator if shards_model(accelerator, command, log) else None


def finish(chunk_dir: Path) -> None:
    """The results are written: the chunks have served."""
    shutil.rmtree(chunk_dir, ignore_errors=True)
