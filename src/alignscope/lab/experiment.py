"""What every script in `experiments/` shares: its command line, a fresh output folder, and the
results.json + plot + table it leaves there. Kept here so each script holds only its science."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from alignscope.atomic import write_text


def parse_args(doc: str, name: str, add: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """`--out --seed --quick --threads` (plus what `add` declares); sets the torch thread count.

    One thread is the default: the lab models are too small to gain from more, and on a shared
    2-core machine two threads spin-wait on each other into large slowdowns.
    """
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    ap.add_argument("--out", default=f"runs/experiments/{name}", help="output folder (replaced)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="the small version the test suite runs")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--resume", action="store_true", help="keep --out and skip the parts a killed run finished (real-model scripts)")
    if add is not None:
        add(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def fresh_dir(out: str | Path, resume: bool = False) -> Path:
    """An empty output folder: results from an earlier run never mix with this one's.
    With `resume` the folder is kept, so a `Memo` in it skips what a killed run finished."""
    out = Path(out)
    if out.exists() and not resume:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


class Memo:
    """Results of a long script's parts, one JSON line each, appended as each part finishes.

    The real-model scripts run for hours on a CPU; with `--resume` a killed run recomputes only
    the part it was in. A part's key must name everything its result depends on."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.done: dict[str, Any] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # the line a kill cut short: that part runs again
                    self.done[row["key"]] = row["value"]

    def __call__(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self.done:
            value = compute()
            with self.path.open("a") as f:
                f.write(json.dumps({"key": key, "value": value}, default=float) + "\n")
            self.done[key] = value
        return self.done[key]


def pyplot():
    """matplotlib's pyplot on the off-screen Agg backend (experiments run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Lay out, write as PNG and free a figure (pyplot keeps every open figure alive)."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def finish(out: Path, result: dict[str, Any], plot: Callable[[dict, Path], None], plot_name: str,
           table: Callable[[dict], str], log: Callable[..., None] = print) -> dict[str, Any]:
    """Write results.json, draw the plot, print the table; return the results."""
    write_text(out / "results.json", json.dumps(result, indent=1, default=float))
    plot(result, out / plot_name)
    log(table(result))
    return result
