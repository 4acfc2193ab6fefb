"""`build_report(run_dir)`: one self-contained HTML page for everything a run measured.

The page has no scripts and no external resources (plots are inline base64 PNGs, the style sheet is
inline), so it can be mailed, archived or opened offline. Each input file is optional: a missing
one turns its section into "not measured in this run"; a malformed one raises a DataError that
names the file and line, because a silently half-drawn report would hide the pitfall it exists for.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from alignscope import run_files as rf
from alignscope.atomic import write_text
from alignscope.diagnostics.overoptimization import GaoFit, fit_rl, gold_peak, sqrt_kl
from alignscope.diagnostics.warnings import detect_displacement, detect_overoptimization
from alignscope.errors import DataError
from alignscope.report import plots
from alignscope.run_files import read_json, read_jsonl

NOT_MEASURED = '<p class="missing">not measured in this run</p>'
CHES_COLUMNS = ("index", "ches", "ln_ches", "edit_distance", "flagged")
TEACHER_COLUMNS = ("name", "mean_variance", "low_variance_fraction", "offpolicy_accuracy", "onpolicy_accuracy", "reason")
TOP_FLAGGED = 20

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.meta{color:#666;font-size:.9em}.missing{color:#888;font-style:italic}
.pitfalls{border:2px solid #d1495b;background:#fdf0f1;padding:.6em 1em;border-radius:6px}
.pitfalls.none{border-color:#5a9a68;background:#f0f8f1}
.pitfalls li{margin:.3em 0}.mitigation{color:#444}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.text{text-align:left;max-width:40em;overflow-wrap:anywhere}
figure{margin:.6em 0}img{max-width:100%;height:auto;border:1px solid #eee}
"""


# ---------------------------------------------------------------- readers


def _number(value: Any, path: Path, line: int, field: str, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"expected a number, got {value!r}", source=str(path), line=line, field=field)
    return float(value)


def _series(rows: list[dict[str, Any]], path: Path, keys: Iterable[str] | None = None) -> dict[str, tuple[list, list]]:
    """{key: (steps, values)} for the numeric keys of `rows` (all of them when `keys` is None)."""
    out: dict[str, tuple[list, list]] = {}
    for row in rows:
        step = _number(row["step"], path, row["_line"], "step")
        for key, value in row.items():
            if key in ("step", "_line") or (keys is not None and key not in keys):
                continue
            if value is None or isinstance(value, (str, list, dict)):
                continue
            v = _number(value, path, row["_line"], key)
            if math.isfinite(v):
                out.setdefault(key, ([], []))
                out[key][0].append(step)
                out[key][1].append(v)
    return out


def _parse_cell(raw: str | None) -> Any:
    """An optional audit column as a number or a yes/no when it is one (so the table formats it), else text."""
    text = (raw or "").strip()
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text) if text.lstrip("-").isdigit() else float(text)
    except ValueError:
        return raw


def read_ches_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of ches.csv with numbers parsed; `flagged` accepts 1/0, true/false, yes/no."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CHES_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"missing column(s) {missing}", f"the header needs {', '.join(CHES_COLUMNS)}",
                            source=str(path), line=1, field=missing[0])
        for lineno, rec in enumerate(reader, start=2):
            row: dict[str, Any] = dict(rec)
            for col in ("ches", "ln_ches", "edit_distance"):
                raw = (rec[col] or "").strip()
                if col == "edit_distance" and raw == "":
                    row[col] = None
                    continue
                try:
                    row[col] = float(raw)
                except ValueError:
                    raise DataError(f"expected a number, got {raw!r}", source=str(path), line=lineno, field=col) from None
            flag = (rec["flagged"] or "").strip().lower()
            if flag not in ("1", "0", "true", "false", "yes", "no"):
                raise DataError(f"expected 1/0 or true/false, got {rec['flagged']!r}", source=str(path), line=lineno, field="flagged")
            row["flagged"] = flag in ("1", "true", "yes")
            for col in set(rec) - set(CHES_COLUMNS):
                row[col] = _parse_cell(rec[col])
            rows.append(row)
    return rows


# ---------------------------------------------------------------- html pieces


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.4g}"
    return _esc(x)


def _img(name: str, png: plots.Png, alt: str) -> str:
    b64 = base64.b64encode(png.data).decode("ascii")
    return (f'<figure><img data-plot="{name}" alt="{_esc(alt)}" width="{png.width}" height="{png.height}" '
            f'src="data:image/png;base64,{b64}"></figure>')


def _table(headers: list[str], rows: list[list[Any]], text_cols: Iterable[int] = ()) -> str:
    text_cols = set(text_cols)
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="text">{_esc(v)}</td>' if i in text_cols else f"<td>{_fmt(v)}</td>"
                         for i, v in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_esc(title)}</h2>\n{body}\n</section>'


# ---------------------------------------------------------------- sections


def _training_section(run: Path) -> str:
    path = run / rf.METRICS
    if not path.exists():
        return NOT_MEASURED
    series = _series(read_jsonl(path), path)
    if not series:
        return '<p class="missing">metrics.jsonl has no numeric metrics</p>'
    png, omitted = plots.training_curves(series)
    note = f'<p class="meta">{omitted} further metric group(s) not plotted.</p>' if omitted else ""
    last = {k: v[1][-1] for k, v in series.items()}
    keys = [k for k in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected") if k in last]
    summary = _table(["metric", "last value"], [[k, last[k]] for k in keys]) if keys else ""
    return _img("training_curves", png, "training curves") + note + summary


def _displacement_section(run: Path) -> tuple[str, list[dict[str, Any]]]:
    path = run / rf.DISPLACEMENT
    if not path.exists():
        return NOT_MEASURED, []
    rows = read_jsonl(path)
    keys = ("fraction_chosen_fell", "mean_chosen_change", "mean_rejected_change", "ranking_accuracy")
    series = _series(rows, path, keys)
    if not series:
        return '<p class="missing">displacement.jsonl has no displacement statistics</p>', []
    body = _img("displacement", plots.displacement(series), "likelihood displacement over training")
    last = rows[-1]
    body += _table(["step"] + [k for k in keys if k in last], [[last["step"]] + [last[k] for k in keys if k in last]])
    body += ('<p class="meta">Likelihood displacement: DPO can lower log π(y+|x) while raising the margin; the mass '
             'moves to other responses, harmlessly or to ones opposite in meaning.</p>')
    derived = []
    if all(k in last for k in ("fraction_chosen_fell", "mean_chosen_change")) and last["step"] != 0:
        derived = [{**p.__dict__, "step": last["step"], "source": rf.DISPLACEMENT} for p in detect_displacement(last)]
    return body, derived


def _ches_section(run: Path) -> str:
    path = run / rf.CHES_TABLE
    if not path.exists():
        return NOT_MEASURED
    rows = read_ches_csv(path)
    if not rows:
        return '<p class="missing">ches.csv has no pairs</p>'
    ln = np.array([r["ln_ches"] for r in rows])
    raw = np.array([r["ches"] for r in rows])
    flagged = np.array([r["flagged"] for r in rows], dtype=bool)
    body = _img("ches_histogram", plots.ches_histogram(ln, raw, flagged), "CHES histogram")
    body += f'<p>{int(flagged.sum())} of {len(rows)} pairs flagged as likely to cause likelihood displacement.</p>'
    top = sorted((r for r in rows if r["flagged"]), key=lambda r: -r["ln_ches"])[:TOP_FLAGGED]
    if top:
        extra = [c for c in rows[0] if c not in CHES_COLUMNS]
        cell = lambda v: v[:120] if isinstance(v, str) else v  # noqa: E731 (numbers and yes/no go through _fmt)
        table_rows = [[r["index"], r["ches"], r["ln_ches"], r["edit_distance"]] + [cell(r[c]) for c in extra] for r in top]
        text = [4 + i for i, c in enumerate(extra) if isinstance(top[0][c], str)]
        body += f"<h3>Top {len(top)} flagged pairs by length-normalised CHES</h3>"
        body += _table(["index", "CHES", "LN-CHES", "edit distance"] + extra, table_rows, text_cols=text)
    return body


def _variance_section(run: Path) -> str:
    path = run / rf.REWARD_VARIANCE
    if not path.exists():
        return NOT_MEASURED
    data = read_json(path)
    if not isinstance(data, dict) or not data:
        raise DataError("expected a non-empty object {rm_name: [per-prompt variances]}", source=str(path))
    variances: dict[str, list[float]] = {}
    for name, values in data.items():
        if not isinstance(values, list) or not values:
            raise DataError("expected a non-empty list of per-prompt variances", source=str(path), field=str(name))
        variances[name] = [_number(v, path, None, str(name)) for v in values]
    body = _img("reward_variance", plots.reward_variance(variances), "per-prompt reward variance per RM")
    body += _table(["RM", "prompts", "mean", "median", "min", "max"],
                   [[n, len(v), float(np.mean(v)), float(np.median(v)), min(v), max(v)] for n, v in variances.items()],
                   text_cols=[0])
    table_path = run / rf.TEACHER_TABLE
    if table_path.exists():
        table = read_json(table_path)
        if not isinstance(table, list) or not all(isinstance(r, dict) and "name" in r for r in table):
            raise DataError("expected a list of objects with a 'name' key", source=str(table_path))
        cols = [c for c in TEACHER_COLUMNS if any(c in r for r in table)]
        body += "<h3>Teacher table (best expected teacher first)</h3>"
        body += _table(["rank"] + cols, [[i] + [r.get(c) for c in cols] for i, r in enumerate(table, start=1)],
                       text_cols=[cols.index(c) + 1 for c in ("name", "reason") if c in cols])
    body += ('<p class="meta">Rewards standardised with each RM\'s global mean and std before taking per-prompt '
             'variances. Low variance flattens the RLHF objective: an accurate RM can still teach slowly.</p>')
    return body


def _overopt_section(run: Path) -> tuple[str, list[dict[str, Any]]]:
    path = run / rf.RL_METRICS
    if not path.exists():
        return NOT_MEASURED, []
    rows = read_jsonl(path)
    if not rows:
        return '<p class="missing">rl_metrics.jsonl is empty</p>', []
    steps = np.array([_number(r["step"], path, r["_line"], "step") for r in rows])

    def column(key: str) -> np.ndarray | None:
        if not all(key in r and r[key] is not None for r in rows):
            return None
        return np.array([_number(r[key], path, r["_line"], key) for r in rows])

    proxy, gold, kl = column("proxy_reward"), column("gold_reward"), column("kl")
    d = sqrt_kl(kl) if kl is not None else None
    fit: GaoFit | None = None
    notes, derived = [], []
    if gold is not None and d is not None and len(np.unique(d[d > 0])) >= 3:
        fit = fit_rl(d, gold)
        notes.append(f"Gao RL fit gold = d(α − β·log d): α = {fit.alpha:.4g}, β = {fit.beta:.4g}, "
                     f"R² = {fit.r2:.3f}, fitted peak at d = {fit.d_peak:.4g}.")
    if gold is not None:
        peak = gold_peak(steps, gold, proxy)
        notes.append(f"Gold reward highest at step {peak.peak_step:g} ({peak.peak_gold:.4g}); final {peak.final_gold:.4g}.")
        if proxy is not None:
            notes.append("Over-optimisation detected: the proxy kept rising after the gold peak."
                         if peak.overoptimized else "No over-optimisation detected.")
            derived = [{**p.__dict__, "source": rf.RL_METRICS} for p in detect_overoptimization(steps, proxy, gold)]
    else:
        notes.append("No gold reward logged: over-optimisation cannot be measured.")
    png = plots.overoptimization(steps, proxy, gold, d, fit)
    return _img("overoptimization", png, "proxy and gold reward against sqrt(KL)") + "".join(
        f"<p>{_esc(n)}</p>" for n in notes), derived


def _read_pitfalls(run: Path) -> list[dict[str, Any]] | None:
    """Pitfalls from pitfalls.json (a list) or pitfalls.jsonl (the training monitor's log, one per
    eval point: only the latest of each name is kept). None when neither file exists."""
    found: dict[str, dict[str, Any]] = {}
    json_path, jsonl_path = run / rf.PITFALLS_LIST, run / rf.PITFALLS
    if not json_path.exists() and not jsonl_path.exists():
        return None
    if json_path.exists():
        data = read_json(json_path)
        if not isinstance(data, list):
            raise DataError("expected a list of pitfall objects", source=str(json_path))
        items = [(i + 1, p) for i, p in enumerate(data)]
        source = json_path
    else:
        items = [(p.pop("_line"), p) for p in read_jsonl(jsonl_path, required=())]
        source = jsonl_path
    for where, p in items:
        if not isinstance(p, dict):
            raise DataError("expected a pitfall object", source=str(source), line=where)
        for key in ("name", "message"):
            if key not in p:
                raise DataError("missing key", source=str(source), line=where, field=key)
        found[str(p["name"])] = p
    return list(found.values())


def _pitfall_box(from_files: list[dict[str, Any]] | None, derived: list[dict[str, Any]]) -> str:
    if from_files is None and not derived:
        return '<div class="pitfalls none"><strong>Pitfalls:</strong> ' + NOT_MEASURED + "</div>"
    merged = {str(p["name"]): p for p in derived}
    merged.update({str(p["name"]): p for p in from_files or []})
    if not merged:
        return '<div class="pitfalls none"><strong>No pitfalls detected.</strong></div>'
    items = []
    for p in merged.values():
        size = p.get("size")
        size_txt = f" (size {size:.3g})" if isinstance(size, (int, float)) and not isinstance(size, bool) else ""
        step = f" at step {_esc(p['step'])}" if "step" in p else ""
        mit = f'<br><span class="mitigation">Mitigation: {_esc(p["mitigation"])}</span>' if p.get("mitigation") else ""
        items.append(f"<li><strong>{_esc(p['name'])}</strong>{size_txt}{step}: {_esc(p['message'])}{mit}</li>")
    return f'<div class="pitfalls"><strong>Warnings</strong><ul>{"".join(items)}</ul></div>'


# ---------------------------------------------------------------- entry point


def render_report(run_dir: str | os.PathLike) -> str:
    """The report page for `run_dir` as an HTML string (what `build_report` writes)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError("run directory not found", "pass the output folder of a training run", source=str(run))
    training = _training_section(run)
    displacement, derived_disp = _displacement_section(run)
    ches = _ches_section(run)
    variance = _variance_section(run)
    overopt, derived_over = _overopt_section(run)
    pitfalls = _pitfall_box(_read_pitfalls(run), derived_disp + derived_over)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = "\n".join([
        _section("training", "Training curves", training),
        _section("displacement", "Likelihood displacement", displacement),
        _section("ches", "CHES: pairs likely to cause displacement", ches),
        _section("reward-variance", "Reward variance and teacher quality", variance),
        _section("overoptimization", "Over-optimisation (proxy vs gold reward)", overopt),
    ])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>alignscope report: {_esc(run.resolve().name)}</title><style>{STYLE}</style></head>\n<body>\n"
        f"<h1>alignscope report</h1><p class=\"meta\">run: {_esc(run.resolve())} &middot; generated {stamp}</p>\n"
        f"{pitfalls}\n{sections}\n</body></html>\n"
    )


def build_report(run_dir: str | os.PathLike) -> Path:
    """Write `run_dir/report.html` atomically (temp file, then rename) and return its path."""
    page = render_report(run_dir)
    out = Path(run_dir) / rf.REPORT
    return write_text(out, page)
