"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

Every result file a user reads or a later command loads (audit tables and filtered datasets,
rejects, reports, the reference log-prob cache, RM-audit, comparison and over-optimisation
results, run configs, lab summaries) goes through here: a kill mid-write leaves only a hidden
temporary file, removed on any error, so no partial output is mistaken for a result.
Checkpoints have their own folder-level rename (`training/checkpoint.py`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str, errors: str | None = None) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", errors=errors) as f:
            f.write(text)
    return Path(path)
