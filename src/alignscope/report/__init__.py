"""The self-contained HTML report of a run: `build_report(run_dir)` writes `run_dir/report.html`."""

from alignscope.report.html import build_report, render_report

__all__ = ["build_report", "render_report"]
