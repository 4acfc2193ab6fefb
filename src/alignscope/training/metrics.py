"""Metrics to `metrics.jsonl` (and TensorBoard / offline W&B when installed and asked for), plus the
per-pair evaluation log-probs and displacement statistics that the monitor and report read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignscope import run_files as rf
from alignscope.diagnostics.displacement import displacement_stats
from alignscope.diagnostics.warnings import Pitfall, detect_displacement, format_pitfall


class MetricsLogger:
    def __init__(self, out_dir: Path, enabled: bool = True, report_to: list[str] = (), truncate_after: int = 0, log=print):
        self.out_dir, self.enabled, self.say = Path(out_dir), enabled, log
        self.warned: dict[str, float] = {}  # pitfall name -> size when last printed
        self.tb = self.wandb = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name in rf.STEP_LOGS:
            if truncate_after:
                rf.truncate_jsonl(self.out_dir / name, truncate_after)
            else:
                (self.out_dir / name).unlink(missing_ok=True)
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:
                log("alignscope: tensorboard is not installed; logging to metrics.jsonl only")
        if "wandb" in report_to:
            try:
                import wandb

                self.wandb = wandb.init(mode="offline", dir=str(self.out_dir), reinit=True)
            except ImportError:
                log("alignscope: wandb is not installed; logging to metrics.jsonl only")

    def append_jsonl(self, name: str, row: dict[str, Any]) -> None:
        if self.enabled:  # only the main process of a distributed run writes
            rf.append_jsonl(self.out_dir / name, row)

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.append_jsonl(rf.METRICS, row)
        step = row["step"]
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                if self.tb is not None:
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    def eval_point(self, step: int, now: dict[str, Any], start: dict[str, Any], mass_gainers: list[dict] | None = None) -> dict[str, Any]:
        """Log per-pair eval log-probs and displacement against the start; warn on a detected pitfall.

        `mass_gainers` (short responses only): the tokens whose first-position probability rose most.
        """
        if not self.enabled:
            return {}
        self.append_jsonl(rf.EVAL_LOGPS, {"step": step, "chosen": now["chosen"], "rejected": now["rejected"]})
        stats = displacement_stats(start["chosen"], now["chosen"], start["rejected"], now["rejected"])
        row = {"step": step, **stats}
        if "implicit_reward_accuracy" in now:
            row["implicit_reward_accuracy"] = now["implicit_reward_accuracy"]
        if mass_gainers:
            row["mass_gainers"] = mass_gainers
        self.append_jsonl(rf.DISPLACEMENT, row)
        if step > 0:
            for pitfall in detect_displacement(stats):
                if mass_gainers:
                    moved = ", ".join(f"{g['token']!r} (+{g['gain']:.3f})" for g in mass_gainers[:3])
                    pitfall.message += f"; on short responses the mass went to {moved}"
                # The terminal hears of a pitfall once, and again only when it has grown by 0.1, not at
                # every evaluation point; pitfalls.jsonl gets every detection.
                grew = pitfall.size >= self.warned.get(pitfall.name, float("-inf")) + 0.1
                if grew:
                    self.warned[pitfall.name] = pitfall.size
                self.pitfall(step, pitfall, say=grew)
        return row

    def pitfall(self, step: int, pitfall: Pitfall, say: bool = True) -> None:
        """Record a detected pitfall in pitfalls.jsonl (the report lists them) and, with `say`, print it."""
        if say:
            self.say(f"alignscope: warning: {format_pitfall(pitfall)} (step {step})")
        self.append_jsonl(rf.PITFALLS, {"step": step, **pitfall.__dict__})

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
