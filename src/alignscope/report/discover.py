"""Find every output under a folder by what it holds, not by one file name.

An output is a folder holding any file the report reads: a training or RL run of alignscope
(`metrics.jsonl`, `displacement.jsonl`, `rl_metrics.jsonl`, ...), a TRL output dir
(`trainer_state.json` at the top or in its latest `checkpoint-*`), an `audit data` folder or a CHES
table named by a manifest, an `audit rm` folder, a `compare-rm` result. A folder holding several
outputs (the demo's, or one a user gathered) yields each of them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignscope import run_files as rf

RUN_FILES = (rf.METRICS, rf.DISPLACEMENT, rf.EVAL_LOGPS, rf.PITFALLS, rf.PITFALLS_LIST, rf.RL_METRICS,
             rf.REWARD_VARIANCE_STEPS, rf.OVEROPTIMIZATION, rf.REWARD_VARIANCE, rf.TEACHER_TABLE, rf.COMPLETIONS,
             rf.SAMPLES, rf.COMPARE_RM, rf.TRAINER_STATE)
SKIP_DIRS = ("final", "tensorboard", "wandb", "runs", "__pycache__")
MAX_DEPTH = 3


@dataclass
class Output:
    """One output folder and the results found in it."""

    path: Path
    files: set[str] = field(default_factory=set)  # names from RUN_FILES present in `path`
    ches_tables: list[Path] = field(default_factory=list)
    comparisons: list[Path] = field(default_factory=list)  # compare-rm results
    manifests: list[dict[str, Any]] = field(default_factory=list)
    trainer_state: Path | None = None

    @property
    def kinds(self) -> list[str]:
        """What the folder holds, in the order the report draws it."""
        kinds = []
        if self.trainer_state is not None:
            kinds.append("TRL run")
        elif rf.RL_METRICS in self.files or rf.REWARD_VARIANCE_STEPS in self.files:
            kinds.append("RL run")
        elif self.files & {rf.METRICS, rf.DISPLACEMENT, rf.EVAL_LOGPS}:
            kinds.append("training run")
        if self.ches_tables:
            kinds.append("data audit")
        if self.files & {rf.REWARD_VARIANCE, rf.TEACHER_TABLE}:
            kinds.append("RM audit")
        if self.comparisons:
            kinds.append("compare-rm")
        if not kinds and self.files & {rf.PITFALLS_LIST, rf.PITFALLS}:
            kinds.append("pitfall list")
        return kinds

    @property
    def is_run(self) -> bool:
        return any(k in ("TRL run", "RL run", "training run") for k in self.kinds)

    def manifest_value(self, key: str) -> Any:
        for m in self.manifests:
            if key in m:
                return m[key]
        return None


def latest_trainer_state(folder: Path) -> Path | None:
    """`trainer_state.json` at the top of a TRL output dir, else in its highest `checkpoint-N`."""
    top = folder / rf.TRAINER_STATE
    if top.is_file():
        return top
    ckpts = []
    for c in folder.glob("checkpoint-*"):
        suffix = c.name.rpartition("-")[2]
        if suffix.isdigit() and (c / rf.TRAINER_STATE).is_file():
            ckpts.append((int(suffix), c / rf.TRAINER_STATE))
    return max(ckpts)[1] if ckpts else None


def _is_ches_csv(path: Path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError):
        return False
    return "ln_ches" in header


def inspect_folder(folder: Path) -> Output:
    out = Output(folder)
    out.files = {name for name in RUN_FILES if (folder / name).is_file()}
    out.trainer_state = latest_trainer_state(folder)
    tables: list[Path] = []
    manifest_paths = ([folder / rf.MANIFEST] if (folder / rf.MANIFEST).is_file() else []) + sorted(folder.glob("*" + rf.MANIFEST_SUFFIX))
    for mpath in manifest_paths:
        doc = rf.read_manifest(mpath)
        out.manifests.append(doc)
        table = doc.get("files", {}).get("ches_table")
        if table and (folder / table).is_file() and Path(table).suffix == ".csv":
            tables.append(folder / table)
        compared = doc.get("files", {}).get("compare_rm")
        if compared and (folder / compared).is_file():
            out.comparisons.append(folder / compared)
    if (folder / rf.CHES_TABLE).is_file():
        tables.append(folder / rf.CHES_TABLE)
    for csv_path in sorted(folder.glob("*.csv")):
        if csv_path not in tables and _is_ches_csv(csv_path):
            tables.append(csv_path)
    out.ches_tables = list(dict.fromkeys(tables))
    if rf.COMPARE_RM in out.files:
        out.comparisons.append(folder / rf.COMPARE_RM)
    out.comparisons = list(dict.fromkeys(out.comparisons))
    return out


def find_outputs(root: Path) -> list[Output]:
    """Every output folder at or under `root` (depth ≤ 3), `root` first, then subfolders by name."""
    found: list[Output] = []

    def walk(folder: Path, depth: int) -> None:
        here = inspect_folder(folder)
        if here.kinds:
            found.append(here)
        if depth >= MAX_DEPTH:
            return
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            if sub.name.startswith(".") or sub.name in SKIP_DIRS or sub.name.startswith("checkpoint-"):
                continue
            walk(sub, depth + 1)

    walk(Path(root), 0)
    return found
