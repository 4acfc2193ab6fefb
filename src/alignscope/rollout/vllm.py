"""vLLM rollouts colocated with training, and the weight sync that keeps the engine on the current policy.

`VLLMGenerator` has `generate`'s interface (a `Rollout`, each drawn token's log-probability under
the sampling distribution) and talks to the engine through five calls only (`Engine`): generate
from token ids, load named weights, sleep, wake up, reset the prefix cache. `VLLMEngine` is
those calls on vLLM's `LLM`; tests put a stand-in behind the same five calls.

Weight sync follows vLLM's own loaders: a model's `load_weights` takes (name, tensor) pairs under
the Hugging Face checkpoint names (`model.layers.0.self_attn.q_proj.weight`, ...) and itself loads
q/k/v into the shards of its fused `qkv_proj` and gate/up into `gate_up_proj`; it skips rotary
buffers and, for tied embeddings, `lm_head`. So the policy's parameters are sent under their
checkpoint names, with wrapper prefixes (DDP, activation checkpointing, peft) taken off. With LoRA
the adapter is merged into the base weights, only the adapted layers' merged weights are sent,
and the adapter is unmerged again (the policy trains on). After a level-2 sleep, which discards
the engine's weights, every weight is sent.

vLLM is imported only inside `VLLMEngine`; nothing here runs on a machine without it unless a
stand-in engine is passed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from alignscope.data.records import Prompt
from alignscope.errors import ConfigError, ModelError
from alignscope.rollout.generation import (
    GenerationConfig,
    Rollout,
    encode_prompts,
    stop_token_ids,
    trim_at_stop,
)
from alignscope.rollout.options import RolloutOptions


@dataclass(frozen=True)
class SamplingSpec:
    """What the engine is asked to sample (vLLM's `SamplingParams` fields of the same meaning)."""

    n: int
    temperature: float  # 0 = greedy
    top_p: float
    max_tokens: int
    seed: int | None
    stop_token_ids: tuple[int, ...]


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # of each drawn token, under the distribution it was drawn from


class Engine(Protocol):
    """The narrow interface between alignscope and a generation engine."""

    def generate(self, prompt_token_ids: list[list[int]], spec: SamplingSpec) -> list[list[Completion]]: ...
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None: ...
    def sleep(self) -> None: ...
    def wake_up(self, tags: list[str] | None = None) -> None: ...
    def reset_prefix_cache(self) -> None: ...


def _require_vllm():
    try:
        import vllm
    except ImportError:
        raise ModelError(
            "vLLM is not installed", "pip install 'alignscope[vllm]' on a machine with a supported GPU, or use rollout_backend=hf"
        ) from None
    return vllm


class VLLMEngine:
    """`Engine` on vLLM's `LLM`, colocated with training: the engine's worker lives in this process, so weights
    are loaded by direct calls (no copy through another process), as TRL's colocate mode does."""

    def __init__(self, model_path: str, *, options: RolloutOptions, dtype: str = "auto", seed: int = 0, **engine_kw):
        vllm = _require_vllm()
        kw = dict(
            model=model_path, tensor_parallel_size=options.vllm_tensor_parallel_size,
            gpu_memory_utilization=options.vllm_gpu_memory_utilization, enable_sleep_mode=options.vllm_enable_sleep_mode,
            dtype=dtype, seed=seed,
            # log-probs after temperature and top-p, the distribution tokens are drawn from (as `generate` reports)
            logprobs_mode="processed_logprobs",
        )
        if options.vllm_max_model_len:
            kw["max_model_len"] = options.vllm_max_model_len
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            kw["distributed_executor_backend"] = "external_launcher"  # one engine per training process (torchrun, accelerate)
        else:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # keep the worker in this process
        kw.update(engine_kw)
        try:
            self.llm = vllm.LLM(**kw)
        except TypeError as e:
            raise ModelError(f"this vLLM ({vllm.__version__}) does not take an option alignscope passes: {e}",
                             "install vLLM >= 0.10.2 (logprobs_mode, sleep mode and external_launcher)") from None
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompt_token_ids: list[list[int]], spec: SamplingSpec) -> list[list[Completion]]:
        from vllm import SamplingParams

        params = SamplingParams(n=spec.n, temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_tokens,
                                seed=spec.seed, stop_token_ids=list(spec.stop_token_ids), logprobs=0)
        results = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_token_ids], params, use_tqdm=False)
        return [[Completion(list(c.token_ids), [c.logprobs[k][t].logprob for k, t in enumerate(c.token_ids)])
                 for c in res.outputs] for res in results]

    def _model(self) -> nn.Module | None:
        """The vLLM model object in this process (V1 engine without multiprocessing, or external_launcher)."""
        executor = getattr(self.llm.llm_engine, "model_executor", None)
        worker = getattr(executor, "driver_worker", None)
        worker = getattr(worker, "worker", worker)
        return getattr(getattr(worker, "model_runner", None), "model", None)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        model = self._model()
        if model is not None:
            model.load_weights(weights)
        elif hasattr(self.llm, "apply_model"):  # the worker is in another process: the tensors travel pickled
            batch = [(n, t.detach().cpu()) for n, t in weights]
            self.llm.apply_model(lambda m: m.load_weights(batch))
        else:
            raise ModelError("this vLLM exposes neither its model in-process nor LLM.apply_model, so weights cannot be synced",
                             "install vLLM >= 0.10.2")

    def sleep(self) -> None:
        self.llm.sleep(level=2)

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.llm.wake_up(tags=tags)

    def reset_prefix_cache(self) -> None:
        self.llm.reset_prefix_cache()


def _strip_wrappers(model: nn.Module) -> nn.Module:
    """The causal LM (or its peft wrapper) under DDP / accelerate and alignscope's `Scorer`."""
    from alignscope.models.scoring import Scorer

    while True:
        if isinstance(model, Scorer):
            model = model.lm
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def _checkpoint_name(name: str) -> str:
    for prefix in ("_checkpoint_wrapped_module.", "_orig_mod.", "modules_to_save.default."):
        name = name.replace(prefix, "")
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


def policy_weights(model: nn.Module, *, everything: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) of the weights training can have changed; `everything` = all of them.

    Full fine-tuning: every parameter that requires grad. LoRA (peft): the adapter is merged into the
    base weights for the duration of the iteration and only the adapted layers' merged weights (and
    modules_to_save) are yielded; the adapter is unmerged when the iteration ends.
    """
    lm = _strip_wrappers(model)
    if not hasattr(lm, "peft_config"):
        for name, p in lm.named_parameters():
            if everything or p.requires_grad:
                yield _checkpoint_name(name), p.detach()
        return
    lm.merge_adapter()
    try:
        for name, p in lm.named_parameters():
            if "lora_" in name or "original_module" in name:
                continue
            if everything or ".base_layer." in name or "modules_to_save" in name:
                yield _checkpoint_name(name), p.detach()
    finally:
        lm.unmerge_adapter()


def _stops(model_path: str, tokenizer) -> tuple[int, ...]:
    from transformers import GenerationConfig as HFGenerationConfig

    class _Holder:
        generation_config = None

    holder = _Holder()
    try:
        holder.generation_config = HFGenerationConfig.from_pretrained(model_path)
    except (OSError, ValueError):
        pass
    return stop_token_ids(holder, tokenizer)


def engine_folder(model: nn.Module | str, tokenizer, workdir: Path) -> str:
    """A folder vLLM can load: a model spec's own folder, or `model` (in memory, a GGUF, a lab model) saved into `workdir`."""
    if isinstance(model, str):
        if (Path(model).expanduser() / "config.json").is_file():
            return str(Path(model).expanduser())
        from alignscope.models.loading import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(model)
    lm = _strip_wrappers(model)
    if hasattr(lm, "peft_config"):
        raise ModelError("the vLLM engine is built from the base model, and this is a peft model",
                         "build the VLLMGenerator before wrapping the model with LoRA")
    lm.save_pretrained(workdir)
    tokenizer.save_pretrained(workdir)
    return str(workdir)


class VLLMGenerator:
    """`generate`'s interface on a vLLM engine, with `sync(policy)` to load the policy's current weights.

    Construct it from a model folder, or with `for_model` from a spec or an in-memory model; in RL,
    call `sync(policy)` after every optimizer step. `engine` replaces vLLM (tests use a stand-in).
    """

    def __init__(self, model_path: str | None = None, *, tokenizer=None, options: RolloutOptions | None = None,
                 dtype: str = "auto", seed: int = 0, engine: Engine | None = None, **engine_kw):
        self.options = options or RolloutOptions(rollout_backend="vllm")
        self._workdir: tempfile.TemporaryDirectory | None = None
        if engine is None:
            if model_path is None:
                raise ConfigError("VLLMGenerator needs a model folder or an engine")
            engine = VLLMEngine(model_path, options=self.options, dtype=dtype, seed=seed, **engine_kw)
            tokenizer = tokenizer or engine.tokenizer
        if tokenizer is None:
            raise ConfigError("VLLMGenerator with a given engine needs the tokenizer")
        self.engine, self.tokenizer = engine, tokenizer
        self.stop_ids = _stops(model_path, tokenizer) if model_path else stop_token_ids(object(), tokenizer)
        self.weights_discarded = False
        self.synced_names: list[str] = []

    @classmethod
    def for_model(cls, model: nn.Module | str, tokenizer=None, *, options: RolloutOptions | None = None,
                  dtype: str = "auto", seed: int = 0, **engine_kw) -> VLLMGenerator:
        """An engine on `model`'s weights: a spec's folder as it is, anything else saved to a temporary folder first."""
        workdir = tempfile.TemporaryDirectory(prefix="alignscope-vllm-")
        try:
            path = engine_folder(model, tokenizer, Path(workdir.name))
            gen = cls(path, options=options, dtype=dtype, seed=seed, **engine_kw)
        except BaseException:
            workdir.cleanup()
            raise
        gen._workdir = workdir
        return gen

    def sync(self, policy: nn.Module) -> list[str]:
        """Load the policy's current weights into the engine (after an optimizer step); returns the names sent."""
        if self.options.vllm_enable_sleep_mode:
            self.engine.wake_up(["weights"])
        names: list[str] = []

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in policy_weights(policy, everything=self.weights_discarded):
                names.append(name)
                yield name, tensor

        with torch.no_grad():
            self.engine.load_weights(stream())
        self.engine.reset_prefix_cache()  # cached prompt states were computed by the old weights
        self.weights_discarded = False
        self.synced_names = names
        return names

    def sleep(self) -> None:
        """Free the engine's weights and KV cache until the next `sync` (sleep mode only)."""
        if self.options.vllm_enable_sleep_mode:
            self.engine.sleep()
            self.weights_discarded = True

    def generate(self, prompts: list[Prompt], cfg: GenerationConfig, policy: nn.Module | None = None) -> Rollout:
        """Sample `cfg.n` responses per prompt; with sleep mode the engine sleeps again afterwards.

        After a sleep the engine has no weights: pass the `policy` to send them first."""
        if self.weights_discarded:
            if policy is None:
                raise ModelError("the vLLM engine's weights were freed by sleep mode", "pass the policy (generate(..., policy=model))"
                                 " or call sync(policy) before sampling")
            self.sync(policy)
        if self.options.vllm_enable_sleep_mode:
            self.engine.wake_up(["kv_cache"])
        spec = SamplingSpec(n=cfg.n, temperature=cfg.temperature if cfg.do_sample else 0.0,
                            top_p=cfg.top_p if cfg.do_sample else 1.0, max_tokens=cfg.max_new_tokens, seed=cfg.seed,
                            stop_token_ids=self.stop_ids)
        encoded = encode_prompts(self.tokenizer, prompts)
        results = self.engine.generate(encoded, spec)
        self.sleep()
        stops = self.stop_ids
        out = Rollout([], [], [], [], [], stop_ids=stops)
        for i, completions in enumerate(results):
            for c in completions:
                toks = trim_at_stop(list(c.token_ids), stops)
                out.prompt_ids.append(list(encoded[i]))
                out.response_ids.append(toks)
                out.texts.append(self.tokenizer.decode(toks[:-1] if toks and toks[-1] in stops else toks, skip_special_tokens=True))
                out.prompt_index.append(i)
                out.logprobs.append(torch.tensor(c.logprobs[: len(toks)], dtype=torch.float32))
        return out

    def close(self) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
