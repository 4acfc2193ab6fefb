"""A weighted sum of named reward sources, each guarded: a time limit on user code, and errors that
name the reward and the prompt it failed on.

RL logs each term separately as well as the sum (TRL's `reward_funcs` + `reward_weights`), so a
reward that a policy learns to exploit shows in its own curve.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignscope.data.records import Prompt, prompt_text
from alignscope.errors import AlignscopeError, TrainingError


@dataclass
class RewardTerm:
    """One named reward source and its weight in the sum."""

    name: str
    source: Callable[[list[Prompt], list[str]], Any]
    weight: float = 1.0


def short_prompt(prompt: Prompt, width: int = 80) -> str:
    text = prompt_text(prompt).replace("\n", " ")
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def call_with_timeout(fn: Callable[[], Any], timeout: float | None) -> tuple[bool, Any]:
    """Run `fn()`; (True, result) or (False, exception). A call still running after `timeout`
    seconds raises TimeoutError; its daemon thread is abandoned (Python cannot stop it), so a hung
    reward never holds the process open."""
    if timeout is None:
        try:
            return True, fn()
        except Exception as e:  # noqa: BLE001 (user code: any failure is reported with its context)
            return False, e
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True, name="alignscope-reward")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError
    if "error" in box:
        if not isinstance(box["error"], Exception):
            raise box["error"]
        return False, box["error"]
    return True, box.get("value")


def first_failing(fn: Callable[[list, list], Any], prompts: Sequence[Prompt], responses: Sequence[str], timeout: float | None) -> int | None:
    """The index of the first (prompt, response) on which `fn` raises (or hangs) when called on it alone:
    what a failure of the whole batch is reported with."""
    for i, (p, r) in enumerate(zip(prompts, responses)):
        try:
            ok, _ = call_with_timeout(lambda p=p, r=r: fn([p], [r]), timeout)
        except TimeoutError:
            return i
        if not ok:
            return i
    return None


def first_bad(values: Any) -> tuple[int, str] | None:
    """Index and kind of the first entry that is not a finite number."""
    items = values.detach().cpu().reshape(-1).tolist() if isinstance(values, torch.Tensor) else list(values)
    for i, v in enumerate(items):
        if isinstance(v, (str, bytes)):  # float("0.7") would pass, but torch.as_tensor cannot take strings
            return i, f"a {type(v).__name__} ({v!r:.40})"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            try:
                v = float(v)
            except (TypeError, ValueError):
                return i, f"a {type(v).__name__} ({v!r:.40})"
        if not math.isfinite(v):
            return i, str(v)
    return None


def failure_site(fn: Callable[[list, list], Any], prompts: Sequence[Prompt], responses: Sequence[str], timeout: float | None) -> str:
    """Where a batch call that raised failed, for its message: the first (prompt, response) that fails alone, or the batch."""
    culprit = first_failing(fn, prompts, responses, timeout)
    if culprit is not None:
        return f" on the response {responses[culprit]!r:.60} to prompt {short_prompt(prompts[culprit])}"
    return f" on a batch of {len(responses)} responses" + (f" (first prompt {short_prompt(prompts[0])})" if prompts else "")


def output_problem(out: Any, prompts: Sequence[Prompt], responses: Sequence[str], where: str) -> tuple[str, str] | None:
    """(problem, fix) when what a reward call returned is not one finite number per response, else None."""
    if isinstance(out, (str, bytes)) or not hasattr(out, "__len__") or getattr(out, "ndim", None) == 0:  # 0-d: len() raises
        return f"{where} returned {type(out).__name__}, not a list of numbers, for {len(responses)} responses", "return one float per (prompt, response)"
    if len(out) != len(responses):
        return (f"{where} returned {len(out)} values for {len(responses)} responses" + (f" (first prompt {short_prompt(prompts[0])})" if prompts else ""),
                "return one float per (prompt, response), in the order given")
    bad = first_bad(out)
    if bad is None:
        return None
    i, kind = bad
    kind = f"a non-finite value ({kind})" if kind in ("nan", "inf", "-inf") else kind
    return f"{where} returned {kind} for the response {responses[i]!r:.60} to prompt {short_prompt(prompts[i])}", "return a finite float for every response"


class WeightedRewards:
    """Σ_k w_k·r_k over named terms; `scores` also returns each term's rewards for logging.

    `timeout` (seconds) bounds each term's call. A term that raises, hangs, or returns the wrong
    number of values, NaN/inf or a non-number stops the run with a `TrainingError` naming the term
    and, where one response is to blame, its prompt; checkpoints already written stay on disk.
    """

    def __init__(self, terms: Sequence[RewardTerm], timeout: float | None = None):
        if not terms:
            raise TrainingError("no reward terms given", "give reward: ... or rewards: [{fn: module:function, weight: 1.0}]")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise TrainingError(f"reward names repeat: {names}", "give each reward a distinct name: {fn: ..., name: ...}")
        self.terms, self.timeout = list(terms), timeout

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]

    def _call(self, term: RewardTerm, prompts: list[Prompt], responses: list[str], step: int | None) -> torch.Tensor:
        where = f"reward '{term.name}'" + (f" at step {step}" if step is not None else "")
        fix = "fix the reward function; the last checkpoint is kept (resume with --resume)"
        try:
            ok, out = call_with_timeout(lambda: term.source(list(prompts), list(responses)), self.timeout)
        except TimeoutError:
            raise TrainingError(f"{where} took longer than reward_timeout={self.timeout:g}s on {len(responses)} responses "
                                f"(first prompt {short_prompt(prompts[0])})", "make it faster or raise reward_timeout; the last checkpoint is kept") from None
        if not ok and isinstance(out, AlignscopeError):  # a reward source's own report (it names the function and prompt)
            raise TrainingError(f"{where}: {out.problem}", f"{out.fix}; the last checkpoint is kept (resume with --resume)"
                                if out.fix else fix) from None
        if not ok:
            raise TrainingError(f"{where} raised {type(out).__name__}: {out}{failure_site(term.source, prompts, responses, self.timeout)}", fix) from out
        problem = output_problem(out, prompts, responses, where)
        if problem is not None:
            raise TrainingError(problem[0], f"{problem[1]}; {fix}")
        return torch.as_tensor(out.detach().cpu() if isinstance(out, torch.Tensor) else out, dtype=torch.float32).reshape(-1)

    def scores(self, prompts: list[Prompt], responses: list[str], step: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(weighted sum [N], {name: rewards [N]})."""
        parts = {t.name: self._call(t, prompts, responses, step) for t in self.terms}
        total = torch.zeros(len(responses))
        for t in self.terms:
            total = total + t.weight * parts[t.name]
        return total, parts

    def __call__(self, prompts: list[Prompt], responses: list[str]) -> torch.Tensor:
        return self.scores(prompts, responses)[0]
