"""The HTML report: self-contained, one plot per measured input, graceful on missing inputs, loud on
malformed ones, and (when Chromium is installed) really rendered by a browser."""

from __future__ import annotations

import base64
import csv
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from alignscope.errors import DataError
from alignscope.report import build_report

PLOTS = ("training_curves", "displacement", "ches_histogram", "reward_variance", "overoptimization")
IMG_RE = re.compile(r'<img data-plot="([a-z_]+)"[^>]*width="(\d+)" height="(\d+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_run(run: Path) -> Path:
    """A run folder holding every input the report knows, shaped like real runs."""
    run.mkdir(parents=True, exist_ok=True)
    steps = range(0, 100, 5)
    _jsonl(run / "metrics.jsonl", [
        {"step": s, "loss": 0.69 * np.exp(-s / 50), "rewards/margins": s / 100, "rewards/accuracies": min(1.0, 0.5 + s / 150),
         "logps/chosen": -50 - s / 10, "logps/rejected": -52 - s / 4, "learning_rate": 1e-6}
        for s in steps
    ])
    _jsonl(run / "displacement.jsonl", [
        {"step": s, "n_pairs": 64, "fraction_chosen_fell": min(1.0, s / 60), "mean_chosen_change": -s / 20,
         "mean_rejected_change": -s / 8, "ranking_accuracy": 0.55, "ranking_accuracy_start": 0.55}
        for s in range(0, 100, 20)
    ])
    rng = np.random.default_rng(0)
    with open(run / "ches.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "ches", "ln_ches", "edit_distance", "flagged", "prompt"])
        ln = rng.normal(size=60)
        cut = np.sort(ln)[-25]
        for i, v in enumerate(ln):
            w.writerow([i, v * 40, v, rng.uniform(), int(v >= cut), f"prompt <{i}> & co"])
    (run / "reward_variance.json").write_text(json.dumps({
        "gold-like": rng.uniform(0, 0.02, 40).tolist(), "noisy": rng.uniform(0.2, 1.2, 40).tolist()}))
    (run / "teacher_table.json").write_text(json.dumps([
        {"name": "noisy", "mean_variance": 0.7, "low_variance_fraction": 0.0, "offpolicy_accuracy": 0.7,
         "onpolicy_accuracy": 0.72, "score": 0.39, "reason": "high reward variance (0.70) ..."},
        {"name": "gold-like", "mean_variance": 0.01, "low_variance_fraction": 1.0, "offpolicy_accuracy": 1.0,
         "onpolicy_accuracy": 1.0, "score": 0.2, "reason": "accurate (1.00) but low reward variance (0.01): slow teacher"},
    ]))
    kl = np.linspace(0, 30, 16)
    d = np.sqrt(kl)
    gold = np.where(d > 0, d * (1.0 - 0.45 * np.log(np.where(d > 0, d, 1))), 0.0)
    _jsonl(run / "rl_metrics.jsonl", [
        {"step": 10 * i, "proxy_reward": float(0.6 * d[i]), "gold_reward": float(gold[i]), "kl": float(kl[i])}
        for i in range(len(kl))
    ])
    (run / "pitfalls.json").write_text(json.dumps([
        {"name": "flat RL objective", "size": 0.8, "message": "80% of prompts have low variance",
         "mitigation": "select prompts by reward variance (alignscope select-prompts)"}]))
    return run


@pytest.fixture()
def full_run(tmp_path) -> Path:
    return make_run(tmp_path / "run")


def _images(page: str) -> dict[str, tuple[int, int, bytes]]:
    return {m[0]: (int(m[1]), int(m[2]), base64.b64decode(m[3])) for m in IMG_RE.findall(page)}


def test_full_report_is_self_contained_with_every_plot(full_run):
    out = build_report(full_run)
    assert out == full_run / "report.html"
    page = out.read_text()
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(?!data:)', page), "every resource must be inline"
    assert "http://" not in page and "https://" not in page
    images = _images(page)
    assert sorted(images) == sorted(PLOTS)
    for name, (w, h, data) in images.items():
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), name
        pixels = imread(io.BytesIO(data), format="png")
        assert pixels.shape[:2] == (h, w), name
        assert pixels[..., :3].std() > 0.01, f"{name} is blank"
    assert "not measured in this run" not in page


def test_report_sections_carry_the_numbers(full_run):
    page = build_report(full_run).read_text()
    # pitfalls box at the top: the file's pitfall plus the ones derived from displacement and RL metrics
    box = page[: page.index('<section id="training"')]
    for name in ("flat RL objective", "likelihood displacement", "over-optimisation"):
        assert name in box
    assert "stop at checkpoint" in box
    # the flagged table keeps the top 20 of 25 flagged pairs, highest LN-CHES first, text escaped
    ches = page[page.index('<section id="ches"'): page.index('<section id="reward-variance"')]
    assert "25 of 60 pairs flagged" in ches
    table = ches[ches.index("<h3>"):]
    assert table.count("<tr>") == 21
    assert "prompt &lt;" in table and "<0>" not in table
    lns = [float(x) for x in re.findall(r"<tr><td>\d+</td><td>[^<]+</td><td>([^<]+)</td>", table)]
    assert lns == sorted(lns, reverse=True) and len(lns) == 20
    variance = page[page.index('<section id="reward-variance"'): page.index('<section id="overoptimization"')]
    assert variance.index("noisy") < variance.index("slow teacher")
    assert "Gao RL fit" in page and "Over-optimisation detected" in page


def test_missing_inputs_say_not_measured(tmp_path):
    page = build_report(tmp_path).read_text()
    assert page.count("not measured in this run") == 6  # five sections and the pitfalls box
    assert "data-plot" not in page


def test_partial_run_shows_only_what_was_measured(tmp_path):
    _jsonl(tmp_path / "metrics.jsonl", [{"step": s, "loss": 1.0 / (s + 1)} for s in range(5)])
    page = build_report(tmp_path).read_text()
    assert list(_images(page)) == ["training_curves"]
    assert page.count("not measured in this run") == 5


def test_training_monitor_pitfalls_jsonl_keeps_latest_per_name(tmp_path):
    _jsonl(tmp_path / "pitfalls.jsonl", [
        {"step": s, "name": "likelihood displacement", "size": s / 100, "message": f"fell at {s}", "mitigation": "m"}
        for s in (10, 20, 30)])
    page = build_report(tmp_path).read_text()
    assert page.count("<li>") == 1 and "fell at 30" in page and "at step 30" in page


@pytest.mark.parametrize(
    "name, content, line, field",
    [
        ("metrics.jsonl", '{"step": 0, "loss": 1}\n{"step": 1, "loss": 0.9}\n{"step": 2, "loss": \n', 3, None),
        ("metrics.jsonl", '{"step": 0, "loss": 1}\n{"loss": 0.9}\n', 2, "step"),
        ("metrics.jsonl", '{"step": "one", "loss": 1}\n', 1, "step"),
        ("displacement.jsonl", '[1, 2]\n', 1, None),
        ("rl_metrics.jsonl", '{"step": 0, "kl": 0}\nnot json\n', 2, None),
        ("ches.csv", "index,ches,ln_ches,edit_distance,flagged\n0,1.0,0.1,0.5,1\n1,abc,0.2,0.5,0\n", 3, "ches"),
        ("ches.csv", "index,ches,edit_distance,flagged\n0,1.0,0.5,1\n", 1, "ln_ches"),
        ("ches.csv", "index,ches,ln_ches,edit_distance,flagged\n0,1.0,0.1,0.5,maybe\n", 2, "flagged"),
        ("reward_variance.json", '{"rm": [0.1, 0.2,\n', 2, None),
        ("pitfalls.json", '[{"size": 1}]', 1, "name"),
    ],
)
def test_malformed_input_names_file_and_line(tmp_path, name, content, line, field):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError) as err:
        build_report(tmp_path)
    assert name in str(err.value)
    if line is not None:
        assert err.value.line == line and f"line {line}" in str(err.value)
    if field is not None:
        assert err.value.field == field
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "a failed build must leave nothing behind"


def test_report_write_is_atomic_and_replaces(full_run):
    (full_run / "report.html").write_text("stale")
    build_report(full_run)
    assert (full_run / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert not [p for p in full_run.iterdir() if p.name.endswith(".tmp")]


def test_missing_run_dir_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="run directory not found"):
        build_report(tmp_path / "nope")


# ---------------------------------------------------------------- a real browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        if path := shutil.which(name):
            return path
    return None


class _DevTools:
    """Minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fd 3 in, fd 4 out), so
    the browser's own layout can be queried without any script in the page itself."""

    def __init__(self, binary: str, profile: str, url: str):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # the child moves its ends onto fds 3 and 4, so they must not already be 3 or 4
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]
        for fd in (to_chrome_r, from_chrome_w):
            os.close(fd)
        to_chrome_r, from_chrome_w = high
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1280,4000", url]
        move_fds = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execv(sys.argv[3], sys.argv[3:])"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", move_fds, str(to_chrome_r), str(from_chrome_w), binary, *flags],
            pass_fds=(to_chrome_r, from_chrome_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf, self._id = b"", 0

    def call(self, method: str, session: str | None = None, timeout: float = 20.0, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raise TimeoutError(method)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


LAYOUT_JS = """JSON.stringify({url: location.href, ready: document.readyState, plots: Array.from(document.querySelectorAll('[data-plot]')).map(e => {
  const r = e.getBoundingClientRect();
  return {name: e.dataset.plot, w: r.width, h: r.height, natural: e.naturalWidth || 0, complete: e.complete};
})})"""


def test_report_renders_in_headless_chromium(full_run):
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary on PATH (apt-get install -y chromium)")
    url = build_report(full_run).resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        tools = _DevTools(binary, profile, "about:blank")
        try:
            page = next(t for t in tools.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
            session = tools.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
            tools.call("Page.navigate", session, url=url)
            deadline = time.monotonic() + 20
            while True:
                result = tools.call("Runtime.evaluate", session, expression=LAYOUT_JS, returnByValue=True)
                layout = json.loads(result["result"]["value"])
                loaded = layout["url"] == url and layout["ready"] == "complete"
                if loaded and all(p["complete"] for p in layout["plots"]):
                    break
                assert time.monotonic() < deadline, f"page did not finish loading: {layout}"
                time.sleep(0.1)
            tools.call("Emulation.setDeviceMetricsOverride", session, width=1280, height=2000, deviceScaleFactor=1, mobile=False)
            shot = tools.call("Page.captureScreenshot", session, format="png")
        finally:
            tools.close()
    plots = {p["name"]: p for p in layout["plots"]}
    assert sorted(plots) == sorted(PLOTS)
    for name, p in plots.items():
        assert p["w"] > 0 and p["h"] > 0 and p["natural"] > 0, f"{name} rendered with no size: {p}"
    pixels = imread(io.BytesIO(base64.b64decode(shot["data"])), format="png")
    assert pixels[..., :3].std() > 0.01, "the screenshot is blank"


def test_ches_table_formats_the_audit_columns(tmp_path):
    # The audit's extra columns come back from CSV as text: numbers and booleans are shown as such, text is cut.
    from alignscope.report.html import _ches_section

    with open(tmp_path / "ches.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "ches", "ln_ches", "edit_distance", "flagged", "logp_chosen", "model_ranks_correctly", "prompt_tokens", "note"])
        w.writerow([0, 5.0, 1.0, 0.5, "True", -10.664149284362793, "True", 16, "x" * 300])
        w.writerow([1, 1.0, 0.1, 0.9, "False", -3.0, "False", 12, "short"])
    html_text = _ches_section(tmp_path)
    assert ">-10.66<" in html_text and ">yes<" in html_text and ">16<" in html_text
    assert "-10.664149284362793" not in html_text and "x" * 120 in html_text and "x" * 121 not in html_text
