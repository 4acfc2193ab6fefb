"""Prompt/response tokenization with an exact boundary.

The tokens scored for a response must be exactly the tokens the model predicts after the
prompt. Tokenizing `prompt + response` jointly can merge tokens across the boundary (BPE), so
we tokenize the joint text, check that it starts with the prompt's tokens, and fall back to
separate tokenization (counted as a boundary merge) when it does not.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from alignscope.data.records import Prompt
from alignscope.errors import DataError


@dataclass
class Encoded:
    prompt_ids: list[int]
    response_ids: list[int]
    prompt_truncated: int = 0
    response_truncated: int = 0
    boundary_merge: bool = False
    identical_after_cut: bool = False  # set on a group's first response: truncation made two of its responses equal


@dataclass
class TokenizeStats:
    """Counts of everything tokenization changed, reported instead of done silently."""

    counts: Counter = field(default_factory=Counter)

    def add(self, enc: Encoded) -> None:
        self.counts["sequences"] += 1
        self.counts["prompts_truncated"] += enc.prompt_truncated > 0
        self.counts["responses_truncated"] += enc.response_truncated > 0
        self.counts["prompt_tokens_cut"] += enc.prompt_truncated
        self.counts["response_tokens_cut"] += enc.response_truncated
        self.counts["boundary_merges"] += enc.boundary_merge
        self.counts["identical_after_truncation"] += enc.identical_after_cut

    def summary(self) -> str:
        c = self.counts
        text = (
            f"{c['sequences']} sequences: {c['prompts_truncated']} prompts truncated "
            f"({c['prompt_tokens_cut']} tokens cut from the left), {c['responses_truncated']} responses truncated "
            f"({c['response_tokens_cut']} tokens), {c['boundary_merges']} prompt/response boundary merges"
        )
        if c["identical_after_truncation"]:
            text += (
                f"\nwarning: {c['identical_after_truncation']} pairs (or rankings) have responses that are identical after "
                "truncation, so they carry no preference signal; raise max_length (responses differ after the cut) "
                "or remove those rows"
            )
        return text


def plain_template(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The template for tokenizers without a chat template: 'Role: content' blocks."""
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
    return text + ("Assistant:" if add_generation_prompt else "")


def render_prompt(tokenizer, prompt: Prompt) -> str:
    """The prompt text the model is conditioned on (chat template with the generation prompt)."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return plain_template(prompt)


def _response_text(tokenizer, prompt: Prompt, response: str) -> str:
    # The plain template puts a space between "Assistant:" and the answer.
    if not isinstance(prompt, str) and not getattr(tokenizer, "chat_template", None):
        return " " + response
    return response


def uses_special_tokens(tokenizer, prompt: Prompt) -> bool:
    # Chat templates already render BOS and friends as text; plain text gets the tokenizer's specials.
    return isinstance(prompt, str) or not getattr(tokenizer, "chat_template", None)


def encode_group(
    tokenizer,
    prompt: Prompt,
    responses: list[str],
    *,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    add_eos: bool = True,
) -> list[Encoded]:
    """Encode several responses to one prompt with a shared, identically truncated prompt.

    Truncation: the prompt is cut to `max_prompt_length` from the left, then, if the longest
    prompt+response still exceeds `max_length`, more of the prompt is cut from the left (at least
    one token kept) and finally responses are cut from the right.
    """
    p_text = render_prompt(tokenizer, prompt)
    special = uses_special_tokens(tokenizer, prompt)
    p_ids = tokenizer(p_text, add_special_tokens=special)["input_ids"]
    r_texts = [_response_text(tokenizer, prompt, r) for r in responses]
    joint = tokenizer([p_text + r for r in r_texts], add_special_tokens=special)["input_ids"]
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise DataError(
            "the tokenizer has no EOS token, so responses cannot be terminated",
            "set tokenizer.eos_token (e.g. to the end-of-turn token) or pass add_eos=False",
        )
    resp_ids: list[list[int]] = []
    merges: list[bool] = []
    for r, j in zip(r_texts, joint):
        if j[: len(p_ids)] == p_ids:
            ids, merged = j[len(p_ids) :], False
        else:
            ids, merged = tokenizer(r, add_special_tokens=False)["input_ids"], True
        if add_eos and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        resp_ids.append(ids)
        merges.append(merged)

    p_cut = 0
    if max_prompt_length is not None and len(p_ids) > max_prompt_length:
        p_cut = len(p_ids) - max_prompt_length
    if max_length is not None:
        longest = max((len(r) for r in resp_ids), default=0)
        overflow = len(p_ids) - p_cut + longest - max_length
        if overflow > 0:
            p_cut += min(overflow, max(len(p_ids) - p_cut - 1, 0))
    kept_prompt = p_ids[p_cut:]
    out = []
    for ids, merged in zip(resp_ids, merges):
        r_cut = 0
        if max_length is not None and len(kept_prompt) + len(ids) > max_length:
            r_cut = min(len(kept_prompt) + len(ids) - max_length, len(ids) - 1)
            ids = ids[: len(ids) - r_cut]
        out.append(Encoded(list(kept_prompt), list(ids), p_cut, r_cut, merged))
    if len(out) > 1 and any(e.response_truncated for e in out) and len({tuple(e.response_ids) for e in out}) < len(out):
        out[0].identical_after_cut = True
    return out


def encode_response(tokenizer, prompt: Prompt, response: str, **kw) -> Encoded:
    """Encode one (prompt, response); see `encode_group` for truncation."""
    return encode_group(tokenizer, prompt, [response], **kw)[0]
