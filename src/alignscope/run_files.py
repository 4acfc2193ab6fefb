"""The files of a run folder: one name for each, and the one JSONL reader and writer that every
writer (training, RL, audits, the TRL callbacks) and the report use, so a renamed file cannot make
the report silently say "not measured"."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alignscope.atomic import write_text
from alignscope.errors import DataError

CONFIG = "config.json"
METRICS = "metrics.jsonl"  # one row per logged optimizer step, TRL's metric names
EVAL_LOGPS = "eval_logps.jsonl"  # per-pair chosen/rejected log-probs of held-out pairs at each eval point
DISPLACEMENT = "displacement.jsonl"  # the displacement monitor's statistics at each eval point
PITFALLS = "pitfalls.jsonl"  # every detected pitfall, with its mitigation
PITFALLS_LIST = "pitfalls.json"  # a list of pitfalls (the demo's summary)
EVAL_START = "eval_start.json"
EVAL_START_PROBS = "eval_start_probs.safetensors"
RL_METRICS = "rl_metrics.jsonl"  # proxy, gold and KL per RL step
REWARD_VARIANCE_STEPS = "reward_variance.jsonl"  # per-prompt reward variances of each RL step
OVEROPTIMIZATION = "overoptimization.json"
CHES_TABLE = "ches.csv"  # the data audit's per-pair table
REWARD_VARIANCE = "reward_variance.json"  # the RM audit's per-prompt variances per reward model
TEACHER_TABLE = "teacher_table.json"
RM_AUDIT = "rm_audit.json"
REPORT = "report.html"
LOCK = ".alignscope.lock"  # the owner of a run folder (training/run_dir.py)
OVERWRITTEN = ".overwritten"  # a run replaced by --overwrite, kept aside until the new run ends
MANIFEST = "alignscope.json"  # what an output folder holds: kind, command, files, row convention
MANIFEST_SUFFIX = ".alignscope.json"  # the manifest beside a table written to a file path (name.csv -> name.alignscope.json)
COMPLETIONS = "completions.jsonl"  # RL samples: {"step", "prompt", "response", "rewards": {name: value}, "gold"}
SAMPLES = "samples.jsonl"  # the RM audit's sampled responses: {"row", "prompt", "response", "rewards", "gold"}
COMPARE_RM = "compare_rm.json"  # compare-rm's rows
TRAINER_STATE = "trainer_state.json"  # a Hugging Face / TRL run's log_history (top level or checkpoint-*/)

# The one row-numbering convention of every output that names input records.
ROW_CONVENTION = ("row = 1-based position of the record among the valid records of the input file, "
                  "in file order (the record number when no row was rejected)")

# Per-step logs that a resumed run truncates to its checkpoint's step and a fresh run starts empty.
STEP_LOGS = (METRICS, EVAL_LOGPS, DISPLACEMENT, PITFALLS, REWARD_VARIANCE_STEPS, RL_METRICS, COMPLETIONS)


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON object as a line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def _parse_json_line(text: str, path: Path, lineno: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg})", "fix or delete the line", source=str(path), line=lineno) from None


def read_jsonl(path: Path, required: Iterable[str] = ("step",)) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file (blank lines skipped), each with its line number as `_line`;
    every one must hold the `required` keys."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = _parse_json_line(line, path, lineno)
            if not isinstance(row, dict):
                raise DataError(f"expected a JSON object, got {type(row).__name__}", source=str(path), line=lineno)
            for key in required:
                if key not in row:
                    raise DataError("missing key", source=str(path), line=lineno, field=key)
            rows.append({**row, "_line": lineno})
    return rows


def read_json(path: Path) -> Any:
    """A whole-file JSON document; a syntax error is reported with its line."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg})", source=str(path), line=e.lineno) from None


def write_manifest(path: Path, kind: str, command: str, files: dict[str, str], **extra: Any) -> Path:
    """Write an output folder's manifest (`path` is the folder, or the manifest file itself for a
    table written to a file path): the report finds results by it, not by one file name."""
    path = Path(path)
    target = path / MANIFEST if path.is_dir() else path
    doc = {"kind": kind, "command": command, "files": files, "rows": ROW_CONVENTION, **extra}
    return write_text(target, json.dumps(doc, indent=1, default=str))


def read_manifest(path: Path) -> dict[str, Any]:
    """A manifest as written by `write_manifest`; a DataError naming the file when it is not one."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str) or not isinstance(doc.get("files", {}), dict):
        raise DataError("not an alignscope manifest (an object with 'kind' and 'files')", source=str(path))
    return doc


def truncate_jsonl(path: Path, after_step: int) -> None:
    """Drop lines logged after `after_step` (a resumed run re-logs them identically) and a line cut by a kill."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= after_step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    write_text(path, "".join(k + "\n" for k in keep))
