"""`build_report(folder)`: one self-contained HTML page for every output found under a folder.

The page has no scripts and no external resources (plots are inline base64 PNGs, the style sheet is
inline), so it can be mailed, archived or opened offline. Outputs are found by what they hold
(`report.discover`): alignscope training and RL runs, TRL output dirs, `audit data`, `audit rm` and
`compare-rm` folders, or a folder holding several. Every section opens with its verdict: measured
and clean, measured and flagged, or not measured (with the command that measures it). A malformed
input raises a DataError that names the file and line, because a silently half-drawn report would
hide the pitfall it exists for.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from alignscope import run_files as rf
from alignscope.atomic import write_text
from alignscope.diagnostics.confounds import (
    STRONG_RHO,
    ches_confounds,
    describe_confounds,
    spearman,
)
from alignscope.diagnostics.intervals import within_noise
from alignscope.diagnostics.overoptimization import GaoFit, fit_rl, gold_peak, sqrt_kl
from alignscope.diagnostics.warnings import detect_displacement, detect_overoptimization
from alignscope.errors import DataError
from alignscope.report import plots
from alignscope.report.discover import Output, find_outputs
from alignscope.run_files import read_json, read_jsonl

CHES_COLUMNS = ("ches", "ln_ches", "edit_distance", "flagged")  # plus `row` (or the old 0-based `index`)
TEACHER_COLUMNS = ("name", "mean_variance", "low_variance_fraction", "offpolicy_accuracy", "onpolicy_accuracy", "reason")
TOP_PAIRS = 20
SAMPLE_ROWS = 8
# Keys of a TRL log_history entry that are bookkeeping, not training curves.
TRL_SKIP = {"step", "epoch", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second",
            "train_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}
PREFERENCE_KEYS = ("rewards/margins", "rewards/accuracies", "logps/chosen")

AUDIT_DATA_CMD = "alignscope audit data --model MODEL --data PAIRS --out DIR"
AUDIT_RM_CMD = "alignscope audit rm --rm RM [RM ...] --policy POLICY --prompts PROMPTS --gold GOLD --out DIR"
DISPLACEMENT_CMD = {"alignscope": "set eval_data: (or eval_fraction:) in the training config; the monitor runs every eval_steps",
                    "trl": "add alignscope.integrations.trl.DisplacementMonitor(eval_pairs) to the trainer's callbacks"}
GOLD_CMD = {"alignscope": "give the RL run a gold reward (gold: in the RL config)",
            "trl": "pass a gold reward function to alignscope.integrations.trl.RewardVarianceMonitor"}

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.35em;margin-top:2em;border-bottom:2px solid #bbb}
h3{font-size:1.12em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.4em}h4{font-size:1em;margin:.8em 0 .3em}
.meta{color:#666;font-size:.9em}.missing{color:#888;font-style:italic}
.verdict{padding:.3em .7em;border-radius:4px;border-left:5px solid #888;background:#f4f4f4}
.verdict.clean{border-color:#5a9a68;background:#f0f8f1}.verdict.flagged{border-color:#d1495b;background:#fdf0f1}
.verdict.measured{border-color:#4878a8;background:#eef3f9}.verdict code{font-size:.9em}
.pitfalls{border:2px solid #d1495b;background:#fdf0f1;padding:.6em 1em;border-radius:6px}
.pitfalls.clean{border-color:#5a9a68;background:#f0f8f1}.pitfalls.unmeasured{border-color:#aaa;background:#f6f6f6}
.pitfalls li{margin:.3em 0}.mitigation{color:#444}.confound{color:#8a4b00}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.text{text-align:left;max-width:40em;overflow-wrap:anywhere}
figure{margin:.6em 0}img{max-width:100%;height:auto;border:1px solid #eee}
"""


# ---------------------------------------------------------------- readers


def _number(value: Any, path: Path, line: int | None, field: str, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"expected a number, got {value!r}", source=str(path), line=line, field=field)
    return float(value)


def _series(rows: list[dict[str, Any]], path: Path, keys: Iterable[str] | None = None,
            skip: Iterable[str] = ("epoch",)) -> dict[str, tuple[list, list]]:
    """{key: (steps, values)} for the numeric keys of `rows` (all of them when `keys` is None)."""
    skip = set(skip) | {"step", "_line"}
    out: dict[str, tuple[list, list]] = {}
    for row in rows:
        step = _number(row["step"], path, row.get("_line"), "step")
        for key, value in row.items():
            if key in skip or (keys is not None and key not in keys):
                continue
            if value is None or isinstance(value, (str, list, dict)):
                continue
            v = _number(value, path, row.get("_line"), key)
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
    """Rows of a CHES table with numbers parsed; `flagged` accepts 1/0, true/false, yes/no. The pair
    number is `row` (1-based, `run_files.ROW_CONVENTION`); an old table's 0-based `index` becomes it."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        numbering = "row" if "row" in header else "index" if "index" in header else None
        missing = [c for c in CHES_COLUMNS if c not in header] + ([] if numbering else ["row"])
        if missing:
            raise DataError(f"missing column(s) {missing}", f"the header needs row, {', '.join(CHES_COLUMNS)}",
                            source=str(path), line=1, field=missing[0])
        for lineno, rec in enumerate(reader, start=2):
            row: dict[str, Any] = {}
            try:
                row["row"] = int(rec[numbering]) + (1 if numbering == "index" else 0)
            except (TypeError, ValueError):
                raise DataError(f"expected a whole number, got {rec[numbering]!r}", source=str(path), line=lineno, field=numbering) from None
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
            for col in header:
                if col not in row and col != numbering:
                    row[col] = _parse_cell(rec[col])
            rows.append(row)
    return rows


def read_trainer_state(path: Path) -> list[dict[str, Any]]:
    """The `log_history` of a Hugging Face / TRL `trainer_state.json`, entries without a step dropped."""
    doc = read_json(path)
    history = doc.get("log_history") if isinstance(doc, dict) else None
    if not isinstance(history, list):
        raise DataError("expected an object with a 'log_history' list", "pass a TRL/Trainer output_dir", source=str(path))
    rows = []
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise DataError("expected a log_history entry object", source=str(path), field=f"log_history[{i}]")
        if "step" in entry:
            rows.append({**entry, "_line": None})
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


def _cut(v: Any, n: int = 120) -> Any:
    return v[:n] + ("…" if len(v) > n else "") if isinstance(v, str) else v


def _acc(value: Any, interval: Any = None, n: Any = None) -> str:
    """An accuracy as 'a [lo, hi], n = k' when its interval and n are known."""
    if value is None:
        return "–"
    text = f"{value:.3f}"
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        text += f" [{interval[0]:.2f}, {interval[1]:.2f}]"
    if n is not None:
        text += f", n = {n}"
    return text


@dataclass
class Section:
    """One section of an output: its verdict (`clean`, `flagged`, `measured` for a section that has
    nothing to flag, or `not measured`), the sentence that explains it, and the body."""

    anchor: str
    title: str
    state: str
    text: str
    body: str = ""

    def html(self, prefix: str) -> str:
        label = {"clean": "Measured, clean", "flagged": "Measured, flagged", "measured": "Measured",
                 "not measured": "Not measured"}[self.state]
        cls = self.state.replace(" ", "-")
        verdict = f'<p class="verdict {cls}" data-verdict="{self.state}"><strong>{label}:</strong> {self.text}</p>'
        return f'<section id="{prefix}{self.anchor}" data-section="{self.anchor}"><h3>{_esc(self.title)}</h3>\n{verdict}\n{self.body}\n</section>'


def _not_measured(anchor: str, title: str, why: str, command: str) -> Section:
    return Section(anchor, title, "not measured", f"{_esc(why)}; to measure it: <code>{_esc(command)}</code>")


# ---------------------------------------------------------------- training curves


def last_n(n_points: int) -> int:
    """How many final logged steps a summary averages: the last 10%, at least 5 (or all when fewer)."""
    return min(n_points, max(5, math.ceil(0.1 * n_points)))


def _training_rows(out: Output) -> tuple[list[dict[str, Any]], Path] | None:
    if out.trainer_state is not None:
        return read_trainer_state(out.trainer_state), out.trainer_state
    path = out.path / rf.METRICS
    return (read_jsonl(path), path) if path.exists() else None


def _training_section(out: Output) -> tuple[Section, dict[str, tuple[list, list]]]:
    found = _training_rows(out)
    title = "Training curves"
    if found is None:
        return _not_measured("training", title, "no metrics.jsonl or trainer_state.json here", "alignscope train METHOD CONFIG"), {}
    rows, path = found
    series = _series(rows, path, skip=TRL_SKIP if out.trainer_state is not None else ("epoch",))
    if not series:
        return Section("training", title, "not measured", f"{_esc(path.name)} holds no numeric metrics"), {}
    png, omitted = plots.training_curves(series)
    n_steps = max(len(v[0]) for v in series.values())
    span = plots.smoothing_span(n_steps)
    text = (f"{n_steps} logged steps from <code>{_esc(path.relative_to(out.path))}</code>; "
            + (f"curves EMA-smoothed (span {span} points), raw values faint" if span > 1 else "raw values (too few points to smooth)"))
    body = _img("training_curves", png, "training curves")
    if omitted:
        body += f'<p class="meta">{omitted} further metric group(s) not plotted.</p>'
    keys = [k for _, ks in plots.metric_groups(list(series)) for k in ks]
    table = []
    for k in keys:
        steps, values = series[k]
        m = last_n(len(values))
        tail = np.asarray(values[-m:])
        table.append([k, m, f"{steps[-m]:g}–{steps[-1]:g}", float(tail.mean()), float(tail.std()), float(tail.min()), float(tail.max())])
    body += "<h4>Summary over the last logged steps (the final 10%, at least 5)</h4>"
    body += _table(["metric", "points", "steps", "mean", "std", "min", "max"], table, text_cols=[0, 2])
    return Section("training", title, "measured", text, body), series


# ---------------------------------------------------------------- displacement


def _eval_delta(out: Output) -> tuple[np.ndarray, int, int] | None:
    """Per-pair change of log p(chosen) between the first and the last eval point of eval_logps.jsonl."""
    path = out.path / rf.EVAL_LOGPS
    if not path.exists():
        return None
    rows = read_jsonl(path)
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    for r in (first, last):
        if not isinstance(r.get("chosen"), list):
            raise DataError("expected a list of per-pair log-probs", source=str(path), line=r["_line"], field="chosen")
    if len(first["chosen"]) != len(last["chosen"]):
        raise DataError(f"the first eval point has {len(first['chosen'])} pairs, the last {len(last['chosen'])}",
                        source=str(path), line=last["_line"], field="chosen")
    delta = np.asarray(last["chosen"], dtype=np.float64) - np.asarray(first["chosen"], dtype=np.float64)
    return delta, first["step"], last["step"]


def _same_file(a: Any, b: Any) -> bool:
    try:
        return bool(a) and bool(b) and Path(str(a)).resolve() == Path(str(b)).resolve()
    except OSError:
        return False


def _matching_ches(out: Output, outputs: list[Output], n_pairs: int) -> tuple[list[dict[str, Any]], str] | None:
    """The CHES table of this run's eval pairs: one in the same folder, one whose audit read the run's
    eval_data file, or (stated as such) the only table with exactly as many pairs."""
    config = read_json(out.path / rf.CONFIG) if (out.path / rf.CONFIG).exists() else {}
    eval_data = config.get("eval_data") if isinstance(config, dict) else None
    candidates = [(t, o) for o in [out] + [o for o in outputs if o is not out] for t in o.ches_tables]
    for table, owner in candidates:
        rows = read_ches_csv(table)
        if len(rows) != n_pairs:
            continue
        if owner is out:
            return rows, f"CHES table {table.name} in the same folder"
        if _same_file(owner.manifest_value("data"), eval_data):
            return rows, f"the audit of the run's eval_data ({table})"
    same_size = [(t, o) for t, o in candidates if len(read_ches_csv(t)) == n_pairs]
    if len(same_size) == 1:
        table = same_size[0][0]
        return read_ches_csv(table), f"{table} (matched by position: the only CHES table with {n_pairs} pairs)"
    return None


def _pair_scatter(out: Output, outputs: list[Output]) -> str:
    found = _eval_delta(out)
    if found is None:
        return ""
    delta, s0, s1 = found
    match = _matching_ches(out, outputs, len(delta))
    if match is None:
        return (f'<p class="meta">Per-pair view: no CHES table of these {len(delta)} eval pairs was found; '
                f"<code>{_esc(AUDIT_DATA_CMD.replace('PAIRS', 'EVAL_PAIRS'))}</code> writes one.</p>")
    rows, where = match
    panels, lines = [], []
    for key, label in (("ln_ches", "LN-CHES"), ("edit_distance", "edit distance")):
        if any(r[key] is None for r in rows):
            continue
        x = np.array([r[key] for r in rows])
        s = spearman(x, delta)
        panels.append((label, x, s["rho"]))
        lines.append(f"Spearman({label}, Δ log p(chosen)) = {s['rho']:+.2f} (p = {s['p']:.2g}, n = {s['n']})")
    body = f"<h4>Per pair: change of log p(chosen) from step {s0:g} to {s1:g} against the pair's scores</h4>"
    body += _img("pair_scatter", plots.pair_scatter(delta, panels), "per-pair change of log p(chosen) against LN-CHES")
    body += f'<p class="meta">Scores from {_esc(where)}.</p>' + "".join(f"<p>{_esc(t)}</p>" for t in lines)
    return body


def _displacement_section(out: Output, outputs: list[Output], source: str) -> tuple[Section, list[dict[str, Any]]]:
    title = "Likelihood displacement"
    path = out.path / rf.DISPLACEMENT
    if not path.exists():
        return _not_measured("displacement", title, "the displacement monitor did not run", DISPLACEMENT_CMD[source]), []
    rows = read_jsonl(path)
    keys = ("fraction_chosen_fell", "mean_chosen_change", "mean_rejected_change", "ranking_accuracy", "implicit_reward_accuracy")
    series = _series(rows, path, keys)
    if not series:
        return Section("displacement", title, "not measured", "displacement.jsonl has no displacement statistics"), []
    last = rows[-1]
    body = _img("displacement", plots.displacement(series), "likelihood displacement over training")
    shown = [k for k in keys if k in last]
    body += _table(["step", "pairs"] + shown, [[last["step"], last.get("n_pairs")] + [last[k] for k in shown]])
    body += ('<p class="meta">Likelihood displacement: DPO can lower log π(y+|x) while raising the margin; the mass '
             'moves to other responses, harmlessly or to ones opposite in meaning. Ties in implicit-reward accuracy count ½.</p>')
    body += _pair_scatter(out, outputs)
    if len(rows) < 2 or last["step"] == 0 or not all(k in last for k in ("fraction_chosen_fell", "mean_chosen_change")):
        return Section("displacement", title, "not measured",
                       f"only the starting eval point was logged; set a smaller eval_steps ({_esc(DISPLACEMENT_CMD[source])})", body), []
    found = detect_displacement(last)
    n_points = len(rows)
    stats = (f"at step {last['step']:g} the chosen log-prob fell for {last['fraction_chosen_fell']:.0%} of {last.get('n_pairs', '?')} "
             f"eval pairs (mean change {last['mean_chosen_change']:+.3f} nats; {n_points} eval points)")
    if found:
        derived = [{**p.__dict__, "step": last["step"], "source": rf.DISPLACEMENT} for p in found]
        return Section("displacement", title, "flagged", "likelihood displacement: " + _esc(stats), body), derived
    return Section("displacement", title, "clean", "no displacement: " + _esc(stats), body), []


# ---------------------------------------------------------------- CHES


def _ches_section(table: Path, out: Output, anchor: str) -> Section:
    title = f"CHES: pairs likely to cause displacement ({table.name})"
    rows = read_ches_csv(table)
    if not rows:
        return Section(anchor, title, "not measured", f"{_esc(table.name)} has no pairs")
    ln = np.array([r["ln_ches"] for r in rows])
    raw = np.array([r["ches"] for r in rows])
    flagged = np.array([r["flagged"] for r in rows], dtype=bool)
    body = _img("ches_histogram", plots.ches_histogram(ln, raw, flagged), "CHES histogram")
    conf_lines = []
    strong = False
    if all(isinstance(rows[0].get(c), (int, float)) for c in ("chosen_tokens", "rejected_tokens")):
        edit = None if any(r["edit_distance"] is None for r in rows) else [r["edit_distance"] for r in rows]
        conf = ches_confounds(ln, [r["chosen_tokens"] for r in rows], [r["rejected_tokens"] for r in rows], edit)
        conf_lines = describe_confounds(conf)
        lr = conf["length_ratio"]
        strong = bool(np.isfinite(lr["rho"]) and abs(lr["rho"]) >= STRONG_RHO and lr["p"] < 0.01)
        body += "<h4>Confounds</h4>" + "".join(
            f'<p class="{"confound" if "strong" in t else ""}">{_esc(t)}</p>' for t in conf_lines)
    else:
        body += '<p class="meta">No token lengths in this table: the length confound cannot be checked.</p>'
    filt = out.manifest_value("filter")
    n_flag = int(flagged.sum())
    if n_flag:
        top = sorted((r for r in rows if r["flagged"]), key=lambda r: -r["ln_ches"])[:TOP_PAIRS]
        heading = f"Top {len(top)} flagged pairs by length-normalised CHES"
        state, text = "flagged", f"{n_flag} of {len(rows)} pairs flagged" + (f" by --filter {_esc(filt)}" if filt else "")
    else:
        top = sorted(rows, key=lambda r: -r["ln_ches"])[:TOP_PAIRS]
        heading = f"The {len(top)} highest LN-CHES pairs (none flagged: no filter applied)"
        q90 = float(np.quantile(ln, 0.9))
        state = "measured"
        text = (f"{len(rows)} pairs scored; no filter was applied, so no pair is flagged (the 10% highest LN-CHES score above "
                f"{q90:.3g}); to drop them: <code>{_esc(AUDIT_DATA_CMD)} --filter drop:0.1</code>")
    if strong:
        text += "; <span class=\"confound\">the LN-CHES ranking is confounded by length (see Confounds)</span>"
    extra = [c for c in rows[0] if c not in CHES_COLUMNS and c != "row"]
    table_rows = [[r["row"], r["ches"], r["ln_ches"], r["edit_distance"]] + [_cut(r[c]) for c in extra] for r in top]
    text_cols = [4 + i for i, c in enumerate(extra) if isinstance(top[0][c], str)]
    body += f"<h4>{_esc(heading)}</h4>"
    body += _table(["row", "CHES", "LN-CHES", "edit distance"] + extra, table_rows, text_cols=text_cols)
    body += f'<p class="meta">{_esc(rf.ROW_CONVENTION)}.</p>'
    return Section(anchor, title, state, text, body)


# ---------------------------------------------------------------- reward models


def _teacher_section(out: Output) -> Section:
    title = "Reward variance and teacher quality"
    path = out.path / rf.REWARD_VARIANCE
    if not path.exists():
        return _not_measured("reward-variance", title, "no reward_variance.json here", AUDIT_RM_CMD)
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
    table_path = out.path / rf.TEACHER_TABLE
    flat = [n for n, v in variances.items() if np.mean(np.asarray(v) <= 0.1) >= 0.5]
    notes = []
    if table_path.exists():
        table = read_json(table_path)
        if not isinstance(table, list) or not all(isinstance(r, dict) and "name" in r for r in table):
            raise DataError("expected a list of objects with a 'name' key", source=str(table_path))
        flat = [r["name"] for r in table if (r.get("low_variance_fraction") or 0) >= 0.5] or flat
        rows = [[i, r["name"], r.get("mean_variance"), r.get("low_variance_fraction"),
                 _acc(r.get("offpolicy_accuracy"), r.get("offpolicy_interval"), r.get("offpolicy_n")),
                 _acc(r.get("onpolicy_accuracy"), r.get("onpolicy_interval"), r.get("onpolicy_n")), r.get("reason", "")]
                for i, r in enumerate(table, start=1)]
        body += "<h4>Teacher table (best expected teacher first; accuracies with 95% Wilson interval and the pairs they rest on)</h4>"
        body += _table(["rank", "name", "mean variance", "low-variance fraction", "off-policy accuracy",
                        "on-policy accuracy (non-tied gold pairs)", "reason"], rows, text_cols=[1, 4, 5, 6])
        notes = _noise_notes(table)
    body += "".join(f"<p>{_esc(t)}</p>" for t in notes)
    body += _samples_table(out.path / rf.SAMPLES, "Sampled responses")
    body += ('<p class="meta">Rewards standardised with each RM\'s global mean and std before taking per-prompt '
             'variances. Low variance flattens the RLHF objective: an accurate RM can still teach slowly.</p>')
    if flat:
        return Section("reward-variance", title, "flagged",
                       _esc(f"low reward variance on at least half the prompts for: {', '.join(flat)} (slow teachers under this policy)"), body)
    return Section("reward-variance", title, "clean", _esc(f"{len(variances)} reward model(s): none is flat on most prompts"), body)


def _noise_notes(table: list[dict[str, Any]]) -> list[str]:
    """Which neighbouring RMs of the teacher table the accuracy data cannot tell apart."""
    notes = []
    for kind in ("onpolicy", "offpolicy"):
        for a, b in zip(table, table[1:]):
            ia, ib = a.get(f"{kind}_interval"), b.get(f"{kind}_interval")
            if isinstance(ia, list) and isinstance(ib, list) and within_noise(tuple(ia), tuple(ib)):
                notes.append(f"{kind.replace('policy', '-policy')} accuracy: {a['name']} ({a[f'{kind}_accuracy']:.3f}) and "
                             f"{b['name']} ({b[f'{kind}_accuracy']:.3f}) are within noise (their 95% intervals overlap)")
    return notes


def _samples_table(path: Path, heading: str) -> str:
    """A few rows of completions.jsonl / samples.jsonl: the prompt, the response, each reward, gold."""
    if not path.exists():
        return ""
    rows = read_jsonl(path, required=("prompt", "response"))
    if not rows:
        return ""
    if "step" in rows[-1]:
        last_step = rows[-1]["step"]
        chosen = [r for r in rows if r.get("step") == last_step][:SAMPLE_ROWS]
        heading += f" at step {last_step}"
    else:
        chosen = rows[:SAMPLE_ROWS]
    names = list(dict.fromkeys(k for r in chosen for k in (r.get("rewards") or {})))
    has_gold = any(r.get("gold") is not None for r in chosen)
    headers = ["prompt", "response"] + names + (["gold"] if has_gold else [])
    table = [[_cut(str(r["prompt"])), _cut(str(r["response"]), 200)] + [(r.get("rewards") or {}).get(n) for n in names]
             + ([r.get("gold")] if has_gold else []) for r in chosen]
    return (f"<h4>{_esc(heading)} ({len(chosen)} of {len(rows)} rows of {_esc(path.name)})</h4>"
            + _table(headers, table, text_cols=[0, 1]))


def _compare_section(path: Path, anchor: str) -> Section:
    title = f"Implicit vs explicit reward (compare-rm, {path.name})"
    doc = read_json(path)
    rows = doc.get("rows") if isinstance(doc, dict) else doc
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "reward" in r and "accuracy" in r for r in rows):
        raise DataError("expected a list of objects with 'reward' and 'accuracy'", source=str(path))
    table = [[r["reward"], r.get("set"), r.get("pairs"), _acc(r["accuracy"], r.get("interval"), r.get("n_decisive")),
              r.get("normalized_margin")] for r in rows]
    body = _table(["reward", "set", "pairs", "accuracy [95% interval], n non-tied", "norm. margin"], table, text_cols=[0, 1, 3])
    bias = doc.get("length_bias", {}) if isinstance(doc, dict) else {}
    lines = [f"{name}: chosen longer in {b['chosen_longer']:.0%}, shorter in {b['chosen_shorter']:.0%} of {b['n']} pairs"
             for name, b in bias.items()]
    confounded = [name for name, b in bias.items() if max(b["chosen_longer"], b["chosen_shorter"]) >= 0.65]
    if lines:
        body += "<h4>Length bias of each set</h4>" + "".join(f"<p>{_esc(t)}</p>" for t in lines)
    noise = []
    by_set: dict[str, list[dict]] = {}
    for r in rows:
        by_set.setdefault(str(r.get("set")), []).append(r)
    for s, rs in by_set.items():
        if len(rs) == 2 and all(isinstance(r.get("interval"), list) for r in rs) and within_noise(tuple(rs[0]["interval"]), tuple(rs[1]["interval"])):
            noise.append(f"{s}: the two rewards are within noise (95% intervals overlap)")
    body += "".join(f"<p>{_esc(t)}</p>" for t in noise)
    if confounded:
        return Section(anchor, title, "flagged", _esc(
            f"length confound: {', '.join(confounded)} has one side longer in at least 65% of pairs, so accuracies there partly measure length"), body)
    return Section(anchor, title, "measured", _esc(f"{len(rows)} rows over {len(by_set)} set(s)"), body)


# ---------------------------------------------------------------- RL


def _variance_steps_section(out: Output) -> Section | None:
    path = out.path / rf.REWARD_VARIANCE_STEPS
    if not path.exists():
        return None
    title = "Reward variance during RL"
    rows = [r for r in read_jsonl(path) if isinstance(r.get("variances"), list) and r["variances"]]
    if not rows:
        return Section("rl-variance", title, "not measured", "reward_variance.jsonl holds no per-prompt variances")
    steps = [r["step"] for r in rows]
    zero = [float(np.mean(np.asarray(r["variances"], dtype=np.float64) <= 1e-12)) for r in rows]
    mean = [float(np.mean(r["variances"])) for r in rows]
    m = last_n(len(rows))
    tail = float(np.mean(zero[-m:]))
    body = _img("rl_variance", plots.variance_over_steps(steps, zero, mean), "reward variance per RL step")
    text = f"over the last {m} steps {tail:.0%} of prompts had all their samples' rewards tied (no gradient)"
    return Section("rl-variance", title, "flagged" if tail > 0.5 else "clean", _esc(text), body)


def _overopt_section(out: Output, source: str) -> tuple[Section, list[dict[str, Any]]]:
    title = "Over-optimisation (proxy vs gold reward)"
    path = out.path / rf.RL_METRICS
    if not path.exists():
        if rf.OVEROPTIMIZATION in out.files:
            return _overopt_summary(out.path / rf.OVEROPTIMIZATION, title), []
        return _not_measured("overoptimization", title, "no proxy/gold/KL log here", GOLD_CMD[source]), []
    rows = read_jsonl(path)
    if not rows:
        return Section("overoptimization", title, "not measured", "rl_metrics.jsonl is empty"), []
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
    png = plots.overoptimization(steps, proxy, gold, d, fit)
    if gold is None or proxy is None:
        body = _img("overoptimization", png, "proxy reward against sqrt(KL)")
        return Section("overoptimization", title, "not measured",
            f"no gold reward was logged, so over-optimisation cannot be seen; to measure it: <code>{_esc(GOLD_CMD[source])}</code>", body), []
    peak = gold_peak(steps, gold, proxy)
    notes.append(f"Gold reward highest at step {peak.peak_step:g} ({peak.peak_gold:.4g}); final {peak.final_gold:.4g}.")
    derived = [{**p.__dict__, "source": rf.RL_METRICS} for p in detect_overoptimization(steps, proxy, gold)]
    body = _img("overoptimization", png, "proxy and gold reward against sqrt(KL)") + "".join(f"<p>{_esc(n)}</p>" for n in notes)
    if peak.overoptimized:
        return Section("overoptimization", title, "flagged", "over-optimisation detected: the proxy kept rising after the gold peak", body), derived
    return Section("overoptimization", title, "clean", "no over-optimisation: the gold reward did not fall while the proxy rose", body), derived


def _overopt_summary(path: Path, title: str) -> Section:
    doc = read_json(path)
    peak = doc.get("gold_peak") if isinstance(doc, dict) else None
    if not isinstance(peak, dict):
        raise DataError("expected an object with 'gold_peak'", source=str(path))
    rows = [[k, v] for k, v in peak.items() if isinstance(v, (int, float, bool))]
    body = _table(["gold_peak", "value"], rows, text_cols=[0])
    if peak.get("overoptimized"):
        return Section("overoptimization", title, "flagged", "over-optimisation detected (overoptimization.json)", body)
    return Section("overoptimization", title, "clean", "no over-optimisation (overoptimization.json)", body)


# ---------------------------------------------------------------- pitfalls


def _read_pitfalls(folder: Path) -> list[dict[str, Any]] | None:
    """Pitfalls from pitfalls.json (a list) or pitfalls.jsonl (the training monitor's log, one per
    eval point: only the latest of each name is kept). None when neither file exists."""
    found: dict[str, dict[str, Any]] = {}
    json_path, jsonl_path = folder / rf.PITFALLS_LIST, folder / rf.PITFALLS
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


def _pitfall_box(from_files: list[dict[str, Any]] | None, derived: list[dict[str, Any]], monitors: list[str]) -> str:
    """Flagged when any pitfall was recorded or derived; clean when a monitor ran and found none
    (an empty pitfalls file counts as a monitor that ran); not measured otherwise."""
    merged = {str(p["name"]): p for p in derived}
    merged.update({str(p["name"]): p for p in from_files or []})
    if merged:
        items = []
        for p in merged.values():
            size = p.get("size")
            size_txt = f" (size {size:.3g})" if isinstance(size, (int, float)) and not isinstance(size, bool) else ""
            step = f" at step {_esc(p['step'])}" if "step" in p else ""
            mit = f'<br><span class="mitigation">Mitigation: {_esc(p["mitigation"])}</span>' if p.get("mitigation") else ""
            items.append(f"<li><strong>{_esc(p['name'])}</strong>{size_txt}{step}: {_esc(p['message'])}{mit}</li>")
        return f'<div class="pitfalls" data-verdict="flagged"><strong>Pitfalls found</strong><ul>{"".join(items)}</ul></div>'
    if monitors or from_files is not None:
        ran = ", ".join(monitors) if monitors else "the run's monitors"
        return f'<div class="pitfalls clean" data-verdict="clean"><strong>No pitfalls detected</strong> by {_esc(ran)}.</div>'
    return ('<div class="pitfalls unmeasured" data-verdict="not measured"><strong>Pitfalls: not measured</strong> '
            "(no pitfall monitor ran in this output; see each section for the command that measures it).</div>")


def _monitors(out: Output) -> list[str]:
    ran = []
    if rf.DISPLACEMENT in out.files:
        n = len(read_jsonl(out.path / rf.DISPLACEMENT))
        if n >= 2:
            ran.append(f"the displacement monitor ({n} eval points)")
    if rf.RL_METRICS in out.files and any(r.get("gold_reward") is not None for r in read_jsonl(out.path / rf.RL_METRICS)):
        ran.append("the over-optimisation check (gold reward)")
    if rf.REWARD_VARIANCE_STEPS in out.files:
        ran.append("the reward-variance monitor")
    return ran


# ---------------------------------------------------------------- per output


def _is_preference(out: Output, series: dict[str, Any]) -> bool:
    if out.files & {rf.DISPLACEMENT, rf.EVAL_LOGPS}:
        return True
    config = read_json(out.path / rf.CONFIG) if rf.CONFIG in out.files or (out.path / rf.CONFIG).exists() else {}
    if isinstance(config, dict) and config.get("method") in ("dpo", "kto", "rank"):
        return True
    return any(k in series for k in PREFERENCE_KEYS)


def output_sections(out: Output, outputs: list[Output]) -> tuple[list[Section], str | None]:
    """The sections of one output and, for a run, its pitfalls box."""
    sections: list[Section] = []
    derived: list[dict[str, Any]] = []
    box = None
    if out.is_run:
        source = "trl" if out.trainer_state is not None else "alignscope"
        training, series = _training_section(out)
        sections.append(training)
        rl = "RL run" in out.kinds or out.files & {rf.RL_METRICS, rf.REWARD_VARIANCE_STEPS, rf.OVEROPTIMIZATION, rf.COMPLETIONS} \
            or any(k in series for k in ("reward_std", "frac_reward_zero_std"))
        if _is_preference(out, series):
            disp, d = _displacement_section(out, outputs, source)
            sections.append(disp)
            derived += d
        if rl:
            var = _variance_steps_section(out)
            if var is not None:
                sections.append(var)
            over, d = _overopt_section(out, source)
            sections.append(over)
            derived += d
            samples = _samples_table(out.path / rf.COMPLETIONS, "Sampled completions")
            if samples:
                sections.append(Section("completions", "Completions", "measured",
                                        "a sample of the policy's responses with each reward", samples))
        box = _pitfall_box(_read_pitfalls(out.path), derived, _monitors(out))
    elif out.files & {rf.PITFALLS_LIST, rf.PITFALLS}:
        box = _pitfall_box(_read_pitfalls(out.path), [], [])
    for i, table in enumerate(out.ches_tables):
        sections.append(_ches_section(table, out, "ches" if i == 0 else f"ches-{i + 1}"))
    if out.files & {rf.REWARD_VARIANCE, rf.TEACHER_TABLE}:
        sections.append(_teacher_section(out))
    for i, path in enumerate(out.comparisons):
        sections.append(_compare_section(path, "compare-rm" if i == 0 else f"compare-rm-{i + 1}"))
    return sections, box


# ---------------------------------------------------------------- entry point


def _label(out: Output, root: Path) -> str:
    rel = out.path.resolve().relative_to(root.resolve()) if out.path.resolve() != root.resolve() else Path(".")
    return str(rel)


def render_report(folder: str | os.PathLike) -> str:
    """The report page for every output under `folder`, as an HTML string (what `build_report` writes)."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError("run directory not found", "pass the output folder of a run or audit", source=str(root))
    outputs = find_outputs(root)
    groups, overview = [], []
    for k, out in enumerate(outputs):
        sections, box = output_sections(out, outputs)
        prefix = "" if k == 0 else f"o{k}-"
        label = _label(out, root)
        command = out.manifest_value("command")
        head = (f'<h2 id="{prefix}output">{_esc(" + ".join(out.kinds))}: {_esc(label)}</h2>'
                f'<p class="meta">{_esc(out.path.resolve())}' + (f" &middot; command: <code>{_esc(command)}</code>" if command else "") + "</p>")
        groups.append(f'<div class="output" data-output="{_esc(label)}">{head}{box or ""}'
                      + "\n".join(s.html(prefix) for s in sections) + "</div>")
        overview.append([label, " + ".join(out.kinds), "; ".join(f"{s.title.split(' (')[0]}: {s.state}" for s in sections)])
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if outputs:
        summary = "<h2>Outputs found</h2>" + _table(["folder", "holds", "verdicts"], overview, text_cols=[0, 1, 2])
    else:
        summary = ('<p class="verdict not-measured" data-verdict="not measured"><strong>Not measured:</strong> no alignscope or TRL '
                   f"output was found in this folder. Training runs: <code>alignscope train METHOD CONFIG</code>; data audit: "
                   f"<code>{_esc(AUDIT_DATA_CMD)}</code>; teacher audit: <code>{_esc(AUDIT_RM_CMD)}</code>.</p>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>alignscope report: {_esc(root.resolve().name)}</title><style>{STYLE}</style></head>\n<body>\n"
        f"<h1>alignscope report</h1><p class=\"meta\">folder: {_esc(root.resolve())} &middot; generated {stamp}</p>\n"
        f"{summary}\n{''.join(groups)}\n</body></html>\n"
    )


def build_report(run_dir: str | os.PathLike) -> Path:
    """Write `run_dir/report.html` atomically (temp file, then rename) and return its path."""
    page = render_report(run_dir)
    out = Path(run_dir) / rf.REPORT
    return write_text(out, page)
