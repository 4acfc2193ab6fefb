"""Reward sources behind one interface: `source(prompts, responses) -> float32 tensor [N]`.

RL, best-of-n, prompt selection and the RM audit only see this interface, so a Python function,
a reward model (an alignscope RM folder or a Hugging Face sequence classifier), the implicit
reward of a DPO policy, or an ensemble of these are interchangeable.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from alignscope.data.records import Prompt
from alignscope.data.tokenize import encode_response, render_prompt
from alignscope.errors import AlignscopeError, ConfigError, ModelError, RewardError, did_you_mean
from alignscope.losses.reward import ENSEMBLE_AGGREGATIONS, aggregate_ensemble
from alignscope.models.device import Placement
from alignscope.models.scoring import pad_token_id

RewardFn = Callable[[list[Prompt], list[str]], Any]


class RewardSource(ABC):
    """Scores N (prompt, response) pairs at once; batching is the source's business."""

    @abstractmethod
    def __call__(self, prompts: list[Prompt], responses: list[str]) -> torch.Tensor:
        """float32 rewards [N], one per (prompt, response), all finite."""


def _check_lengths(prompts: Sequence[Prompt], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses: pass one prompt per response")


def as_rewards(values: Any, n: int, where: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Validate what a reward source returned: n finite numbers, as a CPU tensor (float32 for training)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    try:
        r = torch.as_tensor(values, dtype=dtype).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"reward {where} returned something that is not a list of numbers ({e})", "return one float per response") from None
    if r.numel() != n:
        raise ConfigError(f"reward {where} returned {r.numel()} values for {n} responses", "return one float per (prompt, response)")
    if not bool(torch.isfinite(r).all()):
        bad = int((~torch.isfinite(r)).sum())
        raise ConfigError(f"reward {where} returned {bad} non-finite value(s) (NaN or inf)", "make the reward finite for every response")
    return r


def call_reward(fn: Callable, prompts: Sequence[Prompt], responses: Sequence[str], where: str = "") -> torch.Tensor:
    """Rewards of (prompt, response) pairs from any reward source, validated, float64 for the diagnostics."""
    return as_rewards(fn(list(prompts), list(responses)), len(responses), where or getattr(fn, "__name__", type(fn).__name__), torch.float64)


def _syntax_error(e: SyntaxError, spec: str) -> ConfigError:
    return ConfigError(f"the reward module of '{spec}' has a syntax error: {e.filename}, line {e.lineno}: {e.msg}",
                       "fix the Python file (python -m py_compile FILE shows the error)")


def _import_failed(e: Exception, spec: str) -> ConfigError:
    """The reward module raised while it was imported (a missing dependency, code at its top level that fails):
    the exception and the module's own line that raised it."""
    if isinstance(e, SyntaxError):
        return _syntax_error(e, spec)
    import traceback

    frames = [f for f in traceback.extract_tb(e.__traceback__) if "importlib" not in f.filename and "<frozen" not in f.filename]
    at = f" at {frames[-1].filename}, line {frames[-1].lineno}" if frames else ""
    fix = (f"install it (pip install {e.name.split('.')[0]}) or remove the import" if isinstance(e, ModuleNotFoundError) and e.name
           else "fix the module so that `import` runs without error (python -c 'import MODULE' shows it)")
    return ConfigError(f"importing the reward module of '{spec}' raised {type(e).__name__}: {e}{at}", fix)


def _import_module(module: str, spec: str):
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise ConfigError(f"reward file '{module}' does not exist (in '{spec}')")
        mod_spec = importlib.util.spec_from_file_location(f"_alignscope_reward_{path.stem}", path)
        mod = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(mod)
        except Exception as e:  # noqa: BLE001 (user code: any failure at import is reported with its line)
            raise _import_failed(e, spec) from None
        return mod
    try:
        return importlib.import_module(module)
    except SyntaxError as e:
        raise _syntax_error(e, spec) from None
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise _import_failed(e, spec) from None
    except Exception as e:  # noqa: BLE001
        raise _import_failed(e, spec) from None
    # Console scripts do not put the working directory on sys.path, yet a reward module next to
    # the user's config is the common case: add it, last (after every installed module), when
    # the module is there.
    cwd, top = os.getcwd(), module.split(".")[0]
    if cwd not in sys.path and (Path(cwd, f"{top}.py").is_file() or Path(cwd, top, "__init__.py").is_file()):
        sys.path.append(cwd)
        importlib.invalidate_caches()
        try:
            return importlib.import_module(module)
        except Exception as e:  # noqa: BLE001
            raise _import_failed(e, spec) from None
    raise ConfigError(f"cannot import '{module}' for reward '{spec}': no module named '{module}'", "check the name, or put its folder on PYTHONPATH")


def import_reward_function(spec: str) -> Callable:
    """Import `module:function` (or `path/to/file.py:function`) with importlib; nothing is evaluated."""
    module, sep, attr = str(spec).rpartition(":")
    if not sep or not module.strip() or not attr.strip():
        raise ConfigError(f"reward function '{spec}': expected module:function", "write e.g. my_rewards:length_reward")
    obj: Any = _import_module(module.strip(), spec)
    for part in attr.strip().split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(f"module '{module}' has no attribute '{attr}'{did_you_mean(part, names)}", "check the function name after the colon")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"'{spec}' is a {type(obj).__name__}, not a function")
    return obj


REWARD_SIGNATURE_FIX = ("define it as def NAME(prompts, responses): return one float per response (a TRL-style "
                        "def NAME(prompts, completions, **kwargs) works too)")


def check_reward_signature(fn: Callable, name: str) -> None:
    """Refuse, at load time, a reward function that cannot be called as fn(prompts, responses)."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins and some C callables have no signature to check
        return
    try:
        sig.bind([], [])
    except TypeError as e:
        raise RewardError(f"reward '{name}' is {getattr(fn, '__name__', type(fn).__name__)}{sig}, which cannot be called as "
                          f"fn(prompts, responses): {e}", REWARD_SIGNATURE_FIX) from None


class FunctionReward(RewardSource):
    """A Python reward function, called once per batch: `fn(prompts, responses) -> N floats`.

    One calling convention only (batch, as TRL's reward functions), so a function that needs
    batching (an API, a verifier pool) gets it and per-pair functions are a one-line list
    comprehension. Given as a callable or as 'module:function' imported with importlib; its
    signature is checked when it is loaded. A call that raises, takes longer than `timeout`
    seconds, or returns anything but one finite number per response is a `RewardError` naming
    the function and, where one response is to blame, its prompt.
    """

    def __init__(self, spec: str | RewardFn, timeout: float | None = None):
        if callable(spec):
            self.fn, self.name = spec, getattr(spec, "__name__", repr(spec))
        else:
            self.fn, self.name = import_reward_function(spec), str(spec)
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"a reward timeout must be positive, got {timeout}", "give the seconds one call may take, e.g. 60")
        self.timeout = timeout
        check_reward_signature(self.fn, self.name)

    def __call__(self, prompts: list[Prompt], responses: list[str]) -> torch.Tensor:
        from alignscope.rewards.weighted import call_with_timeout, failure_site, output_problem, short_prompt

        _check_lengths(prompts, responses)
        where = f"reward '{self.name}'"
        try:
            ok, out = call_with_timeout(lambda: self.fn(list(prompts), list(responses)), self.timeout)
        except TimeoutError:
            raise RewardError(f"{where} took longer than {self.timeout:g}s on {len(responses)} responses "
                              f"(first prompt {short_prompt(prompts[0]) if prompts else '-'})",
                              "make it faster (or batch its work), or allow it more time") from None
        if not ok:
            if isinstance(out, AlignscopeError):
                raise out
            raise RewardError(f"{where} raised {type(out).__name__}: {str(out)[:300]}{failure_site(self.fn, prompts, responses, self.timeout)}",
                              "fix the reward function (call it on that prompt and response to see the error)") from None
        problem = output_problem(out, prompts, responses, where)
        if problem is not None:
            raise RewardError(*problem)
        return as_rewards(out, len(responses), f"'{self.name}'")


Encoding = Literal["auto", "training", "chat"]


class ModelReward(RewardSource):
    """A sequence-classification reward model: one scalar per full (prompt, response) sequence.

    `model` is an alignscope `RewardModel`, a Hugging Face `AutoModelForSequenceClassification`
    with num_labels=1, or any module with `forward(input_ids, attention_mask) -> [B]`.
    `encoding` chooses the text the model reads:
    - "training": the tokens alignscope's RM trainer used (prompt with the generation prompt,
      response with the exact boundary, EOS appended); the default for `RewardModel`, since an
      RM scores best on the format it was trained on;
    - "chat": the format public RMs are trained on; a message-list prompt gets the response as an
      assistant turn, rendered by the chat template (`tokenize=False`), and a text prompt is
      concatenated with the response; the default for every other model.
    Sequences longer than `max_length` keep their last tokens (the score is read at the end).
    """

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 32, max_length: int | None = 1024, encoding: Encoding = "auto"):
        from alignscope.models.reward_model import RewardModel

        if encoding not in ("auto", "training", "chat"):
            raise ConfigError(f"unknown reward-model encoding '{encoding}'", "use auto, training or chat")
        if encoding == "auto":
            encoding = "training" if isinstance(model, RewardModel) else "chat"
        self.model, self.tok, self.batch_size, self.max_length, self.encoding = model, tokenizer, batch_size, max_length, encoding
        self.pad_id = pad_token_id(tokenizer)
        config = getattr(model, "config", None)
        if not isinstance(model, RewardModel) and config is not None and hasattr(config, "pad_token_id"):
            # HF classifiers read the score at the last non-pad token, so they must know the pad id we use.
            if config.pad_token_id is None:
                config.pad_token_id = self.pad_id
            self.pad_id = config.pad_token_id

    def encode(self, prompt: Prompt, response: str) -> list[int]:
        if self.encoding == "training":
            enc = encode_response(self.tok, prompt, response)
            ids = enc.prompt_ids + enc.response_ids
        elif isinstance(prompt, str):
            ids = self.tok(prompt + response)["input_ids"]
        elif getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template(list(prompt) + [{"role": "assistant", "content": response}], tokenize=False)
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tok(render_prompt(self.tok, prompt) + " " + response)["input_ids"]
        if not ids:
            raise ValueError("an empty prompt and response leave nothing for the reward model to read")
        return ids[-self.max_length :] if self.max_length else ids

    @torch.no_grad()
    def __call__(self, prompts: list[Prompt], responses: list[str]) -> torch.Tensor:
        _check_lengths(prompts, responses)
        seqs = [self.encode(p, r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # length buckets: little padding
        device = next(self.model.parameters()).device
        out = torch.zeros(len(seqs))
        was_training = self.model.training
        self.model.eval()
        try:
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                width = max(len(seqs[i]) for i in idx)
                ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
                attn = torch.zeros_like(ids)
                for row, i in enumerate(idx):
                    ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
                    attn[row, : len(seqs[i])] = 1
                res = self.model(input_ids=ids.to(device), attention_mask=attn.to(device))
                scores = getattr(res, "logits", res)
                if scores.dim() == 2:
                    if scores.shape[-1] != 1:
                        raise ModelError(f"the reward model returns {scores.shape[-1]} scores per sequence", "use a sequence classifier with num_labels=1")
                    scores = scores[:, 0]
                out[torch.tensor(idx)] = scores.float().cpu()
        finally:
            self.model.train(was_training)
        return as_rewards(out, len(responses), "model")


class ImplicitReward(RewardSource):
    """β·(log π(y|x) − log π_ref(y|x)): the reward a DPO-trained policy defines (docs/science.md, "Direct preference losses" and "Implicit reward models").

    Scored by the project's one scoring engine (`models.scoring.sequence_logps`), so the
    log-probabilities are exactly those the DPO trainer optimised.
    """

    def __init__(self, policy: torch.nn.Module, reference: torch.nn.Module, tokenizer, beta: float = 0.1, batch_size: int = 16):
        self.policy, self.reference, self.tok, self.beta, self.batch_size = policy, reference, tokenizer, float(beta), batch_size

    def __call__(self, prompts: list[Prompt], responses: list[str]) -> torch.Tensor:
        from alignscope.models.scoring import sequence_logps

        _check_lengths(prompts, responses)
        lp = sequence_logps(self.policy, self.tok, list(prompts), list(responses), self.batch_size)
        lr = sequence_logps(self.reference, self.tok, list(prompts), list(responses), self.batch_size)
        return as_rewards(self.beta * (lp.double() - lr.double()), len(responses), "implicit")


class EnsembleReward(RewardSource):
    """mean, min, or mean − k·std over several sources: a hedge against over-optimising one RM (Coste et al. 2024).

    The std is the population std over members (`losses.reward.aggregate_ensemble`).
    """

    def __init__(self, sources: Sequence[RewardSource | RewardFn], how: str = "mean", k: float = 1.0):
        if how not in ENSEMBLE_AGGREGATIONS:
            raise ConfigError(f"unknown ensemble aggregation '{how}'{did_you_mean(how, ENSEMBLE_AGGREGATIONS)}", f"use one of {', '.join(ENSEMBLE_AGGREGATIONS)}")
        if not sources:
            raise ConfigError("an ensemble needs at least one reward source")
        self.sources, self.how, self.k = list(sources), how, float(k)

    def __call__(self, prompts: list[Prompt], responses: list[str]) -> torch.Tensor:
        _check_lengths(prompts, responses)
        r = torch.stack([as_rewards(s(prompts, responses), len(responses), f"ensemble member {i}") for i, s in enumerate(self.sources)])
        return aggregate_ensemble(r, self.how, self.k)


def _sequence_classifier(path: Path) -> bool:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return False
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def load_reward_source(spec: str | RewardFn, *, placement: Placement | None = None, timeout: float | None = None,
                       **kw: Any) -> RewardSource:
    """Build a reward source from its spec; a reward model goes to `placement`'s device and dtype when given.

    - a callable, or 'module:function' / 'file.py:function' -> `FunctionReward`;
    - 'lab:gold' -> the lab's gold reward;
    - a folder with an alignscope reward model or a saved Hugging Face sequence classifier ->
      `ModelReward` (`kw` go to it: batch_size, max_length, encoding). `timeout` bounds each call of a function. The folder is parsed by
      the model-spec grammar (`alignscope.models.spec`), so a path means the same here as for a policy.
    A causal-LM folder is refused: loading it as a classifier would add a random score head.
    """
    from alignscope.models.spec import parse_model_spec

    if callable(spec):
        return FunctionReward(spec, timeout)
    spec = str(spec)
    if spec == "lab:gold":
        from alignscope.world.gold import gold_rewards

        return FunctionReward(gold_rewards, timeout)
    forms = "give a reward-model folder, module:function, or lab:gold"
    if spec.startswith("lab:"):
        raise ConfigError(f"reward '{spec}' names a lab model, not a reward", forms)
    if ":" in spec and not Path(spec).exists():
        return FunctionReward(spec, timeout)
    try:
        parsed = parse_model_spec(spec)
    except ModelError as e:
        raise ConfigError(f"reward '{spec}' is neither a folder nor module:function ({e.problem})", forms) from None
    if parsed.kind == "hub":
        raise ConfigError(f"reward '{spec}' is neither a folder nor module:function", forms)
    if parsed.kind != "folder":
        raise ConfigError(f"reward '{spec}' names a language model ({parsed.kind}), not a reward model", forms)
    path = Path(parsed.target)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignscope.models.reward_model import RewardModel, is_reward_model_dir

    def placed(model: torch.nn.Module) -> torch.nn.Module:
        return model if placement is None else model.to(device=placement.device, dtype=placement.dtype)

    if is_reward_model_dir(path):
        return ModelReward(placed(RewardModel.from_pretrained(path)), AutoTokenizer.from_pretrained(path), **kw)
    if not _sequence_classifier(path):
        raise ModelError(
            f"'{spec}' is not a reward model folder (no alignscope_reward.json, and its config is not a *ForSequenceClassification)",
            "train one with `alignscope train rm`, or give a module:function reward",
        )
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the reward model in '{spec}': {e}") from None
    if model.config.num_labels != 1:
        raise ModelError(f"'{spec}' has {model.config.num_labels} labels; a reward model has one")
    return ModelReward(placed(model), tok, **kw)
