"""`make bench`: alignscope against TRL (and plain Hugging Face) on the same model, data and settings.

Every measurement is a fresh subprocess (no warm caches, its own peak RSS); the two sides of a
row alternate which goes first on each repetition, and the table reports medians. Usage:

    python benchmarks/run.py --out docs/performance.md          # the full table and the scale rows
    python benchmarks/run.py --quick --tools alignscope          # a smoke test in seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads as W  # noqa: E402

# (row label, our side, their side); a side is (task, tool).
ROWS = [
    ("DPO vs TRL DPOTrainer (reference model every step)", ("dpo", "alignscope"), ("dpo", "trl")),
    ("DPO vs TRL DPOTrainer (precompute_ref_log_probs)", ("dpo", "alignscope"), ("dpo_pre", "trl")),
    ("Reward model vs TRL RewardTrainer", ("rm", "alignscope"), ("rm", "trl")),
    ("SFT vs TRL SFTTrainer", ("sft", "alignscope"), ("sft", "trl")),
    ("CHES audit vs one plain forward pass", ("ches", "alignscope"), ("ches", "forward")),
    ("Generation vs Hugging Face generate", ("gen", "alignscope"), ("gen", "hf")),
    ("Generation at n = 8 vs generate(num_return_sequences=8)", ("gen_n", "alignscope"), ("gen_n", "hf")),
    ("GRPO step vs TRL GRPOTrainer", ("rl", "alignscope"), ("rl", "trl")),
]
SCALE_ROWS = [ROWS[1]]  # the "ratios hold" rows at 30M parameters and at 512-token responses
TRAINING = {"dpo", "dpo_pre", "rm", "sft"}


def trl_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("trl")
    except Exception:
        return None


def run_worker(task: str, tool: str, scale: str, root: Path, pairs: int | None) -> dict:
    cmd = [sys.executable, str(HERE / "run.py"), "--worker", json.dumps({"task": task, "tool": tool, "scale": scale, "root": str(root), "pairs": pairs})]
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{task}/{tool} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def flops(task: str, meta: dict, n_pairs: int, res: dict) -> float:
    """Model FLOPs of the work done: 6N per trained token, 2N per forward-only token (N without the input embedding).

    Sampling counts 2N per sampled token (prefill left out); a GRPO step adds 6N + 2N per rollout token for the
    policy step and the reference pass (prompts once per group), the same count for both tools.
    """
    n = meta["params_no_embedding"]
    if task == "rl":
        return 2 * n * res["gen_tokens"] + 8 * n * res["rollout_tokens"]
    frac = n_pairs / meta["scale"]["n_pairs"]
    p, c, r = meta["prompt_tokens"] * frac, meta["chosen_tokens"] * frac, meta["rejected_tokens"] * frac
    if task in ("dpo", "dpo_pre"):
        return 6 * n * (2 * p + c + r) + 2 * n * (2 * p + c + r)  # policy step + one reference pass
    if task == "rm":
        return 6 * n * (2 * p + c + r)
    if task == "sft":
        return 6 * n * (p + c)
    if task == "ches":
        return 2 * n * (2 * p + c + r)
    return 2 * n * res["gen_tokens"]  # gen, gen_n: one forward token per sampled token (prefill left out)


def median_result(results: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in results) for k in results[0] if isinstance(results[0][k], (int, float))}


def measure(rows, scale: str, root: Path, reps: int, tools: set[str], pairs: int | None, log) -> list[dict]:
    """Run every side of `rows` `reps` times, alternating which side goes first."""
    sides = []
    for _, ours, theirs in rows:
        for side in (ours, theirs):
            if side[1] in tools and side not in sides:
                sides.append(side)
    results: dict[tuple, list[dict]] = {s: [] for s in sides}
    for rep in range(reps):
        order = []
        for _, ours, theirs in rows:
            pair = [ours, theirs] if rep % 2 == 0 else [theirs, ours]
            order += [s for s in pair if s in results and s not in order]
        for task, tool in order:
            t = time.time()
            res = run_worker(task, tool, scale, root, pairs)
            results[(task, tool)].append(res)
            log(f"  [{scale} rep {rep + 1}/{reps}] {task:8s} {tool:10s} wall {res['wall_s']:7.1f}s  cpu {res['cpu_s']:7.1f}s  "
                f"peak RSS {res['peak_rss_mb']:6.0f} MB  ({time.time() - t:.0f}s with start-up)")
    return [{"side": s, **median_result(r), "reps": len(r)} for s, r in results.items()]


def throughput(task: str, res: dict, n_pairs: int) -> str:
    if task == "rl":
        return f"{res['wall_s'] / res['steps']:.2f} s/step"
    if task in ("gen", "gen_n"):
        return f"{res['gen_tokens'] / res['wall_s']:.0f} tok/s"
    return f"{n_pairs / res['wall_s']:.2f} pairs/s"


def side_name(side: tuple[str, str]) -> str:
    """A side's name in the tables: the tool, and whether TRL precomputed its reference."""
    task, tool = side
    name = {"alignscope": "alignscope", "trl": f"TRL {trl_version()}", "forward": "plain forward", "hf": "HF generate"}[tool]
    return name + (" (precomputed ref)" if task == "dpo_pre" else "")


def table(rows, measured: list[dict], scale: str, meta: dict, n_pairs: int, peak: float) -> list[str]:
    by_side = {m["side"]: m for m in measured}
    out = [
        f"| {scale}: task | tool | wall s | CPU s | throughput | peak RSS MB | MFU | speed-up (wall) | speed-up (CPU) | RSS ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, ours, theirs in rows:
        for side in (ours, theirs):
            if side not in by_side:
                continue
            r = by_side[side]
            mfu = flops(side[0], meta, n_pairs, r) / r["wall_s"] / (peak * 1e9)
            cells = ["", "", ""]
            if side == ours and theirs in by_side:
                o = by_side[theirs]
                cells = [f"**{o['wall_s'] / r['wall_s']:.2f}x**", f"{o['cpu_s'] / r['cpu_s']:.2f}x", f"{r['peak_rss_mb'] / o['peak_rss_mb']:.2f}"]
            out.append(
                f"| {label if side == ours else ''} | {side_name(side)} | {r['wall_s']:.3g} | {r['cpu_s']:.3g} | {throughput(side[0], r, n_pairs)} | "
                f"{r['peak_rss_mb']:.0f} | {mfu:.1%} | {' | '.join(cells)} |"
            )
    return out


def floor_table(rows, measured: list[dict], scale: str, floor: dict[str, tuple[float, float]]) -> list[str]:
    """How close each alignscope row runs to the time its own matmuls take, and the largest speed-up reachable."""
    by_side = {m["side"]: m for m in measured}
    out = [
        f"| {scale}: task | alignscope matmul work | matmul floor s | alignscope wall s | floor / wall | compared with | "
        "its wall s | largest reachable speed-up | measured |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, ours, theirs in rows:
        if ours not in by_side or theirs not in by_side or ours[0] not in floor:
            continue
        flop, secs = floor[ours[0]]
        a, o = by_side[ours]["wall_s"], by_side[theirs]["wall_s"]
        out.append(f"| {label} | {flop / 1e12:.2f} TFLOP | {secs:.3g} | {a:.3g} | {secs / a:.0%} | {side_name(theirs)} | {o:.3g} | "
                   f"{o / secs:.2f}x | {o / a:.2f}x |")
    return out


def sampled(measured: list[dict]) -> dict[str, float]:
    """Tokens alignscope's sampling sides drew, for `workloads.sampling_floor`: gen_n in all, rl per optimizer step."""
    by_side = {m["side"]: m for m in measured}
    out = {}
    if ("gen_n", "alignscope") in by_side:
        out["gen_n"] = by_side[("gen_n", "alignscope")]["gen_tokens"]
    if ("rl", "alignscope") in by_side:
        r = by_side[("rl", "alignscope")]
        out["rl"] = r["gen_tokens"] / r["steps"]
    return out


def mfu_peak(size: int, runs: list) -> tuple[float, str]:
    """The MFU denominator and a note: the best matmul speed timed in this run (`W.matmul_peak_gflops`, timed once more
    now), raised to any row's own model-FLOP rate above it, since the machine did at least that, so no MFU tops 100%."""
    peak, note = W.matmul_peak_gflops(size), ""
    for scale, rows, meta, n_pairs, measured, _ in runs:
        for m in measured:
            rate = flops(m["side"][0], meta, n_pairs, m) / m["wall_s"] / 1e9
            if rate > peak:
                peak = rate
                note = f"; raised to the {rate:.1f} GFLOP/s of model FLOPs the {scale} {m['side'][0]} row's {side_name(m['side'])} side ran at"
    return peak, note


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def write_block(path: Path, text: str) -> None:
    """Replace the generated block of `path` (between the bench markers), keeping the prose around it."""
    block = f"{BEGIN}\n{text}\n{END}"
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END) :]
    else:
        new = (old.rstrip() + "\n\n" if old else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def machine(other: float) -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} logical cores visible, {W.THREADS} torch threads per run, load average {load:.1f} "
            f"and {other:.2f} cores busy with other work at start; "
            f"Python {platform.python_version()}, torch {torch.__version__}, transformers {__import__('transformers').__version__}, "
            f"TRL {trl_version() or 'not installed'}")


def other_load(seconds: float = 3.0) -> float:
    """Cores kept busy by other processes, sampled from /proc/stat while this one sleeps (nan where unreadable)."""
    def busy_total() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        return sum(ticks) - idle, sum(ticks)

    try:
        b0, t0 = busy_total()
        time.sleep(seconds)
        b1, t1 = busy_total()
    except (OSError, ValueError, IndexError):
        return float("nan")
    cores = os.cpu_count() or 1
    return (b1 - b0) / max(t1 - t0, 1) * cores


def choose_threads(requested: str, load: float, log) -> int:
    """`auto`: every core when the machine is quiet (other load under 0.2 of a core), else one thread."""
    if requested != "auto":
        return max(1, int(requested))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = cores if load < 0.2 else 1
    log(f"other load {load:.2f} cores: {n} torch thread(s) per run (--threads N to choose)")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model and data: a smoke test, not a measurement")
    ap.add_argument("--scale", choices=["all", "8m", "30m", "long"], default="all",
                    help="all: the 8.4M table plus the 30M and 512-token-response rows")
    ap.add_argument("--reps", type=int, default=1, help="repetitions per measurement (median reported)")
    ap.add_argument("--pairs", type=int, default=None, help="use only the first N pairs (shrinks the workload; say so)")
    ap.add_argument("--scale-pairs", type=int, default=96,
                    help="with --scale all: --pairs for the 30m and long rows (96 keeps `make bench` under 30 minutes on 2 cores)")
    ap.add_argument("--tools", default="alignscope,trl,forward,hf", help="comma-separated sides to run")
    ap.add_argument("--tasks", default="dpo,rm,sft,ches,gen,gen_n,rl",
                    help="comma-separated rows to run (by alignscope's task; gen_n: generation at n = 8, rl: a GRPO step)")
    ap.add_argument("--threads", default=os.environ.get("ALIGNSCOPE_BENCH_THREADS", "1"),
                    help="torch threads per run: a number, or auto (every core on a quiet machine, else 1); 1 gives the "
                         "steadiest ratios on a shared machine")
    ap.add_argument("--root", default=str(Path.home() / ".cache" / "alignscope" / "bench"), help="where models and data are built")
    ap.add_argument("--out", default=None, help="write the markdown tables here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        job = json.loads(args.worker)
        res = W.run_job(job["task"], job["tool"], job["scale"], Path(job["root"]), job["pairs"])
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    log = lambda msg: print(msg, flush=True)  # noqa: E731
    busy = other_load()  # recorded in the table whatever the thread count
    W.THREADS = choose_threads(args.threads, busy, log)
    os.environ["ALIGNSCOPE_BENCH_THREADS"] = str(W.THREADS)  # every worker runs with the same count
    tools = set(args.tools.split(","))
    if "trl" in tools and trl_version() is None:
        log("TRL is not installed: running the alignscope, plain-forward and HF-generate sides only (pip install -e '.[bench]')")
        tools.discard("trl")
    root = Path(args.root)
    wanted = set(args.tasks.split(","))
    rows_all = [r for r in ROWS if r[1][0] in wanted]
    rows_scale = [r for r in SCALE_ROWS if r[1][0] in wanted]
    plan = [("quick", rows_all, args.pairs)] if args.quick else []
    if not args.quick:
        if args.scale in ("all", "8m"):
            plan.append(("8m", rows_all, args.pairs))
        for s in ("30m", "long"):
            if args.scale in ("all", s):
                plan.append((s, rows_scale if args.scale == "all" else rows_all, args.scale_pairs if args.scale == "all" else args.pairs))
    size = 512 if args.quick else 2048
    log(f"fp32 matmul peak with {W.THREADS} threads so far: {W.matmul_peak_gflops(size):.1f} GFLOP/s")
    started = time.time()
    runs = []
    for scale, rows, pairs in plan:
        assets = W.build_assets(W.SCALES[scale], root, log=log)
        meta = json.loads((assets / "meta.json").read_text())
        n_pairs = min(pairs or meta["scale"]["n_pairs"], meta["scale"]["n_pairs"])
        log(f"{scale}: {meta['params'] / 1e6:.2f}M parameters, {n_pairs} pairs, prompts {meta['mean_prompt_tokens']:.0f} tokens, "
            f"responses {meta['mean_response_tokens']:.0f} tokens")
        measured = measure(rows, scale, root, args.reps, tools, pairs, log)
        floor = {**W.matmul_floor(W.SCALES[scale], meta, n_pairs), **W.sampling_floor(W.SCALES[scale], assets, sampled(measured))}
        runs.append((scale, rows, meta, n_pairs, measured, floor))
    peak, note = mfu_peak(size, runs)
    log(f"fp32 matmul peak with {W.THREADS} threads: {peak:.1f} GFLOP/s{note}")
    lines = [
        "| | |", "|---|---|",
        f"| machine | {machine(busy)} |",
        f"| command | `python benchmarks/{' '.join(['run.py'] + (argv if argv is not None else sys.argv[1:]))}` |",
        f"| fp32 matmul peak | {peak:.1f} GFLOP/s with {W.THREADS} threads, the MFU denominator: the best of {len(W.RATES_GFLOPS)} timed "
        f"matmul shapes ({size}x{size} at the start and the end of the run, and the matmul floor's own){note} |",
        "",
    ]
    for scale, rows, meta, n_pairs, measured, floor in runs:
        sc = W.SCALES[scale]
        sampling = [f"generation: {sc.gen_prompts} prompts x {sc.gen_new_tokens} new tokens, batch 32"]
        if any(r[1][0] == "gen_n" for r in rows):
            sampling.append(f"generation at n: {sc.gen_n_prompts} prompts x {sc.gen_n} samples x {sc.gen_new_tokens} new tokens, "
                            f"{W.GEN_N_BATCH} samples a batch")
        if any(r[1][0] == "rl" for r in rows):
            sampling.append(f"GRPO: {sc.rl_steps} optimizer step(s), each on {sc.rl_prompts} prompts x {sc.rl_samples} samples of at "
                            f"most {sc.rl_new_tokens} tokens, KL weight {W.RL_BETA} (a reference pass on both sides), loss dapo, "
                            "reward: completion characters / 100, Hugging Face sampling on both sides")
        lines += [
            f"**{scale}**: Llama-style, {meta['params'] / 1e6:.2f}M parameters (hidden {meta['scale']['hidden_size']}, "
            f"{meta['scale']['num_layers']} layers, vocab {meta['scale']['vocab_size']}), {n_pairs} pairs, prompts "
            f"{meta['mean_prompt_tokens']:.0f} and responses {meta['mean_response_tokens']:.0f} tokens on average, batch "
            f"{meta['scale']['batch_size']} pairs, fp32, 1 epoch, lr {meta['scale']['lr']}, beta {meta['scale']['beta']}; "
            f"{'; '.join(sampling)}; median of {args.reps} run(s) per cell.",
            "",
            *table(rows, measured, scale, meta, n_pairs, peak),
            "",
        ]
        ftable = floor_table(rows, measured, scale, floor)
        if len(ftable) > 2:
            lines += [
                f"Matmul floor ({scale}): the seconds the matmuls of alignscope's own exact computation take at this machine's "
                "measured speed for those very shapes (no attention, normalisation, optimizer or I/O), so nothing that does this "
                "arithmetic runs faster; the other side's wall time over it is the largest speed-up reachable without doing less of it. "
                "Sampling rows count each prompt's prefill once, one decode token per sample per step and, for GRPO, the rollout "
                "(each prompt once per group) through the policy forward and backward and the reference forward.",
                "",
                *ftable,
                "",
            ]
    lines.append(f"Total benchmark time: {(time.time() - started) / 60:.1f} min.")
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        write_block(Path(args.out), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
