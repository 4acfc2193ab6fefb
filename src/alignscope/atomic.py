"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

Every result file a user reads or a later command loads (audit tables and filtered datasets,
rejects, reports, the reference log-prob cache, RM-audit, comparison and over-optimisation
results, run configs, lab summaries) goes through here: a kill mid-write leaves only a hidden
temporary file, removed on any error, so no partial output is mistaken for a result.
Checkpoints have their own folder-level rename (`training/checkpoint.py`). A writer that fails
in any way (a full disk is an OSError from Python, a RuntimeError from torch.save, a
SafetensorError, an ArrowIOError) becomes an `OutputError` naming the file; the old file stays.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alignscope.errors import AlignscopeError, OutputError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, rename it over `path`."""
    path = Path(path)
    made = [p for p in [path.parent, *path.parent.parents] if not p.exists()]  # folders this write creates
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        for folder in made:  # innermost first: a failed write leaves no empty folder behind
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(e, AlignscopeError) or not isinstance(e, Exception):
            raise
        old = "the previous file is kept" if path.exists() else "nothing was written"
        raise OutputError(f"could not write {path} ({type(e).__name__}: {e}); {old}",
                          "check the free disk space and the folder's permissions, then run the command again") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str, errors: str | None = None) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", errors=errors) as f:
            f.write(text)
    return Path(path)
