"""The GPU check: SFT, `audit data`, DPO, RM, `audit rm`, best-of-n rollouts (hf and vllm) and GRPO, each as the
real CLI in its own process, with a table of what ran, how long it took and its peak memory.

    python scripts/gpu_check.py                       # SmolLM2 on this machine's GPU(s), bf16 (`make gpu-check`)
    python scripts/gpu_check.py --device cpu --quick  # the same stages on a tiny model, a few steps: a dry run

With 2 or more GPUs the training stages and GRPO (hf) run again as 2 processes (torchrun), and DPO, the CHES
audit and GRPO (hf) once more with the model sharded (`accelerate launch`, examples/accelerate/fsdp_2gpu.yaml), and DPO
and GRPO (hf) partitioned by DeepSpeed ZeRO-3 (deepspeed_zero3.yaml) where deepspeed is installed. A stage whose command
does not take an option yet (`--device`, `rollout_backend`) runs without it and says so; vLLM stages
are skipped with the reason when vLLM is not installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

CLI = [sys.executable, "-m", "alignscope.cli.main"]
CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
FSDP = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp_2gpu.yaml"), "-m", "alignscope.cli.main"]
ZERO3 = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "deepspeed_zero3.yaml"), "-m",
         "alignscope.cli.main"]


@dataclasses.dataclass
class Stage:
    name: str
    argv: list[str]
    needs: tuple[str, ...] = ()
    backend: str = "hf"
    procs: int = 1
    note: str = ""


@dataclasses.dataclass
class Result:
    stage: Stage
    status: str
    seconds: float = 0.0
    gpu_mib: float | None = None
    rss_mib: float | None = None


def _gpu_used_mib() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sum(float(x) for x in out.stdout.split()) if out.returncode == 0 else None


def _accepts(command: list[str], option: str) -> bool:
    """Whether this build's `alignscope COMMAND` takes `option` (a flag, or a config key of `train METHOD`)."""
    if command[0] == "train":
        from alignscope.training.config import RLConfig, TrainConfig

        cls = RLConfig if command[1] == "rl" else TrainConfig
        return option in {f.name for f in dataclasses.fields(cls)}
    from alignscope.cli.main import build_parser

    parser = build_parser()
    for word in command:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return any(option in a.option_strings for a in parser._actions)


def run_stage(stage: Stage, env: dict, log) -> Result:
    base = _gpu_used_mib()
    peak = [base]
    done = threading.Event()

    def poll():
        while not done.wait(0.5):
            used = _gpu_used_mib()
            if used is not None:
                peak[0] = max(peak[0] or 0.0, used)

    if base is not None:
        threading.Thread(target=poll, daemon=True).start()
    t = time.perf_counter()
    proc = subprocess.Popen(stage.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # waited here, not by Popen, to read the stage's own peak RSS
    returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t
    done.set()
    log(out, stage)
    if returncode != 0:
        tail = [line for line in out.strip().splitlines() if line.strip()][-1:] or [f"exit {returncode}"]
        res = Result(stage, f"failed: {tail[0][:160]}", seconds)
    else:
        res = Result(stage, "ran", seconds)
    if base is not None and peak[0] is not None:
        res.gpu_mib = peak[0] - base
    res.rss_mib = usage.ru_maxrss / 1024
    return res


def write_data(root: Path, n_pairs: int, real: Path | None) -> tuple[Path, Path, Path]:
    """Pairs, SFT examples and prompts: the UltraFeedback sample when given, else the lab's synthetic language."""
    if real is not None:
        rows = [json.loads(line) for line in real.read_text().splitlines()[:n_pairs]]
        pairs = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    else:
        from alignscope.world.generate import pairwise_data
        from alignscope.world.language import default_world

        pairs = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                 for p in pairwise_data(default_world(0), n_pairs, seed=3, noise=0.0)]
    root.mkdir(parents=True, exist_ok=True)
    files = root / "pairs.jsonl", root / "sft.jsonl", root / "prompts.jsonl"
    files[0].write_text("".join(json.dumps(p) + "\n" for p in pairs))
    files[1].write_text("".join(json.dumps({"prompt": p["prompt"], "completion": p["chosen"]}) + "\n" for p in pairs))
    files[2].write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in pairs))
    return files


def stages(args, work: Path, pairs: Path, sft: Path, prompts: Path) -> list[Stage]:
    q = args.quick
    model = "tiny" if q else args.model
    gpu = args.device != "cpu"
    steps, bs, length = (2, 2, 64) if q else (20, 8, 512)
    dev_flags = ["--device", args.device, "--dtype", args.dtype]
    train_common = [f"max_steps={steps}", f"batch_size={bs}", f"max_length={length}", "progress=false"]
    sft_final, rm_final = str(work / "sft" / "final"), str(work / "rm" / "final")

    def train(method, out, extra, procs=1):
        argv = ["train", method, "--overwrite", *extra, f"output_dir={work / out}", *train_common]
        note = []
        if _accepts(["train", method], "device"):
            argv += [f"device={args.device}", f"dtype={args.dtype}"]
        elif gpu:
            argv.append("mixed_precision=bf16")
            note.append("no device/dtype option in this build: accelerate's device, bf16 mixed precision")
        launch = CLI if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
                                         "-m", "alignscope.cli.main"]
        return launch + argv, "; ".join(note)

    def command(words, argv):
        note = ""
        if _accepts(words, "--device"):
            argv += dev_flags
        elif gpu:
            note = "no --device in this build: ran on the CPU"
        return CLI + words + argv, note

    out: list[Stage] = []
    for procs in [1] + ([2] if args.gpus >= 2 and not q else []):
        tag = "" if procs == 1 else "-2proc"
        a, n = train("sft", f"sft{tag}", [f"model={model}", f"data={sft}"], procs)
        out.append(Stage("sft" + tag, a, procs=procs, note=n))
        if procs == 1:
            a, n = command(["audit", "data"], ["--model", sft_final, "--data", str(pairs), "--out", str(work / "audit" / "ches.csv"),
                                               "--filter", "drop:0.25", "--max-length", str(length)])
            out.append(Stage("audit data", a, ("sft",), note=n))
        a, n = train("dpo", f"dpo{tag}", [f"model={sft_final}", f"data={pairs}"], procs)
        out.append(Stage("dpo" + tag, a, ("sft",), procs=procs, note=n))
        a, n = train("rm", f"rm{tag}", [f"model={sft_final}", f"data={pairs}"], procs)
        out.append(Stage("rm" + tag, a, ("sft",), procs=procs, note=n))
    n_prompts, n_samples, new_tokens = (2, 2, 8) if q else (32, 8, 128)
    a, n = command(["audit", "rm"], ["--rm", rm_final, "--policy", sft_final, "--prompts", str(prompts), "--n", str(n_samples),
                                     "--limit", str(n_prompts), "--max-new-tokens", str(new_tokens), "--out", str(work / "audit_rm")])
    out.append(Stage("audit rm", a, ("sft", "rm"), note=n))
    for backend in ("hf", "vllm"):
        a, n = command(["bon"], ["--policy", sft_final, "--prompts", str(prompts), "--reward", rm_final, "--n", str(n_samples),
                                 "--limit", str(n_prompts), "--max-new-tokens", str(new_tokens), "--rollout-backend", backend,
                                 "--out", str(work / f"bon_{backend}.jsonl")])
        out.append(Stage(f"bon ({backend})", a, ("sft", "rm"), backend=backend, note=n))
    for backend in ("hf", "vllm"):
        rl = ["train", "rl", "--overwrite", "algorithm=grpo", f"model={sft_final}", f"prompts={prompts}", f"reward={rm_final}",
              f"steps={2 if q else 10}", f"prompts_per_step={n_prompts}", f"samples_per_prompt={n_samples}",
              f"max_new_tokens={new_tokens}", f"output_dir={work / f'grpo_{backend}'}", "progress=false"]
        note = ""
        if _accepts(["train", "rl"], "rollout_backend"):
            rl.append(f"rollout_backend={backend}")
        elif backend == "vllm":
            out.append(Stage("grpo (vllm)", [], backend="vllm", note="skipped: train rl has no rollout_backend option in this build"))
            continue
        if _accepts(["train", "rl"], "device"):
            rl += [f"device={args.device}", f"dtype={args.dtype}"]
        elif gpu:
            note = "no device option in this build: ran on the CPU"
        out.append(Stage(f"grpo ({backend})", CLI + rl, ("sft", "rm"), backend=backend, note=note))
        if backend == "hf" and args.gpus >= 2 and not q:  # DDP: each process samples and trains half of every rollout batch
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "alignscope.cli.main"]
            rl2 = [a.replace(f"grpo_{backend}", "grpo-2proc") for a in rl]
            out.append(Stage("grpo-2proc (hf)", torchrun + rl2, ("sft", "rm"), backend=backend, procs=2, note=note))
            sharded = "the model sharded over 2 GPUs (FSDP v2)"
            dpo = train("dpo", "dpo-fsdp", [f"model={sft_final}", f"data={pairs}"], 2)[0]
            out.append(Stage("dpo-fsdp", FSDP + dpo[dpo.index("train"):], ("sft",), procs=2, note=sharded))
            out.append(Stage("audit data-fsdp", FSDP + ["audit", "data", "--model", sft_final, "--data", str(pairs), "--out",
                                                         str(work / "audit-fsdp" / "ches.csv"), "--filter", "drop:0.25",
                                                         "--max-length", str(length), *dev_flags], ("sft",), procs=2, note=sharded))
            out.append(Stage("grpo-fsdp (hf)", FSDP + [a.replace(f"grpo_{backend}", "grpo-fsdp") for a in rl], ("sft", "rm"),
                             backend=backend, procs=2, note=sharded))
            if importlib.util.find_spec("deepspeed") is not None:
                zero3 = "the model partitioned over 2 GPUs (DeepSpeed ZeRO-3)"
                dpo = train("dpo", "dpo-zero3", [f"model={sft_final}", f"data={pairs}"], 2)[0]
                out.append(Stage("dpo-zero3", ZERO3 + dpo[dpo.index("train"):], ("sft",), procs=2, note=zero3))
                out.append(Stage("grpo-zero3 (hf)", ZERO3 + [a.replace(f"grpo_{backend}", "grpo-zero3") for a in rl], ("sft", "rm"),
                                 backend=backend, procs=2, note=zero3))
    return out


def table(results: list[Result], header: str) -> str:
    lines = [header, "", "| stage | backend | processes | status | time (s) | peak GPU memory (MiB) | peak RSS (MiB) | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        gpu = f"{r.gpu_mib:.0f}" if r.gpu_mib is not None else "-"
        rss = f"{r.rss_mib:.0f}" if r.rss_mib is not None else "-"
        lines.append(f"| {r.stage.name} | {r.stage.backend} | {r.stage.procs} | {r.status} | {r.seconds:.1f} | {gpu} | {rss} | "
                     f"{r.stage.note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the default) or cpu (a dry run, with --quick)")
    p.add_argument("--dtype", default="bfloat16", help="the weights' dtype where a command takes one")
    p.add_argument("--quick", action="store_true", help="a tiny model and a few steps per stage")
    p.add_argument("--model", default="smollm2", help="the model of the full check (any alignscope model spec)")
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "ultrafeedback_sample" / "train_clean.jsonl",
                   help="UltraFeedback-style pairs for the full check (the lab's synthetic data when absent or --quick)")
    p.add_argument("--work", type=Path, default=Path("runs/gpu_check"), help="where the stages write")
    p.add_argument("--out", type=Path, default=None, help="the table as markdown (default: WORK/gpu_check.md)")
    args = p.parse_args(argv)
    if args.device == "cpu":
        args.dtype = "float32" if args.dtype == "bfloat16" and args.quick else args.dtype
    import torch

    args.gpus = torch.cuda.device_count()
    if args.device != "cpu" and args.gpus == 0:
        print("gpu_check: error: no CUDA GPU is visible (torch.cuda.device_count() is 0)\n  fix: run it on a GPU machine, "
              "or do the dry run with --device cpu --quick", file=sys.stderr)
        return 2
    work = args.work
    real = None if args.quick or not args.data.is_file() else args.data
    pairs, sft, prompts = write_data(work / "data", 16 if args.quick else 256, real)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    vllm = importlib.util.find_spec("vllm") is not None
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def log(text, stage):
        (logs / (stage.name.replace(" ", "_").replace("(", "").replace(")", "") + ".log")).write_text(text)

    results, failed = [], set()
    for st in stages(args, work, pairs, sft, prompts):
        if not st.argv:
            results.append(Result(st, st.note))
            st.note = ""
        elif st.backend == "vllm" and not vllm:
            results.append(Result(st, "skipped: vLLM is not installed (pip install 'alignscope[vllm]' on a GPU machine)"))
        elif any(n in failed for n in st.needs):
            results.append(Result(st, f"skipped: needs {', '.join(n for n in st.needs if n in failed)}"))
        else:
            r = run_stage(st, env, log)
            results.append(r)
            if r.status != "ran":
                failed.add(st.name)
        print(f"{results[-1].stage.name}: {results[-1].status} ({results[-1].seconds:.1f} s)", flush=True)
    gpu_name = torch.cuda.get_device_name(0) if args.gpus else "no GPU"
    text = table(results, f"GPU check: model {'tiny' if args.quick else args.model}, device {args.device} ({gpu_name}, "
                          f"{args.gpus} visible), dtype {args.dtype}, data {real or 'lab synthetic'}")
    out = args.out or work / "gpu_check.md"
    out.write_text(text)
    print(text)
    print(f"written: {out}; logs per stage in {logs}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
