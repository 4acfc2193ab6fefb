"""A stand-in for vLLM behind alignscope's `Engine` interface, for CPU tests of the weight sync.

It loads weights as vLLM's Llama does: its own parameters are stored fused (`qkv_proj` =
[q; k; v], `gate_up_proj` = [gate; up]), `load_weights` takes Hugging Face checkpoint names and
writes each tensor into its shard of the fused parameter, skips `lm_head` when embeddings are
tied, and raises KeyError on any other name (vLLM's `params_dict[name]`). It samples from those
fused parameters, so a generation after a sync shows which weights arrived. `sleep()` discards
the weights (level 2: NaN) as vLLM's does.
"""

from __future__ import annotations

import copy

import torch

from alignscope.rollout.vllm import Completion, SamplingSpec

STACKED = [(".qkv_proj", ".q_proj", 0), (".qkv_proj", ".k_proj", 1), (".qkv_proj", ".v_proj", 2),
           (".gate_up_proj", ".gate_proj", 0), (".gate_up_proj", ".up_proj", 1)]


class StandInEngine:
    def __init__(self, hf_model):
        self.model = copy.deepcopy(hf_model).eval().requires_grad_(False)  # the module that runs; weights come from `params`
        self.tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        self.params: dict[str, torch.Tensor] = {}
        self.shards: dict[str, list[int]] = {}  # fused name -> row sizes of its shards
        for name, p in self.model.named_parameters():
            fused = self._fused(name)
            if fused is None:
                self.params[name] = p.detach().clone()
                continue
            target, k = fused
            self.shards.setdefault(target, [0, 0, 0] if ".qkv_proj" in target else [0, 0])[k] = p.shape[0]
        for target, sizes in self.shards.items():
            cols = self.model.get_parameter(self._shard_name(target, 0)).shape[1]
            self.params[target] = torch.full((sum(sizes), cols), float("nan"))
        self._copy_in_initial(hf_model)
        self.received: list[str] = []
        self.events: list[str] = []
        self.prompts_seen = 0

    @staticmethod
    def _fused(name: str) -> tuple[str, int] | None:
        for fused, part, k in STACKED:
            if part in name:
                return name.replace(part, fused), k
        return None

    @staticmethod
    def _shard_name(fused: str, k: int) -> str:
        for f, part, j in STACKED:
            if f in fused and j == k:
                return fused.replace(f, part)
        raise KeyError(fused)

    def _copy_in_initial(self, hf_model) -> None:
        for name, p in hf_model.named_parameters():
            self._load_one(name, p.detach())

    def _load_one(self, name: str, tensor: torch.Tensor) -> None:
        if self.tied and name.startswith("lm_head."):
            return
        fused = self._fused(name)
        if fused is None:
            self.params[name].copy_(tensor)  # KeyError for a name the model does not have
            return
        target, k = fused
        sizes = self.shards[target]
        start = sum(sizes[:k])
        self.params[target][start : start + sizes[k]].copy_(tensor)

    # the Engine interface
    def load_weights(self, weights) -> None:
        for name, tensor in weights:
            self._load_one(name, tensor)
            self.received.append(name)
        self.events.append("load_weights")

    def sleep(self) -> None:
        for t in self.params.values():
            t.fill_(float("nan"))
        self.events.append("sleep")

    def wake_up(self, tags=None) -> None:
        self.events.append(f"wake_up:{','.join(tags or [])}")

    def reset_prefix_cache(self) -> None:
        self.events.append("reset_prefix_cache")

    def _unfused_state(self) -> dict[str, torch.Tensor]:
        state = {}
        for name, t in self.params.items():
            if name in self.shards:
                pieces = torch.split(t, self.shards[name])
                for k, piece in enumerate(pieces):
                    state[self._shard_name(name, k)] = piece
            else:
                state[name] = t
        if self.tied:
            state.pop("lm_head.weight", None)
        return state

    @torch.no_grad()
    def generate(self, prompt_token_ids: list[list[int]], spec: SamplingSpec) -> list[list[Completion]]:
        self.prompts_seen += len(prompt_token_ids)
        state = self._unfused_state()
        for name, p in self.model.named_parameters():
            p.copy_(state[name])
        g = torch.Generator().manual_seed(spec.seed or 0)
        out = []
        for ids in prompt_token_ids:
            comps = []
            for _ in range(spec.n):
                seq, toks, lps = list(ids), [], []
                for _ in range(spec.max_tokens):
                    logits = self.model(torch.tensor([seq])).logits[0, -1].float()
                    if spec.temperature == 0:
                        t = int(logits.argmax())
                        lp = torch.log_softmax(logits, -1)
                    else:
                        lp = torch.log_softmax(logits / spec.temperature, -1)
                        t = int(torch.multinomial(lp.exp(), 1, generator=g))
                    toks.append(t)
                    lps.append(float(lp[t]))
                    seq.append(t)
                    if t in spec.stop_token_ids:
                        break
                comps.append(Completion(toks, lps))
            out.append(comps)
        return out
