"""WeightedRewards: the weighted sum by hand, each term's own rewards, and errors that name the
reward, the prompt and the fix (a hang stopped by the timeout, a raise, wrong length, non-numbers)."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from alignscope.errors import TrainingError
from alignscope.rewards.weighted import RewardTerm, WeightedRewards, call_with_timeout

PROMPTS = ["p0 say hi", "p1 say bye", "p2 count"]
RESPONSES = ["hi", "yes bye", "one two three"]


def length(prompts, responses):
    return [float(len(r)) for r in responses]


def says_yes(prompts, responses):
    return torch.tensor([1.0 if "yes" in r else 0.0 for r in responses])


@pytest.fixture()
def gate():
    """An event a hanging reward waits on; set at teardown so the abandoned thread ends."""
    ev = threading.Event()
    yield ev
    ev.set()


# --- the weighted sum


def test_weighted_sum_and_parts_by_hand():
    w = WeightedRewards([RewardTerm("length", length, 0.5), RewardTerm("yes", says_yes, -2.0)])
    total, parts = w.scores(PROMPTS, RESPONSES)
    # length: [2, 7, 13]; yes: [0, 1, 0]
    # total = 0.5·[2, 7, 13] − 2·[0, 1, 0] = [1, 3.5 − 2, 6.5] = [1, 1.5, 6.5]
    assert torch.equal(parts["length"], torch.tensor([2.0, 7.0, 13.0]))
    assert torch.equal(parts["yes"], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(total, torch.tensor([1.0, 1.5, 6.5]))
    assert list(parts) == ["length", "yes"] == w.names
    assert total.dtype == torch.float32 and parts["length"].dtype == torch.float32
    # __call__ is the sum alone
    assert torch.allclose(w(PROMPTS, RESPONSES), torch.tensor([1.0, 1.5, 6.5]))


def test_default_weight_is_one_and_terms_get_copies():
    seen = []

    def grabby(prompts, responses):
        seen.append((prompts, responses))
        prompts.append("mutated")  # a term that mutates its input must not affect the next term
        return [1.0] * (len(responses))

    w = WeightedRewards([RewardTerm("a", grabby), RewardTerm("b", length, 3.0)])
    total, _ = w.scores(PROMPTS[:2], RESPONSES[:2])
    # 1·1 + 3·[2, 7] = [7, 22]
    assert torch.allclose(total, torch.tensor([7.0, 22.0]))
    assert PROMPTS[:2] == ["p0 say hi", "p1 say bye"]


def test_accepted_return_types():
    import numpy as np

    cases = {
        "bools": lambda p, r: [True, False],  # 1, 0
        "ints": lambda p, r: [3, -1],
        "numpy": lambda p, r: np.array([0.25, 0.5], dtype=np.float32),
        "column": lambda p, r: torch.tensor([[2.0], [4.0]]),  # [N, 1] is flattened
        "tuple": lambda p, r: (1.5, 2.5),
    }
    w = WeightedRewards([RewardTerm(k, f) for k, f in cases.items()])
    total, parts = w.scores(PROMPTS[:2], RESPONSES[:2])
    assert parts["bools"].tolist() == [1.0, 0.0]
    assert parts["ints"].tolist() == [3.0, -1.0]
    assert parts["numpy"].tolist() == [0.25, 0.5]
    assert parts["column"].tolist() == [2.0, 4.0]
    # total = [1 + 3 + 0.25 + 2 + 1.5, 0 − 1 + 0.5 + 4 + 2.5] = [7.75, 6]
    assert total.tolist() == [7.75, 6.0]


def test_constructor_errors():
    with pytest.raises(TrainingError, match="no reward terms") as e:
        WeightedRewards([])
    assert e.value.fix and "reward" in e.value.fix
    with pytest.raises(TrainingError, match="repeat") as e:
        WeightedRewards([RewardTerm("a", length), RewardTerm("a", says_yes)])
    assert "distinct name" in e.value.fix


# --- call_with_timeout


def test_call_with_timeout_results_and_exceptions():
    assert call_with_timeout(lambda: 42, None) == (True, 42)
    assert call_with_timeout(lambda: 42, 5.0) == (True, 42)
    err = ValueError("bad")

    def raise_it():
        raise err

    assert call_with_timeout(raise_it, None) == (False, err)
    assert call_with_timeout(raise_it, 5.0) == (False, err)
    assert call_with_timeout(lambda: None, 5.0) == (True, None)


def test_call_with_timeout_stops_waiting_on_a_hang(gate):
    import time

    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        call_with_timeout(gate.wait, 0.2)
    assert time.monotonic() - t0 < 2.0  # stopped waiting after about 0.2 s


def test_call_with_timeout_reraises_base_exceptions():
    def leave():
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        call_with_timeout(leave, 5.0)
    with pytest.raises(SystemExit):
        call_with_timeout(leave, None)


# --- errors naming the reward, the prompt and the fix


def test_hanging_reward_is_stopped_by_the_timeout(gate):
    def slow_judge(prompts, responses):
        gate.wait()
        return [0.0] * len(responses)

    w = WeightedRewards([RewardTerm("length", length), RewardTerm("slow_judge", slow_judge)], timeout=0.2)
    with pytest.raises(TrainingError) as e:
        w.scores(PROMPTS, RESPONSES, step=7)
    msg = str(e.value)
    assert "reward 'slow_judge' at step 7 took longer than reward_timeout=0.2s on 3 responses" in msg
    assert "first prompt 'p0 say hi'" in msg
    assert "raise reward_timeout" in e.value.fix and "checkpoint is kept" in e.value.fix


def test_raising_reward_names_the_prompt_it_failed_on():
    def picky(prompts, responses):
        for r in responses:
            if "bye" in r:
                raise ValueError("cannot parse 'bye'")
        return [1.0] * len(responses)

    w = WeightedRewards([RewardTerm("picky", picky)])
    with pytest.raises(TrainingError) as e:
        w.scores(PROMPTS, RESPONSES)
    # the batch raised; called alone, (p0, "hi") passes and (p1, "yes bye") raises -> prompt p1
    msg = str(e.value)
    assert "reward 'picky' raised ValueError: cannot parse 'bye' on the response 'yes bye' to prompt 'p1 say bye'" in msg
    assert "at step" not in msg
    assert "fix the reward function" in e.value.fix
    assert isinstance(e.value.__cause__, ValueError)


def test_raising_only_on_a_batch_names_the_batch():
    def batch_only(prompts, responses):
        if len(responses) > 1:
            raise RuntimeError("batch too big")
        return [1.0]

    w = WeightedRewards([RewardTerm("batchy", batch_only)])
    with pytest.raises(TrainingError) as e:
        w.scores(PROMPTS, RESPONSES, step=2)
    assert "reward 'batchy' at step 2 raised RuntimeError: batch too big on a batch of 3 responses (first prompt 'p0 say hi')" in str(e.value)


def test_culprit_search_stops_a_hang_on_one_prompt(gate):
    def flaky(prompts, responses):
        if len(responses) > 1:
            raise RuntimeError("batch failed")
        if responses[0] == "one two three":
            gate.wait()  # hangs on p2 alone
        return [1.0]

    w = WeightedRewards([RewardTerm("flaky", flaky)], timeout=0.2)
    with pytest.raises(TrainingError) as e:
        w.scores(PROMPTS, RESPONSES)
    # p0 and p1 pass alone, p2 times out -> blamed
    assert "raised RuntimeError: batch failed on the response 'one two three' to prompt 'p2 count'" in str(e.value)


def test_wrong_number_of_values():
    w = WeightedRewards([RewardTerm("short", lambda p, r: [1.0])])
    with pytest.raises(TrainingError) as e:
        w.scores(PROMPTS, RESPONSES)
    assert "reward 'short' returned 1 values for 3 responses (first prompt 'p0 say hi')" in str(e.value)
    assert e.value.fix.startswith("return one float per (prompt, response)")
    w = WeightedRewards([RewardTerm("row", lambda p, r: torch.ones(1, len(r)))])  # [1, N]: one row, not N values
    with pytest.raises(TrainingError, match="returned 1 values for 3 responses"):
        w.scores(PROMPTS, RESPONSES)


@pytest.mark.parametrize("value, kind", [
    (math.nan, "a non-finite value (nan)"),
    (math.inf, "a non-finite value (inf)"),
    (-math.inf, "a non-finite value (-inf)"),
    (None, "a NoneType (None)"),
    ([1.0], "a list ([1.0])"),
])
def test_non_finite_or_non_number_names_the_response_and_prompt(value, kind):
    def bad_second(prompts, responses):
        return [0.5, value, 0.5]

    w = WeightedRewards([RewardTerm("judge", bad_second)])
    with pytest.raises(TrainingError) as e:
        w.scores(PROMPTS, RESPONSES, step=3)
    assert f"reward 'judge' at step 3 returned {kind} for the response 'yes bye' to prompt 'p1 say bye'" in str(e.value)
    assert e.value.fix.startswith("return a finite float for every response")


def test_nan_in_a_tensor_names_its_prompt():
    w = WeightedRewards([RewardTerm("t", lambda p, r: torch.tensor([0.0, 1.0, math.nan]))])
    with pytest.raises(TrainingError, match=r"returned a non-finite value \(nan\) for the response 'one two three' to prompt 'p2 count'"):
        w.scores(PROMPTS, RESPONSES)


@pytest.mark.parametrize("value, kind", [("0.5", "str"), (0.5, "float"), (b"1", "bytes"), ((x for x in [1.0]), "generator")])
def test_not_a_list_of_numbers(value, kind):
    w = WeightedRewards([RewardTerm("scalar", lambda p, r: value)])
    with pytest.raises(TrainingError, match=f"reward 'scalar' returned {kind}, not a list of numbers, for 3 responses"):
        w.scores(PROMPTS, RESPONSES)


def test_zero_dim_tensor_is_not_a_list_of_numbers():
    # A 0-d tensor has __len__ but len() raises TypeError: it used to escape as a bare TypeError.
    w = WeightedRewards([RewardTerm("summed", lambda p, r: torch.tensor(1.0))])
    with pytest.raises(TrainingError, match="reward 'summed' returned Tensor, not a list of numbers, for 1 responses"):
        w.scores(PROMPTS[:1], RESPONSES[:1])
    import numpy as np

    w = WeightedRewards([RewardTerm("summed", lambda p, r: np.array(1.0))])
    with pytest.raises(TrainingError, match="reward 'summed' returned ndarray, not a list of numbers"):
        w.scores(PROMPTS[:1], RESPONSES[:1])


def test_numeric_strings_are_rejected_with_the_prompt():
    # A judge returning "0.7"-style strings: float("0.7") works, so the check used to pass them and
    # torch.as_tensor then failed with a bare ValueError ("too many dimensions 'str'").
    w = WeightedRewards([RewardTerm("judge", lambda p, r: [0.5, "0.7", 0.5])])
    with pytest.raises(TrainingError) as e:
        w.scores(PROMPTS, RESPONSES)
    assert "reward 'judge' returned a str ('0.7') for the response 'yes bye' to prompt 'p1 say bye'" in str(e.value)


def test_prompts_are_shown_flat_and_short():
    long_prompt = "x" * 100
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"}]
    w = WeightedRewards([RewardTerm("short", lambda p, r: [1.0])])
    with pytest.raises(TrainingError) as e:
        w.scores([long_prompt, "b"], ["r0", "r1"])
    # 80 characters: the first 77 and "..."
    assert f"(first prompt '{'x' * 77}...')" in str(e.value)
    with pytest.raises(TrainingError) as e:
        w.scores([chat, "b"], ["r0", "r1"])
    # "role: content" lines joined, newlines shown as spaces
    assert "(first prompt 'system: Be brief. user: Hi there')" in str(e.value)
