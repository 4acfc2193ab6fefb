"""`alignscope audit data` (CHES data audit and filter) and `alignscope audit rm` (teacher audit)."""

from __future__ import annotations

import argparse
from pathlib import Path

from alignscope.cli.args import add_chunk_arguments, add_reward_timeout
from alignscope.models.device import add_device_arguments
from alignscope.rollout.options import add_rollout_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="audit preference data (CHES) or reward models (reward variance)")
    s = p.add_subparsers(dest="audit_command", metavar="WHAT", required=True)

    d = s.add_parser("data", help="per-pair CHES, edit distance, log-probs; dataset findings; --filter",
                     description="Score every pair once with the model and report the pairs likely to cause likelihood displacement.")
    d.add_argument("--model", required=True, help="model folder, .gguf, 'smollm2', 'lab:small', or a cached hub id")
    d.add_argument("--data", required=True, help="pairwise data: a file, a saved `datasets` folder, or a Hub dataset "
                   "hf:NAME[:SUBSET][@SPLIT] (read from the local datasets cache when offline)")
    d.add_argument("--format", help="override format detection")
    d.add_argument("--map", action="append", default=[], metavar="NEW=OLD", help="rename a column (repeatable)")
    d.add_argument("--out", default="audit", help="output folder (ches.csv and the manifest alignscope.json; `alignscope report` reads it); "
                   "a path ending in .csv or .parquet is taken as the table itself, its manifest written beside it")
    d.add_argument("--filter", metavar="KIND:VALUE", help="write a filtered dataset: drop:0.1 (top 10%% LN-CHES), threshold:0.5, keep-lowest:0.05")
    d.add_argument("--filtered-out", default=None, help="where the filtered dataset goes (default: beside --out)")
    d.add_argument("--limit", type=int, help="audit only the first N pairs")
    d.add_argument("--on-error", choices=["fail", "skip"], default="fail", help="skip: set invalid rows aside in a rejects file beside --out")
    d.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    d.add_argument("--max-length", type=int, default=1024, help="prompt + response tokens kept per sequence")
    d.add_argument("--max-prompt-length", type=int, default=512, help="prompt tokens kept (from the end)")
    add_chunk_arguments(d, "pairs", 256, sampled=False)
    add_device_arguments(d)
    d.set_defaults(func=run_data)

    r = s.add_parser("rm", help="reward variance and accuracy of reward models under a policy: the teacher table",
                     description="Sample n responses per prompt from the policy and rank the reward models as teachers.")
    r.add_argument("--rm", nargs="+", required=True, help="reward models: folders, module:function, or lab:gold")
    r.add_argument("--policy", required=True, help="policy model spec")
    r.add_argument("--prompts", required=True, help="prompts: a file, a saved `datasets` folder, or hf:NAME[:SUBSET][@SPLIT]")
    r.add_argument("--map", action="append", default=[], metavar="NEW=OLD", help="rename a column of --prompts (repeatable)")
    r.add_argument("--as-chat", action="store_true",
                   help="send plain-text prompts as one user message (the chat template of an instruct model applies)")
    r.add_argument("--pairs", help="pairwise data for off-policy accuracy (a file, a folder, or hf:NAME[:SUBSET][@SPLIT])")
    r.add_argument("--gold", help="gold reward (module:function or lab:gold) for on-policy accuracy")
    r.add_argument("--n", "--samples-per-prompt", dest="n", type=int, default=10,
                   help="samples per prompt (at least 2: variance needs two); under torchrun write --samples-per-prompt "
                        "(torchrun's own parser takes --n for a prefix of its options)")
    r.add_argument("--limit", type=int, default=100, help="number of prompts")
    r.add_argument("--max-new-tokens", type=int, default=32, help="tokens sampled per response")
    r.add_argument("--threshold", type=float, default=0.1, help="standardised variance below which a prompt is 'low variance'")
    r.add_argument("--out", default="audit", help="output folder (reward_variance.json, teacher_table.json, samples.jsonl, alignscope.json)")
    r.add_argument("--seed", type=int, default=0, help="sampling seed")
    add_chunk_arguments(r, "prompts", 16, sampled=True)
    add_reward_timeout(r)
    add_device_arguments(r)
    add_rollout_arguments(r)
    r.set_defaults(func=run_rm)


def check_data_args(args: argparse.Namespace) -> tuple[Path, Path, Path, Path | None]:
    """Every `audit data` argument, before any model call: (folder, table, manifest, filtered-out path)."""
    from alignscope import run_files as rf
    from alignscope.audits.data import parse_filter, table_paths
    from alignscope.audits.outputs import (
        check_number,
        check_output_dir,
        check_output_file,
    )

    for option, value, minimum in (("--limit", args.limit, 1), ("--batch-size", args.batch_size, 1),
                                   ("--max-length", args.max_length, 2), ("--max-prompt-length", args.max_prompt_length, 1)):
        check_number(value, option, minimum=minimum)
    if args.filter:
        parse_filter(args.filter)
    folder, table, manifest = table_paths(args.out)
    if manifest.name == rf.MANIFEST:
        check_output_dir(folder, "--out")
    else:
        check_output_file(table, "--out", (".csv", ".parquet"))
    filtered = None
    if args.filter:
        filtered = Path(args.filtered_out) if args.filtered_out else table.with_name(table.stem + ".filtered.jsonl")
        check_output_file(filtered, "--filtered-out")
    elif args.filtered_out:
        from alignscope.errors import ConfigError

        raise ConfigError("--filtered-out was given without --filter", "add --filter drop:0.1 (or another rule), or drop --filtered-out")
    return folder, table, manifest, filtered


def run_data(args: argparse.Namespace) -> int:
    import dataclasses
    import tempfile

    import torch

    from alignscope import run_files as rf
    from alignscope.audits.chunks import CHUNKS_DIR, distributed, finish, sharding_launch
    from alignscope.audits.data import (
        apply_filter,
        audit_in_chunks,
        format_summary,
        write_table,
    )
    from alignscope.audits.outputs import command_line
    from alignscope.data.loader import is_hub_spec, load_data, parse_mapping
    from alignscope.models.device import load_placed, placement_from_args

    placement = placement_from_args(args)  # a GPU asked for but absent fails before any work
    folder, table, manifest, filtered = check_data_args(args)
    rank, world, barrier = distributed()
    # Only the main process writes next to the outputs; the others' rejects (the same rows) go to a scratch folder.
    rejects = table.with_name(table.stem + ".rejects.jsonl") if rank == 0 else Path(tempfile.mkdtemp()) / "rejects.jsonl"
    data = load_data(args.data, format=args.format, mapping=parse_mapping(args.map), on_error=args.on_error, rejects_path=rejects)
    pairs = data.examples[: args.limit] if args.limit else data.examples
    accelerator = sharding_launch(placement, "audit data", print if rank == 0 else lambda *a: None)
    if accelerator is None:
        model, tok = load_placed(args.model, placement)
    else:  # loaded on the CPU and sharded block by block onto the devices: the model need not fit one of them
        model, tok = load_placed(args.model, dataclasses.replace(placement, device=torch.device("cpu")))
        model = accelerator.prepare(model).eval()
        if rank == 0:
            print(f"FSDP: the model is sharded over {world} processes, which score every chunk together")
    source = args.data if is_hub_spec(args.data) else str(Path(args.data).resolve())  # a Hub spec is no path
    settings = {"data": source, "format": args.format, "map": args.map, "limit": args.limit, "model": args.model,
                "max_length": args.max_length, "max_prompt_length": args.max_prompt_length, "dtype": placement.dtype_name}
    chunks = table.parent / CHUNKS_DIR
    audit = audit_in_chunks(model, tok, pairs, chunk_dir=chunks, settings=settings, resume=args.resume, rank=rank, world=world,
                            barrier=barrier, chunk_pairs=args.chunk_pairs, batch_size=args.batch_size, max_length=args.max_length,
                            max_prompt_length=args.max_prompt_length, sharded=accelerator is not None)
    if audit is None:  # another process of a distributed run: the main one writes the results
        return 0
    msg, files = [], {"ches_table": table.name}
    if args.filter:
        kept, dropped, n_drop = apply_filter(audit, pairs, args.filter, filtered)
        files.update(filtered=str(kept), dropped=str(dropped))
        msg.append(f"filter {args.filter}: kept {len(pairs) - n_drop} pairs -> {kept}; dropped {n_drop} -> {dropped}")
    else:
        msg.append("no --filter given, so the table's `flagged` column is all False; --filter drop:0.1 drops the top 10% LN-CHES")
    for row in audit.rows:
        row.setdefault("flagged", False)
    folder.mkdir(parents=True, exist_ok=True)
    write_table(audit.rows, table)
    if data.rejects_path is not None:
        files["rejects"] = str(data.rejects_path)
    rf.write_manifest(manifest, "audit data", command_line(args, "audit data"), files,
                      data=source, model=args.model, filter=args.filter, summary=audit.summary, processes=world,
                      sharded=accelerator is not None)
    finish(chunks)
    print(format_summary(audit))
    print(f"per-pair table: {table} ({rf.ROW_CONVENTION}); manifest: {manifest}")
    for m in msg:
        print(m)
    return 0


def check_rm_args(args: argparse.Namespace) -> Path:
    """Every `audit rm` argument, before any model call; returns the output folder."""
    from alignscope.audits.outputs import check_number, check_output_dir

    check_number(args.n, "--n", minimum=2, why="per-prompt reward variance needs at least 2 samples")
    check_number(args.limit, "--limit", minimum=1)
    check_number(args.max_new_tokens, "--max-new-tokens", minimum=1)
    check_number(args.threshold, "--threshold", minimum=0)
    return check_output_dir(args.out, "--out")


def run_rm(args: argparse.Namespace) -> int:
    from alignscope import run_files as rf
    from alignscope.audits.chunks import CHUNKS_DIR, distributed, finish, run_in_chunks
    from alignscope.audits.outputs import command_line
    from alignscope.audits.reward_model import (
        audit_reward_models,
        format_table,
        sample_and_reward,
        write_outputs,
    )
    from alignscope.data.loader import load_data, parse_mapping
    from alignscope.models.device import load_placed, placement_from_args
    from alignscope.rewards.sources import load_reward_source
    from alignscope.rollout.backend import sampling_engine
    from alignscope.rollout.options import rollout_options_from_args

    placement, rollout = placement_from_args(args), rollout_options_from_args(args)  # a bad device fails before any work
    out = check_rm_args(args)
    prompts = [ex.prompt for ex in load_data(args.prompts, mapping=parse_mapping(args.map), as_chat=args.as_chat).examples]
    prompts = prompts[: args.limit]
    pairs = load_data(args.pairs, as_chat=args.as_chat).examples if args.pairs else None
    policy, tok = load_placed(args.policy, placement)
    rms = {spec: load_reward_source(spec, placement=placement, timeout=args.reward_timeout) for spec in args.rm}
    gold = load_reward_source(args.gold, placement=placement, timeout=args.reward_timeout) if args.gold else None
    rank, world, barrier = distributed()

    def chunk(k: int, start: int, stop: int) -> dict:
        return sample_and_reward(rms, policy, tok, prompts[start:stop], n=args.n, gold=gold, max_new_tokens=args.max_new_tokens,
                                 temperature=1.0, seed=args.seed * 1_000_003 + k, backend=engine,
                                 progress=f"sampling prompts {start + 1}-{stop} of {len(prompts)} x {args.n}" if rank == 0 else None)

    settings = {"prompts": args.prompts, "policy": args.policy, "rm": args.rm, "gold": args.gold, "n": args.n, "limit": args.limit,
                "max_new_tokens": args.max_new_tokens, "seed": args.seed, "as_chat": args.as_chat, "map": args.map,
                "dtype": placement.dtype_name, "backend": rollout.rollout_backend}
    chunks = out / CHUNKS_DIR
    with sampling_engine(rollout, policy, tok, placement, args.seed) as engine:
        sampled = run_in_chunks(len(prompts), args.chunk_prompts, chunks, settings, chunk, resume=args.resume, rank=rank,
                                world=world, barrier=barrier)
    if sampled is None:  # another process of a distributed run: the main one writes the results
        return 0
    result = audit_reward_models(rms, policy, tok, prompts, n=args.n, pairs=pairs, gold=gold, max_new_tokens=args.max_new_tokens,
                                 threshold=args.threshold, seed=args.seed, sampled=sampled)
    write_outputs(result, out, command_line(args, "audit rm"))
    finish(chunks)
    print(format_table(result))
    print(f"written: {out / rf.TEACHER_TABLE}, {out / rf.REWARD_VARIANCE}, {out / rf.SAMPLES} ({rf.ROW_CONVENTION} of --prompts)")
    return 0
