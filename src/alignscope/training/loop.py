"""The training loop shared by every offline method (SFT, RM, DPO family, KTO, ranking).

Read it top to bottom: load data and model, let the method (`training.methods`) tokenize its
items once, precompute the reference log-probs it needs (cached on disk), then a plain loop of
micro-batches -> method loss -> backward -> clip -> step, with evaluation, the displacement
monitor, metrics, NaN guards and atomic checkpoints. Nothing here depends on which method runs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from alignscope import run_files as rf
from alignscope.atomic import atomic_path, write_text
from alignscope.errors import ConfigError, TrainingError
from alignscope.models.scoring import (
    check_context,
    check_vocab,
    largest_id,
    pad_token_id,
    score_sequences,
    scoring_batches,
)
from alignscope.training import checkpoint as ckpt
from alignscope.training.config import TrainConfig
from alignscope.training.items import Item
from alignscope.training.methods import Context, method_for
from alignscope.models.device import Placement, load_placed, load_placed_model, use_device
from alignscope.training.lora import add_lora, save_adapter_and_merge
from alignscope.training.methods.base import Seq
from alignscope.training.metrics import MetricsLogger
from alignscope.models.fsdp import sharded_forwards, shards_model, whole_tensor
from alignscope.training.monitor import evaluate, log_eval_point
from alignscope.training.run_dir import owns_output_dir
from alignscope.training.sharding import full_state, load_full_state
from alignscope.training.zero import (
    deepspeed_backward,
    deepspeed_grad_norm,
    deepspeed_launch,
    deepspeed_state,
    load_deepspeed_state,
    unpartitioned_loading,
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_examples(cfg: TrainConfig, source: Any):
    """Records of one data source; with on_error=skip, rejected rows go to the run folder (never beside the data)."""
    from alignscope.data.loader import load_data

    rejects = Path(cfg.output_dir) / f"rejects-{Path(str(source)).name.split('.', 1)[0]}.jsonl"  # data.jsonl.gz -> rejects-data.jsonl
    return load_data(source, format=cfg.format, mapping=cfg.map or None, on_error=cfg.on_error, rejects_path=rejects,
                     as_chat=cfg.as_chat).examples


def build_policy(cfg: TrainConfig, texts: list[str], placement: Placement | None = None):
    """(model, tokenizer) on the run's device and dtype (the config's when no placement is given).
    'tiny' builds a random 2-layer Llama with a BPE tokenizer trained on the data."""
    return load_placed(cfg.model, placement or cfg.placement(), texts=texts, trust_remote_code=cfg.trust_remote_code, seed=cfg.seed)


def _texts(examples) -> list[str]:
    from alignscope.data.records import prompt_text

    out = []
    for ex in examples:
        out.append(prompt_text(ex.prompt))
        for name in ("chosen", "rejected", "completion"):
            if hasattr(ex, name):
                out.append(getattr(ex, name))
        out.extend(getattr(ex, "completions", []))
    return out


def _fingerprint(model: torch.nn.Module, seqs: list[tuple[list[int], list[int]]], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    with torch.no_grad():
        for name, p in list(model.named_parameters())[:: max(1, len(list(model.parameters())) // 8)]:
            h.update(name.encode())
            h.update(np.float64(whole_tensor(p).double().sum().item()).tobytes())
    for p, r in seqs:
        h.update(np.asarray(p + [-1] + r + [-2], dtype=np.int64).tobytes())
    return h.hexdigest()[:24]


def compute_reference_logps(cfg: TrainConfig, ref_model, per_item: list[list[Seq]], pad_id: int, cache_dir: Path,
                            log, accelerator=None, lockstep: bool = False) -> dict[int, list[float]]:
    """Reference log-probs of each item's sequences (item index -> one per sequence), computed once and cached on disk.

    With several processes (`accelerator`), each scores a contiguous share of the items (a prompt's sequences
    stay together) and the main process joins the shares into the cache, so the pass is split, not repeated.
    `lockstep` (the reference is the policy sharded by FSDP): every process makes as many forwards as the largest
    share needs, since each forward gathers the weights with the others."""
    seqs = [s for item_seqs in per_item for s in item_seqs]
    key = _fingerprint(ref_model, seqs, f"{cfg.model}|{cfg.ref_model}|{cfg.max_length}|{cfg.max_prompt_length}")
    path = cache_dir / f"ref_logps-{key}.safetensors"
    flat = ckpt.load_logps_cache(path, len(seqs), log)  # every process looks before any writes it: they agree
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)

    batch_size = max(cfg.batch_size, 8)

    def score(lo: int, hi: int, forwards: int = 0) -> torch.Tensor:
        if lo == hi and not forwards:
            return torch.zeros(0)
        return score_sequences(
            ref_model, [p for p, _ in seqs[lo:hi]], [r for _, r in seqs[lo:hi]], pad_id=pad_id, batch_size=batch_size,
            progress="reference log-probs" if cfg.progress and rank == 0 else None, share_prompts=cfg.share_prompts,
            padding_free=cfg.padding_free, forwards=forwards,
        ).logps.float().cpu()

    if flat is not None:
        log(f"reference log-probs: loaded {len(flat)} from cache {path}")
    elif world == 1:
        flat = score(0, len(seqs))
        with atomic_path(path) as tmp:
            save_file({"logps": flat.contiguous()}, str(tmp))
    else:
        starts = [0]
        for item_seqs in per_item:
            starts.append(starts[-1] + len(item_seqs))
        cut = [starts[round(k * len(per_item) / world)] for k in range(world + 1)]
        forwards = 0
        if lockstep:
            forwards = max(len(scoring_batches([p for p, _ in seqs[lo:hi]], [r for _, r in seqs[lo:hi]], batch_size))
                           for lo, hi in zip(cut, cut[1:]))
        part_path = path.with_name(f"{path.stem}.part{rank}.safetensors")
        with atomic_path(part_path) as tmp:
            save_file({"logps": score(cut[rank], cut[rank + 1], forwards).contiguous()}, str(tmp))
        accelerator.wait_for_everyone()
        if rank == 0:
            parts = [path.with_name(f"{path.stem}.part{k}.safetensors") for k in range(world)]
            joined = torch.cat([load_file(str(q))["logps"] for q in parts])
            with atomic_path(path) as tmp:
                save_file({"logps": joined.contiguous()}, str(tmp))
            for q in parts:
                q.unlink()
            log(f"reference log-probs: {len(seqs)} sequences scored by {world} processes")
        accelerator.wait_for_everyone()
        flat = load_file(str(path))["logps"]
    out, pos = {}, 0
    for i, item_seqs in enumerate(per_item):
        out[i] = flat[pos : pos + len(item_seqs)].tolist()
        pos += len(item_seqs)
    return out


def step_batches(n_items: int, step: int, steps_per_epoch: int, global_batch: int, seed: int, shuffle: bool,
                 lengths: tuple[int, ...] | None = None) -> list[int]:
    """Item indices of optimizer step `step`: a seeded order per epoch, so resuming is exact.

    With `lengths` (group_by_length), batches hold items of similar length, so little of each batch
    is padding; the batches themselves still come in a random order.
    """
    epoch, k = divmod(step, steps_per_epoch)
    order = _epoch_order(n_items, epoch, steps_per_epoch, global_batch, seed, shuffle, lengths)
    return order[k * global_batch : (k + 1) * global_batch]


LENGTH_WINDOW_BATCHES = 64  # group_by_length sorts windows of this many global batches (as Hugging Face's sampler does)


@functools.lru_cache(maxsize=2)
def _epoch_order(n_items: int, epoch: int, steps_per_epoch: int, global_batch: int, seed: int, shuffle: bool,
                 lengths: tuple[int, ...] | None) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    perm = torch.randperm(n_items, generator=g).tolist() if shuffle else list(range(n_items))
    if lengths is None:
        return perm
    perm = perm[: steps_per_epoch * global_batch]
    window = LENGTH_WINDOW_BATCHES * global_batch
    batches = []
    for w in range(0, len(perm), window):
        ranked = sorted(perm[w : w + window], key=lambda i: -lengths[i])
        batches += [ranked[b : b + global_batch] for b in range(0, len(ranked), global_batch)]
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return [i for b in batches for i in b]


@owns_output_dir
def train(
    cfg: TrainConfig, *, resume: bool = False, train_examples=None, eval_examples=None, model=None, tokenizer=None, log=print
) -> Path:
    """Run one training job; returns the output directory (metrics.jsonl, checkpoints, final/).

    `train_examples`/`eval_examples` (records) and `model`/`tokenizer` (in memory) replace
    `cfg.data`/`cfg.eval_data` and `cfg.model` when given, for programmatic pipelines like the lab.
    """
    from accelerate import Accelerator

    placement = cfg.placement()  # a GPU asked for but absent fails here, before anything is read or written
    use_device(placement)
    accelerator = Accelerator(cpu=placement.device.type == "cpu", mixed_precision=cfg.mixed_precision)
    quiet = log if accelerator.is_main_process else lambda *a: None
    sharded = shards_model(accelerator, f"train {cfg.method}", log=quiet)
    deepspeed = deepspeed_launch(accelerator, f"train {cfg.method}", batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                                 max_grad_norm=cfg.max_grad_norm, log=quiet)
    if deepspeed is not None and cfg.nan_policy == "skip":
        raise ConfigError("nan_policy=skip cannot skip a step under DeepSpeed: its engine clips and steps inside the last "
                          "micro-batch's backward, before alignscope sees the gradient's norm (in fp32 it applies a non-finite one)",
                          "set nan_policy=stop (a non-finite loss or gradient stops the run; the last good checkpoint is kept), "
                          "or train without DeepSpeed")
    skip_hint = "" if deepspeed else ", or set nan_policy=skip"  # what a non-finite step's error suggests
    # FSDP, ZeRO-3: each forward gathers the weights with the other processes, so the reference pass and evaluation
    # run after prepare on every process, with as many forwards on each.
    gathers = sharded or (deepspeed is not None and deepspeed["zero_stage"] == 3)
    is_main = accelerator.is_main_process
    say = log if is_main else (lambda *a, **k: None)
    out_dir = Path(cfg.output_dir)
    seed_everything(cfg.seed)

    # --- data
    examples = train_examples if train_examples is not None else load_examples(cfg, cfg.data)
    if eval_examples is None and cfg.eval_data:
        eval_examples = load_examples(cfg, cfg.eval_data)
    if cfg.max_examples:
        examples = examples[: cfg.max_examples]
        eval_examples = eval_examples[: cfg.max_examples] if eval_examples else eval_examples
    if eval_examples is None and cfg.eval_fraction > 0:
        n_eval = max(1, int(len(examples) * cfg.eval_fraction))
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        eval_examples = [examples[i] for i in order[:n_eval]]
        examples = [examples[i] for i in order[n_eval:]]

    # --- model and the method's items
    method = method_for(cfg)
    if model is None:  # under FSDP on the CPU: accelerate's prepare moves it to the device shard by shard
        with unpartitioned_loading(accelerator):
            model, tokenizer = build_policy(cfg, _texts(examples), replace(placement, device=torch.device("cpu")) if sharded else placement)
    if not gathers:
        model.to(accelerator.device)  # the reference pass below runs before accelerate's prepare, on the run's device
    pad_id = pad_token_id(tokenizer)
    items, stats = method.items(examples, tokenizer)
    say(f"tokenized: {stats.summary()}")
    eval_items: list[Item] = method.eval_items(eval_examples, tokenizer) if eval_examples else []
    if cfg.gradient_checkpointing:
        from alignscope.models.loading import set_activation_checkpointing

        set_activation_checkpointing(model, True)
    if cfg.lora is not None:
        model = add_lora(model, cfg)

    # Checks that need only the tokens come before any compute or output (no reference cache, no run folder).
    check_context(model, max((len(it.prompt_ids) + len(r) for it in items + eval_items for r in it.responses), default=0))
    check_vocab(model, max([pad_id] + [largest_id([it.prompt_ids], it.responses) for it in items + eval_items]),
                len(tokenizer) if hasattr(tokenizer, "__len__") else None)
    if method.needs_reference and cfg.ref_cache_dir:
        cache = Path(cfg.ref_cache_dir)
        blocker = next((q for q in [cache, *cache.parents] if q.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise ConfigError(f"ref_cache_dir '{cache}' " + ("is a file" if blocker == cache else f"lies under '{blocker}', which is a file")
                              + ", not a folder", "give ref_cache_dir a folder (it is created), or leave it unset for OUTPUT_DIR/ref_cache")
    world = accelerator.num_processes
    if sharded:
        say(f"FSDP: the model is sharded over {world} processes (weights, gradients and optimizer state)")
    if deepspeed is not None:
        say(f"DeepSpeed ZeRO-{deepspeed['zero_stage']}: partitioned over {world} processes ("
            + ("weights, " if gathers else "") + "gradients and optimizer state)")
    global_batch = cfg.batch_size * cfg.grad_accum * world
    if len(items) < global_batch:
        raise ConfigError(
            f"the dataset has {len(items)} training items, fewer than one global batch ({global_batch} = "
            f"batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} x {world} processes)",
            "lower batch_size or grad_accum, or add data",
        )

    # --- reference log-probs (before any update: the initial policy is the default reference)
    def reference_pass(ref_model, lockstep: bool) -> tuple[dict | None, dict | None]:
        cache = Path(cfg.ref_cache_dir or out_dir / "ref_cache")
        train_ref = compute_reference_logps(cfg, ref_model, method.reference_sequences(items), pad_id, cache, say, accelerator, lockstep)
        if not eval_items:
            return train_ref, None
        pairs = [[(it.prompt_ids, r) for r in it.responses[:2]] for it in eval_items]  # the monitor's implicit reward
        return train_ref, compute_reference_logps(cfg, ref_model, pairs, pad_id, cache, say, accelerator, lockstep)

    ref_logps = eval_ref = None
    if method.needs_reference and cfg.ref_model:
        with unpartitioned_loading(accelerator):
            ref = load_placed_model(cfg.ref_model, placement, trust_remote_code=cfg.trust_remote_code, seed=cfg.seed)
        ref_logps, eval_ref = reference_pass(ref, lockstep=False)
        del ref
    elif method.needs_reference and not gathers:
        ref_logps, eval_ref = reference_pass(model, lockstep=False)

    trained = method.wrap(model)

    # --- optimisation
    steps_per_epoch = len(items) // global_batch
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    params = [p for p in trained.parameters() if p.requires_grad]
    # The fused kernel (CPU and CUDA) replaces a Python loop over parameter tensors: the same update, faster.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    from transformers import get_scheduler

    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps), num_training_steps=total_steps)
    trained, optimizer = accelerator.prepare(trained, optimizer)
    if method.needs_reference and ref_logps is None:  # FSDP, ZeRO-3: the policy is scored partitioned, after prepare
        with sharded_forwards(trained):
            ref_logps, eval_ref = reference_pass(accelerator.unwrap_model(trained).lm, lockstep=True)
    ctx = Context(trained, cfg, pad_id, ref_logps)

    # --- resume
    start_step, skipped = 0, 0
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / rf.CONFIG, json.dumps(asdict(cfg), indent=1, default=str))
    if resume:
        # DeepSpeed's own loader checks its state (a ZeRO-3 model's parameters are empty placeholders here).
        found = ckpt.load_latest(out_dir, log=say, model=None if deepspeed else accelerator.unwrap_model(trained),
                                 optimizer=None if deepspeed else optimizer, deepspeed=deepspeed)
        if found is None:
            say(f"no complete checkpoint in {out_dir}; starting from step 0")
        else:
            tensors, trainer_state, state = found
            if deepspeed:
                load_deepspeed_state(trained, out_dir / f"checkpoint-{state['step']}")
            elif sharded:  # every process reads the whole state and keeps its shards
                load_full_state(trained, optimizer, tensors, trainer_state["optimizer"])
            else:
                ckpt.load_model_tensors(accelerator.unwrap_model(trained), tensors)
                optimizer.load_state_dict(trainer_state["optimizer"])
            scheduler.load_state_dict(trainer_state["scheduler"])
            ckpt.set_rng_state(state["rng"], trainer_state["torch_rng"])
            start_step, skipped = state["step"], state.get("skipped_batches", 0)
            say(f"resumed from step {start_step} of {total_steps}")
    metrics_log = MetricsLogger(out_dir, enabled=is_main, report_to=cfg.report_to, truncate_after=start_step if resume else 0)

    def evaluation() -> dict[str, Any]:
        """The monitor's scores now. Under FSDP and ZeRO-3 every process makes the same forwards (each gathers the
        weights with the others) and only the main one logs; otherwise the main process alone evaluates."""
        with sharded_forwards(trained):
            return evaluate(accelerator.unwrap_model(trained).lm, eval_items, eval_ref, pad_id, cfg.beta, max(cfg.batch_size, 8))

    eval_start = start_probs = None
    eval_every = cfg.eval_steps
    if eval_items and (is_main or gathers):
        start_file, probs_file = out_dir / rf.EVAL_START, out_dir / rf.EVAL_START_PROBS
        if start_step > 0 and start_file.exists():
            eval_start = json.loads(start_file.read_text())
            start_probs = load_file(str(probs_file))["probs"] if probs_file.exists() else None
        else:
            eval_start = evaluation()
            start_probs = eval_start.pop("first_token_probs", None)
            if start_probs is not None and is_main:
                with atomic_path(probs_file) as tmp:
                    save_file({"probs": start_probs}, str(tmp))
            if is_main:
                write_text(start_file, json.dumps(eval_start))
                metrics_log.eval_point(0, eval_start, eval_start)

    def save_checkpoint(step_no: int) -> dict:
        """checkpoint-<step_no>, written by the main process; under FSDP and DeepSpeed every process first gathers
        the whole state (returned, so the final save reuses it), and DeepSpeed writes its own beside it."""
        accelerator.wait_for_everyone()
        if deepspeed:
            whole = deepspeed_state(accelerator, trained, out_dir / f".tmp-deepspeed-{step_no}")
        else:
            whole = full_state(trained, optimizer) if sharded else {}
        if is_main:
            state = {"step": step_no, "skipped_batches": skipped, **({"deepspeed": deepspeed} if deepspeed else {})}
            ckpt.save_checkpoint(out_dir, step_no, accelerator.unwrap_model(trained), optimizer, scheduler, state, cfg.keep_last, **whole)
        return whole

    # --- the loop
    shuffle = method.shuffle  # a curriculum keeps its order, so it is never regrouped either
    lengths = tuple(len(it.prompt_ids) + sum(map(len, it.responses)) for it in items) if cfg.group_by_length and shuffle else None
    rank = accelerator.process_index
    bar = tqdm(total=total_steps, initial=start_step, desc=f"train {cfg.method}", disable=not (cfg.progress and is_main), unit="step")
    trained.train()
    t0 = time.time()
    for step in range(start_step, total_steps):
        idx_global = step_batches(len(items), step, steps_per_epoch, global_batch, cfg.seed, shuffle, lengths)
        sums: dict[str, float] = {}
        optimizer.zero_grad(set_to_none=True)
        for m in range(cfg.grad_accum):
            lo = (m * world + rank) * cfg.batch_size
            idx = idx_global[lo : lo + cfg.batch_size]
            sync = contextlib.nullcontext() if m == cfg.grad_accum - 1 else accelerator.no_sync(trained)
            with sync, accelerator.autocast():
                loss, metrics = method.loss(ctx, [items[i] for i in idx], idx)
                if not torch.isfinite(loss):
                    if cfg.nan_policy == "stop":
                        raise TrainingError(
                            f"loss is {loss.item()} at step {step + 1}, micro-batch {m}, items {idx}",
                            f"inspect those items (empty or extreme responses?), lower lr{skip_hint}; "
                            f"the last good checkpoint in {out_dir} is kept",
                        )
                if deepspeed:
                    deepspeed_backward(trained, loss / cfg.grad_accum, boundary=m == cfg.grad_accum - 1)
                else:
                    accelerator.backward(loss / cfg.grad_accum)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) / cfg.grad_accum
        if deepspeed:  # the engine has clipped (by the config's gradient_clipping) and stepped
            grad_norm = deepspeed_grad_norm(trained)
        else:  # With no clipping the bound is infinite: the grads are scaled by 1 and the norm is still the whole model's.
            bound = math.inf if cfg.max_grad_norm is None else cfg.max_grad_norm
            grad_norm = float(accelerator.clip_grad_norm_(trained.parameters(), bound))
        finite = math.isfinite(grad_norm) and all(math.isfinite(v) for v in sums.values())
        if not finite:
            if cfg.nan_policy == "stop":
                raise TrainingError(
                    f"non-finite loss or gradient at step {step + 1} (grad norm {grad_norm}), items {idx_global}",
                    f"lower lr, check those items{skip_hint}; the last good checkpoint in {out_dir} is kept",
                )
            skipped += 1
            optimizer.zero_grad(set_to_none=True)
        else:
            optimizer.step()
        scheduler.step()
        reduced = {k: float(accelerator.reduce(torch.tensor(v, device=accelerator.device), reduction="mean")) for k, v in sums.items()}
        done = step + 1
        if is_main and (done % cfg.logging_steps == 0 or done == total_steps):
            row = {"step": done, "epoch": round(done / steps_per_epoch, 4), **reduced, "grad_norm": grad_norm, "learning_rate": scheduler.get_last_lr()[0]}
            if skipped:
                row["skipped_batches"] = skipped
            metrics_log.log(row)
            bar.set_postfix(loss=f"{reduced.get('loss', float('nan')):.4f}")
        if eval_start is not None and ((eval_every and done % eval_every == 0) or done == total_steps):
            now = evaluation()
            if is_main:
                log_eval_point(metrics_log, done, now, eval_start, start_probs, tokenizer)
            trained.train()
        if cfg.save_steps and done % cfg.save_steps == 0 and done < total_steps:
            save_checkpoint(done)
        bar.update(1)
    bar.close()

    whole = save_checkpoint(total_steps)
    if is_main:
        final = accelerator.unwrap_model(trained)
        with ckpt.atomic_folder(out_dir / "final", f"checkpoint-{total_steps}") as folder:
            tensors = whole.get("tensors")
            if cfg.lora is not None:
                lm_state = None if tensors is None else {k.removeprefix("lm."): v for k, v in tensors.items() if k.startswith("lm.")}
                final.lm, merged = save_adapter_and_merge(final.lm, folder / "adapter", lm_state)
                if merged is not None:  # FSDP, DeepSpeed: the merged LM's tensors beside the rest (a reward model's head)
                    tensors = {**{k: v for k, v in tensors.items() if not k.startswith("lm.")}, **{f"lm.{k}": v for k, v in merged.items()}}
            method.save(final, folder, tensors)
            tokenizer.save_pretrained(folder)
        metrics_log.close()
        say(f"done: {total_steps} steps in {time.time() - t0:.1f}s; metrics in {out_dir / 'metrics.jsonl'}, model in {out_dir / 'final'}")
    # accelerate's documented end: every process tears the process group down together (as train_rl does)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out_dir
