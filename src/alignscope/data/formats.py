"""Format detection and row -> record conversion, with every record validated on the way.

Column names follow TRL. Each converter raises a DataError naming the field and the fix; the
caller adds the file and line.
"""

from __future__ import annotations

import re
from typing import Any

from alignscope.data.records import (
    ROLES,
    PairExample,
    PromptExample,
    RankedExample,
    SFTExample,
    UnpairedExample,
)
from alignscope.errors import DataError, did_you_mean

ALIASES = {"dpo": "pairwise", "pairs": "pairwise", "preference": "pairwise", "kto": "unpaired", "rank": "ranked",
           "ranking": "ranked", "prompts": "prompt", "prompt_only": "prompt"}
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant", "function": "tool",
                "observation": "tool", "function_call": "assistant"}
HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def canonical_format(name: str) -> str:
    from alignscope.data.records import FORMATS

    fmt = ALIASES.get(name, name)
    if fmt not in FORMATS:
        raise DataError(f"unknown format '{name}'" + did_you_mean(name, list(FORMATS) + list(ALIASES)), f"use one of {', '.join(FORMATS)}")
    return fmt


def detect_format(columns: set[str]) -> tuple[str, str]:
    """(format, why) from the columns of the first row."""
    if {"chosen", "rejected"} <= columns:
        if "conversations" in columns:
            return "pairwise", "columns conversations/chosen/rejected (ShareGPT pairwise)"
        if "prompt" in columns:
            return "pairwise", "columns prompt/chosen/rejected"
        return "pairwise", "columns chosen/rejected without prompt (implicit prompt: shared conversation prefix)"
    if "completions" in columns and ({"scores", "ranks"} & columns):
        return "ranked", f"columns completions/{'scores' if 'scores' in columns else 'ranks'}"
    if "label" in columns and ({"completion", "messages"} & columns):
        return "unpaired", "columns " + ("prompt/completion/label" if "completion" in columns else "messages/label")
    if {"prompt", "completion"} <= columns:
        return "sft", "columns prompt/completion"
    if "messages" in columns or "conversations" in columns:
        return "sft", f"column {'messages' if 'messages' in columns else 'conversations'} (chat)"
    if "prompt" in columns:
        return "prompt", "column prompt only"
    raise DataError(
        f"cannot tell the format from the columns {sorted(columns)}",
        "use TRL's column names (prompt/chosen/rejected, prompt/completions/scores, prompt/completion/label, "
        "prompt/completion, messages, prompt), rename with --map new=old, or pass --format",
    )


def _text(value: Any, field: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise DataError(f"expected text, got {type(value).__name__} ({str(value)[:40]!r})", "store this field as a string", field=field)
    if not allow_empty and not value.strip():
        raise DataError("is empty", "remove the row or fill in the text (policy on_error=skip drops such rows)", field=field)
    return value


def messages(value: Any, field: str) -> list[dict[str, str]]:
    """Normalise a chat: {role, content} or ShareGPT {from, value}; roles mapped and checked."""
    if not isinstance(value, list):
        raise DataError(f"expected a list of chat messages, got {type(value).__name__}", "store [{role: ..., content: ...}, ...]", field=field)
    out = []
    for i, m in enumerate(value):
        out.append(message(m, f"{field}[{i}]"))
    return out


def message(m: Any, field: str) -> dict[str, str]:
    if not isinstance(m, dict):
        raise DataError(f"message is {type(m).__name__}, not an object", "write {role: ..., content: ...}", field=field)
    role = m.get("role", m.get("from"))
    content = m.get("content", m.get("value"))
    if role is None or content is None:
        raise DataError("message has no role/content (or from/value)", "write {role: user|assistant|system, content: text}", field=field)
    if not isinstance(role, str):
        raise DataError(f"role is {type(role).__name__}, not text", field=field)
    role = ROLE_ALIASES.get(role.lower(), role.lower())
    if role not in ROLES:
        raise DataError(f"unknown chat role '{role}'" + did_you_mean(role, ROLES), f"use one of {', '.join(ROLES)}", field=field)
    if not isinstance(content, str):
        raise DataError(f"content is {type(content).__name__}, not text", "store the message content as a string", field=field)
    return {"role": role, "content": content}


def parse_hh(text: str, field: str) -> list[dict[str, str]]:
    """An HH-RLHF transcript '\\n\\nHuman: ...\\n\\nAssistant: ...' as chat messages."""
    parts = HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise DataError("is not a '\\n\\nHuman: ... \\n\\nAssistant: ...' transcript", "give prompt/chosen/rejected columns instead", field=field)
    return [{"role": "user" if who == "Human" else "assistant", "content": body} for who, body in zip(parts[1::2], parts[2::2])]


def _conversation(value: Any, field: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return parse_hh(value, field)
    return messages(value, field)


def _last_assistant(msgs: list[dict[str, str]], field: str) -> str:
    if not msgs or msgs[-1]["role"] != "assistant":
        raise DataError("does not end with an assistant message", "end the conversation with the assistant's response", field=field)
    return _text(msgs[-1]["content"], field)


def _split_implicit(chosen: list, rejected: list) -> tuple[list, str, str]:
    """Shared prefix of two conversations that differ only in the last assistant turn."""
    c, r = _last_assistant(chosen, "chosen"), _last_assistant(rejected, "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(
            "chosen and rejected do not share everything but the last assistant turn",
            "give the prompt in its own column, or make both conversations identical up to the final response",
            field="chosen/rejected",
        )
    if not chosen[:-1]:
        raise DataError("the conversations have no prompt turns before the response", field="chosen")
    return chosen[:-1], c, r


def _prompt(value: Any, field: str = "prompt") -> Any:
    if isinstance(value, str):
        return _text(value, field)
    msgs = messages(value, field)
    if not msgs:
        raise DataError("is an empty message list", field=field)
    return msgs


def _response(value: Any, field: str) -> str:
    if isinstance(value, dict):
        return _text(message(value, field)["content"], field)
    if isinstance(value, list):
        return _last_assistant(messages(value, field), field)
    return _text(value, field)


def _meta(row: dict, used: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in used}


def to_pairwise(row: dict) -> PairExample:
    if "chosen" not in row or "rejected" not in row:
        raise DataError("missing", "pairwise data needs chosen and rejected", field="rejected" if "chosen" in row else "chosen")
    chosen, rejected = row["chosen"], row["rejected"]
    if "conversations" in row:
        prompt = messages(row["conversations"], "conversations")
        if isinstance(row.get("system"), str) and row["system"].strip():
            prompt = [{"role": "system", "content": row["system"]}] + prompt
        c, r = _response(chosen, "chosen"), _response(rejected, "rejected")
        used = {"conversations", "chosen", "rejected", "system"}
    elif "prompt" in row and row["prompt"] is not None:
        prompt = _prompt(row["prompt"])
        if isinstance(chosen, list) and any(m.get("role", m.get("from")) in ("user", "human") for m in chosen if isinstance(m, dict)):
            # Whole conversations (UltraFeedback-binarized): the prompt is their shared prefix.
            prompt, c, r = _split_implicit(messages(chosen, "chosen"), messages(rejected, "rejected"))
        else:
            c, r = _response(chosen, "chosen"), _response(rejected, "rejected")
        used = {"prompt", "chosen", "rejected", "margin"}
    else:
        prompt, c, r = _split_implicit(_conversation(chosen, "chosen"), _conversation(rejected, "rejected"))
        used = {"chosen", "rejected", "margin"}
    if c.strip() == r.strip():
        raise DataError("chosen is identical to rejected", "remove the pair: it carries no preference", field="rejected")
    margin = row.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise DataError(f"margin must be a number, got {margin!r}", field="margin")
    return PairExample(prompt, c, r, None if margin is None else float(margin), _meta(row, used))


def to_ranked(row: dict) -> RankedExample:
    prompt = _prompt(row.get("prompt"), "prompt") if row.get("prompt") is not None else None
    if prompt is None:
        raise DataError("missing", "ranked data needs a prompt", field="prompt")
    comps = row.get("completions")
    if not isinstance(comps, list):
        raise DataError(f"expected a list of completions, got {type(comps).__name__}", field="completions")
    comps = [_response(c, f"completions[{i}]") for i, c in enumerate(comps)]
    if len(comps) < 2:
        raise DataError(f"a ranking needs at least 2 completions, got {len(comps)}", field="completions")
    key = "scores" if "scores" in row else "ranks"
    vals = row.get(key)
    if not isinstance(vals, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in vals):
        raise DataError(f"expected a list of numbers, got {vals!r}"[:200], field=key)
    if len(vals) != len(comps):
        raise DataError(f"has {len(vals)} values for {len(comps)} completions", "give one value per completion", field=key)
    if key == "ranks":
        if len(set(vals)) != len(vals):
            raise DataError(f"ranks have ties {vals}", "give each completion a distinct rank (1 = best), or use scores", field="ranks")
        scores = [-float(v) for v in vals]
    else:
        scores = [float(v) for v in vals]
    order = sorted(range(len(comps)), key=lambda i: -scores[i])
    return RankedExample(prompt, [comps[i] for i in order], [scores[i] for i in order], _meta(row, {"prompt", "completions", key}))


def _label(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise DataError(f"label must be true/false (or 1/0), got {value!r}", field="label")


def _chat_split(msgs: list[dict[str, str]], field: str) -> tuple[list, str]:
    completion = _last_assistant(msgs, field)
    if not msgs[:-1]:
        raise DataError("has no prompt turns before the assistant's response", field=field)
    return msgs[:-1], completion


def to_unpaired(row: dict) -> UnpairedExample:
    if "label" not in row:
        raise DataError("missing", "unpaired data needs a boolean label", field="label")
    if "completion" in row:
        if row.get("prompt") is None:
            raise DataError("missing", "unpaired data needs prompt/completion/label", field="prompt")
        prompt, completion = _prompt(row["prompt"]), _response(row["completion"], "completion")
        used = {"prompt", "completion", "label"}
    else:
        prompt, completion = _chat_split(messages(row.get("messages"), "messages"), "messages")
        used = {"messages", "label"}
    return UnpairedExample(prompt, completion, _label(row["label"]), _meta(row, used))


def to_sft(row: dict) -> SFTExample:
    if "completion" in row:
        if row.get("prompt") is None:
            raise DataError("missing", "SFT data needs prompt/completion or messages", field="prompt")
        return SFTExample(_prompt(row["prompt"]), _response(row["completion"], "completion"), _meta(row, {"prompt", "completion"}))
    key = "messages" if "messages" in row else "conversations"
    if key not in row:
        raise DataError("missing", "SFT data needs prompt/completion or messages", field="messages")
    prompt, completion = _chat_split(messages(row[key], key), key)
    return SFTExample(prompt, completion, _meta(row, {key}))


def to_prompt(row: dict) -> PromptExample:
    if row.get("prompt") is not None:
        return PromptExample(_prompt(row["prompt"]), _meta(row, {"prompt"}))
    if "messages" in row:
        msgs = messages(row["messages"], "messages")
        if msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        if not msgs:
            raise DataError("has no prompt turns", field="messages")
        return PromptExample(msgs, _meta(row, {"messages"}))
    raise DataError("missing", "prompt data needs a prompt column (rename with --map prompt=question)", field="prompt")


CONVERTERS = {"pairwise": to_pairwise, "ranked": to_ranked, "unpaired": to_unpaired, "sft": to_sft, "prompt": to_prompt}
