"""The command's output is alignscope's: no transformers per-load bars, alignscope's own progress kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
LIBRARY_BARS = ("Loading weights", "Writing model shards", "Loading checkpoint shards")


def test_a_load_and_save_through_the_cli_prints_no_library_bars(tmp_path, tiny_model, bpe_tokenizer):
    """A fresh `alignscope train sft` process loads a saved folder and saves its final model: transformers draws a
    bar for each unless the entry point switches them off; the trainer's own `train sft` bar still shows."""
    tiny_model.save_pretrained(tmp_path / "base")
    bpe_tokenizer.save_pretrained(tmp_path / "base")
    rows = [{"prompt": f"question {i}?", "completion": f"answer {i}."} for i in range(4)]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_DISABLE_PROGRESS", "TRANSFORMERS_VERB"))}
    env.update(PYTHONPATH=str(SRC), ALIGNSCOPE_TEST_THREADS="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "alignscope.cli.main", "train", "sft", f"model={tmp_path / 'base'}",
         f"data={tmp_path / 'sft.jsonl'}", f"output_dir={tmp_path / 'run'}", "batch_size=2", "max_steps=1",
         "max_length=32", "progress=true"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert (tmp_path / "run" / "final").is_dir()
    assert not [bar for bar in LIBRARY_BARS if bar in out], out
    assert "train sft" in out  # alignscope's own bar is not hidden with the libraries' ones
