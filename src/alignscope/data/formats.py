"""Format detection and row -> record conversion, validating every field on the way.

Column names follow TRL, so TRL datasets load unchanged. Every converter raises a DataError that
names the field, says what is wrong and how to fix it, and carries a `kind` ("missing", "empty",
"identical", ...) that `data inspect` counts; the caller adds the file and line.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from alignscope.data.records import (
    FORMATS,
    ROLES,
    Message,
    PairExample,
    Prompt,
    PromptExample,
    RankedExample,
    SFTExample,
    UnpairedExample,
)
from alignscope.errors import DataError, did_you_mean

ALIASES = {
    "dpo": "pairwise", "pairs": "pairwise", "pair": "pairwise", "preference": "pairwise", "kto": "unpaired",
    "bco": "unpaired", "rank": "ranked", "ranking": "ranked", "sft": "sft", "prompts": "prompt", "prompt_only": "prompt",
}
ROLE_ALIASES = {
    "human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant", "chatgpt": "assistant",
    "function": "tool", "observation": "tool", "function_call": "assistant", "ipython": "tool",
}
# Columns each format needs: any one of the alternatives.
REQUIRED = {
    "pairwise": [("chosen", "rejected")],
    "ranked": [("prompt", "completions", "scores"), ("prompt", "completions", "ranks")],
    "unpaired": [("prompt", "completion", "label"), ("messages", "label")],
    "sft": [("prompt", "completion"), ("messages",), ("conversations",)],
    "prompt": [("prompt",), ("messages",)],
}
# Common non-TRL names, to suggest the right --map.
SYNONYMS = {
    "prompt": ("question", "instruction", "input", "query", "problem", "text", "context"),
    "completion": ("response", "output", "answer", "solution", "target"),
    "chosen": ("response_a", "preferred", "chosen_response", "better", "positive", "accepted"),
    "rejected": ("response_b", "dispreferred", "rejected_response", "worse", "negative"),
    "label": ("desirable", "is_good", "kto_tag"),
}
HH_TURN = re.compile(r"(?:\A|\n\n)(Human|Assistant):")


def bad(problem: str, fix: str | None = None, *, field: str | None = None, kind: str = "invalid") -> DataError:
    """A DataError with a `kind`, so problems can be counted by what is wrong."""
    e = DataError(problem, fix, field=field)
    e.kind = kind
    return e


def canonical_format(name: str) -> str:
    """A format name or alias ('dpo', 'kto', ...) -> one of FORMATS."""
    fmt = ALIASES.get(name.lower(), name.lower())
    if fmt not in FORMATS:
        raise DataError(f"unknown format '{name}'" + did_you_mean(name, list(FORMATS) + list(ALIASES)),
                        f"use one of {', '.join(FORMATS)} (or dpo, kto)")
    return fmt


def common_columns(rows: Iterable[dict[str, Any]], sample: int = 1000) -> set[str]:
    """Columns set (not None) in at least half of the first `sample` rows: one broken or sparse row
    must not change the detected format."""
    counts: Counter = Counter()
    n = 0
    for row in rows:
        counts.update(k for k, v in row.items() if v is not None)
        n += 1
        if n == sample:
            break
    return {k for k, c in counts.items() if 2 * c >= n}


def detect_format(columns: set[str]) -> tuple[str, str]:
    """(format, why) from the column names."""
    if {"chosen", "rejected"} & columns:
        if "conversations" in columns:
            return "pairwise", "columns conversations/chosen/rejected: ShareGPT preference"
        if "prompt" in columns:
            return "pairwise", "columns prompt/chosen/rejected"
        return "pairwise", "columns chosen/rejected without prompt: implicit prompt, the shared start of both conversations"
    if "completions" in columns and {"scores", "ranks"} & columns:
        return "ranked", f"columns prompt/completions/{'scores' if 'scores' in columns else 'ranks'}"
    if "label" in columns and {"completion", "messages"} & columns:
        return "unpaired", "columns " + ("prompt/completion/label" if "completion" in columns else "messages/label")
    if {"prompt", "completion"} <= columns:
        return "sft", "columns prompt/completion"
    if "messages" in columns or "conversations" in columns:
        key = "messages" if "messages" in columns else "conversations"
        return "sft", f"column {key}: chat, the last assistant turn is the completion"
    if "prompt" in columns:
        return "prompt", "column prompt alone: prompt-only"
    raise DataError(
        f"cannot tell the format from the columns {sorted(columns)}",
        _map_hint(columns) or "use TRL's column names (prompt/chosen/rejected, prompt/completions/scores, "
        "prompt/completion/label, prompt/completion, messages, prompt), rename with --map NEW=OLD, or pass --format",
    )


def _map_hint(columns: set[str], wanted: Iterable[str] = tuple(SYNONYMS)) -> str:
    maps = [f"--map {new}={old}" for new in wanted if new not in columns for old in SYNONYMS.get(new, ()) if old in columns]
    return f"rename your columns to TRL's names, e.g. {' '.join(maps)}" if maps else ""


def check_columns(fmt: str, columns: set[str]) -> None:
    """Fail once, up front, when no row can have the columns `fmt` needs (rather than once per row)."""
    options = REQUIRED[fmt]
    if any(set(opt) <= columns for opt in options):
        return
    best = min(options, key=lambda o: len(set(o) - columns))
    missing = [c for c in best if c not in columns]
    hint = _map_hint(columns, missing) or f"rename with --map {missing[0]}=YOUR_COLUMN" + did_you_mean(missing[0], columns)
    raise DataError(f"format '{fmt}' needs column(s) {', '.join(missing)}; the data has {sorted(columns)}",
                    hint + ", or pass another --format")


def check_mapping(mapping: Any, source: str = "<data>") -> None:
    """A column mapping must be {TRL name: your column name}, both text: a list or number would be misread."""
    if not isinstance(mapping, dict):
        raise DataError(f"the column mapping must be NEW: OLD pairs, got {type(mapping).__name__}",
                        "write map: {chosen: response_a} (or --map chosen=response_a)", source=source)
    for new, old in mapping.items():
        if not isinstance(new, str) or not isinstance(old, str) or not new or not old:
            raise DataError(f"map entry {new!r}: {old!r} is not a column name mapped to a column name "
                            f"(got {type(new).__name__}: {type(old).__name__})",
                            "map one column to one column, e.g. map: {chosen: response_a}; a list cannot be renamed",
                            source=source)


# --- fields


def _unicode(value: str, field: str) -> str:
    """Refuse text no tokenizer can encode: a JSON escape such as \\ud800 decodes to a lone surrogate."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad(f"holds an unpaired UTF-16 surrogate ({value[e.start]!r} at character {e.start}), which is not text",
                  "fix the \\uXXXX escapes of this field (surrogates must come in pairs)", field=field, kind="utf8") from None
    return value


def cell_text(value: Any) -> Any:
    """A CSV cell that parsed as JSON but is not chat messages (a response such as '[1, 2, 3]' or '{x}') is the text
    it was: only a field that takes messages or numbers reads the parsed value (`sources.CellList`)."""
    text = getattr(value, "csv_text", None)
    if text is None:
        return value
    if isinstance(value, dict) and ("role" in value or "from" in value):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return value
    return text


def _text(value: Any, field: str) -> str:
    value = cell_text(value)
    if not isinstance(value, str):
        raise bad(f"expected text, got {type(value).__name__} ({str(value)[:40]!r})", "store this field as a string",
                  field=field, kind="type")
    _unicode(value, field)
    if not value.strip():
        raise bad("is empty" if not value else "is only whitespace", "fill in the text or remove the row",
                  field=field, kind="empty")
    return value


def _content(value: Any, field: str) -> str:
    """Message content: text, or TRL/OpenAI content parts [{"type": "text", "text": ...}]."""
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return _unicode("".join(str(p.get("text", "")) for p in value), field)
    if not isinstance(value, str):
        raise bad(f"message content is {type(value).__name__}, not text", "store the message content as a string",
                  field=field, kind="type")
    return _unicode(value, field)


def message(m: Any, field: str) -> Message:
    """One chat message: {role, content} or ShareGPT {from, value}; roles normalised and checked."""
    if not isinstance(m, dict):
        raise bad(f"the message is {type(m).__name__}, not an object", "write {\"role\": ..., \"content\": ...}",
                  field=field, kind="message")
    role = m.get("role", m.get("from"))
    content = m.get("content", m.get("value"))
    if role is None or content is None:
        raise bad(f"malformed message: no {'role' if role is None else 'content'} (keys: {sorted(m)})",
                  "write {\"role\": \"user\"|\"assistant\"|\"system\", \"content\": text} (or ShareGPT {\"from\", \"value\"})",
                  field=field, kind="message")
    if not isinstance(role, str):
        raise bad(f"the role is {type(role).__name__}, not text", f"use one of {', '.join(ROLES)}", field=field, kind="type")
    norm = ROLE_ALIASES.get(role.strip().lower(), role.strip().lower())
    if norm not in ROLES:
        raise bad(f"unknown chat role '{role}'" + did_you_mean(norm, list(ROLES) + list(ROLE_ALIASES)),
                  f"use one of {', '.join(ROLES)} (ShareGPT human/gpt are accepted too)", field=field, kind="role")
    return {"role": norm, "content": _content(content, field)}


def messages(value: Any, field: str) -> list[Message]:
    """A chat as a list of normalised messages."""
    if not isinstance(value, list):
        raise bad(f"expected a list of chat messages, got {type(value).__name__}",
                  "store [{\"role\": ..., \"content\": ...}, ...]", field=field, kind="type")
    return [message(m, f"{field}[{i}]") for i, m in enumerate(value)]


def parse_hh(text: str, field: str) -> list[Message]:
    """An HH-RLHF transcript '\\n\\nHuman: ...\\n\\nAssistant: ...' as chat messages."""
    parts = HH_TURN.split(_unicode(text, field))
    if len(parts) < 3 or parts[0].strip():
        raise bad("is plain text, but without a prompt it must be a whole conversation: a message list or a "
                  "'\\n\\nHuman: ... \\n\\nAssistant: ...' transcript",
                  "add a prompt column (or --map prompt=YOUR_COLUMN)", field=field, kind="missing")
    return [{"role": "user" if who == "Human" else "assistant", "content": body[1:] if body.startswith(" ") else body}
            for who, body in zip(parts[1::2], parts[2::2])]


def _prompt(value: Any, field: str = "prompt") -> Prompt:
    value = cell_text(value)
    if isinstance(value, str):
        return _text(value, field)
    msgs = messages(value, field)
    if not msgs:
        raise bad("is an empty message list", "give at least one user message", field=field, kind="empty")
    return msgs


def _last_assistant(msgs: list[Message], field: str) -> str:
    if not msgs or msgs[-1]["role"] != "assistant":
        last = msgs[-1]["role"] if msgs else "nothing"
        raise bad(f"the conversation ends with {last}, not an assistant message",
                  "end the conversation with the assistant's response", field=field, kind="message")
    content = msgs[-1]["content"]
    if not content.strip():
        raise bad("the final assistant message is empty", "fill in the response or remove the row",
                  field=field, kind="empty")
    return content


def _response(value: Any, field: str) -> str:
    """A response: text, one assistant message, or a message list ending with the assistant's turn."""
    value = cell_text(value)
    if isinstance(value, dict):
        m = message(value, field)
        if m["role"] != "assistant":
            raise bad(f"is a {m['role']} message, not the assistant's response", "give the assistant's message here",
                      field=field, kind="role")
        return _text(m["content"], field)
    if isinstance(value, list):
        return _last_assistant(messages(value, field), field)
    return _text(value, field)


def _is_conversation(value: Any) -> bool:
    """A message list holding the whole conversation: other turns, then the assistant's response."""
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        return False
    roles = [m.get("role", m.get("from")) for m in value]
    if not all(isinstance(r, str) for r in roles):
        return False
    roles = [ROLE_ALIASES.get(r.lower(), r.lower()) for r in roles]
    return roles[-1] == "assistant" and any(r != "assistant" for r in roles)


def _conversation(value: Any, field: str) -> list[Message]:
    return parse_hh(value, field) if isinstance(value, str) else messages(value, field)


def _norm_ws(text: str) -> str:
    return " ".join(text.split())


def _check_distinct(chosen: str, rejected: str) -> None:
    if chosen == rejected:
        raise bad("chosen is identical to rejected", "remove the pair: it carries no preference", field="rejected", kind="identical")
    if _norm_ws(chosen) == _norm_ws(rejected):
        raise bad("chosen and rejected differ only in whitespace", "remove the pair: it carries no preference",
                  field="rejected", kind="near-identical")


def split_implicit(chosen: list[Message], rejected: list[Message]) -> tuple[list[Message], str, str]:
    """(shared prompt, chosen response, rejected response) of two whole conversations that must
    differ only in their final assistant message."""
    c, r = _last_assistant(chosen, "chosen"), _last_assistant(rejected, "rejected")
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k == len(chosen) == len(rejected):
        _check_distinct(c, r)
    if k == 0 and len(chosen) == len(rejected) == 1:
        raise bad("the conversations have no prompt before the response", "add the user turn, or a prompt column",
                  field="chosen", kind="missing")
    if not (k == len(chosen) - 1 == len(rejected) - 1):
        at = f"message {k + 1}" + (f" ({chosen[k]['role']})" if k < len(chosen) else "")
        raise bad(
            f"chosen and rejected diverge at {at}, not only in the final assistant turn: after {k} shared message(s) "
            f"chosen has {len(chosen) - k} more and rejected {len(rejected) - k}",
            "both conversations must repeat the same prompt and end with one different assistant message; "
            "give the prompt in its own column, or remove the row",
            field="chosen/rejected", kind="prefix",
        )
    _check_distinct(c, r)
    return chosen[:k], c, r


def _number(value: Any, field: str) -> float:
    """A finite number; numeric text is accepted because CSV cells are always text."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"expected a number, got {type(value).__name__} ({str(value)[:40]!r})", "store a number",
                  field=field, kind="type")
    if isinstance(value, int) and abs(value) > 2**1023:
        raise bad(f"is an integer of {len(str(abs(value)))} digits, beyond what a float can hold", "store a number below 1e308",
                  field=field, kind="type")
    if not math.isfinite(value):
        raise bad(f"is {value}", "store a finite number", field=field, kind="type")
    return float(value)


def _label(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise bad(f"label must be boolean, got {value!r}", "use true/false (1/0 and \"true\"/\"false\" are accepted)",
              field="label", kind="label")


def _require(row: dict, fmt: str, *names: str) -> None:
    for name in names:
        if row.get(name) is None:
            need = " or ".join("/".join(o) for o in REQUIRED[fmt])
            raise bad("is missing", f"{fmt} data needs {need} (rename yours with --map {name}=YOUR_COLUMN)", field=name, kind="missing")


def _meta(row: dict, used: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in used}


def _chat_split(msgs: list[Message], field: str) -> tuple[list[Message], str]:
    completion = _last_assistant(msgs, field)
    if len(msgs) < 2:
        raise bad("has no prompt turns before the assistant's response", "start the conversation with the user's turn",
                  field=field, kind="missing")
    return msgs[:-1], completion


# --- converters: raw row (dict) -> record


def to_pairwise(row: dict) -> PairExample:
    _require(row, "pairwise", "chosen", "rejected")
    chosen, rejected = row["chosen"], row["rejected"]
    if row.get("conversations") is not None:
        prompt = messages(row["conversations"], "conversations")
        system = row.get("system")
        if system is not None and not isinstance(system, str):
            raise bad(f"expected text, got {type(system).__name__} ({str(system)[:40]!r})", "store the system prompt as a string",
                      field="system", kind="type")
        if system is not None:
            _unicode(system, "system")
        if isinstance(system, str) and system.strip() and not (prompt and prompt[0]["role"] == "system"):
            prompt = [{"role": "system", "content": system}, *prompt]
        if not prompt:
            raise bad("is an empty message list", "give at least one user message", field="conversations", kind="empty")
        c, r = _response(chosen, "chosen"), _response(rejected, "rejected")
        _check_distinct(c, r)
        used = {"conversations", "system", "chosen", "rejected", "margin"}
    elif row.get("prompt") is not None and not (_is_conversation(chosen) or _is_conversation(rejected)):
        prompt = _prompt(row["prompt"])
        c, r = _response(chosen, "chosen"), _response(rejected, "rejected")
        _check_distinct(c, r)
        used = {"prompt", "chosen", "rejected", "margin"}
    else:
        # Whole conversations (HH-RLHF transcripts, UltraFeedback message lists): the prompt is their shared start.
        prompt, c, r = split_implicit(_conversation(chosen, "chosen"), _conversation(rejected, "rejected"))
        used = {"prompt", "chosen", "rejected", "margin"}
    margin = None if row.get("margin") in (None, "") else _number(row["margin"], "margin")
    return PairExample(prompt, c, r, margin, _meta(row, used))


def to_ranked(row: dict) -> RankedExample:
    key = "ranks" if row.get("scores") is None and row.get("ranks") is not None else "scores"
    _require(row, "ranked", "prompt", "completions", key)
    prompt = _prompt(row["prompt"])
    comps, vals = row["completions"], row[key]
    if not isinstance(comps, list):
        raise bad(f"expected a list of completions, got {type(comps).__name__}", "store a list of responses",
                  field="completions", kind="type")
    if len(comps) < 2:
        raise bad(f"a ranking needs at least 2 completions, got {len(comps)}", "add completions, or use the sft/unpaired format",
                  field="completions", kind="ranking")
    if not isinstance(vals, list):
        raise bad(f"expected a list of numbers, got {type(vals).__name__}", "give one value per completion", field=key, kind="type")
    if len(vals) != len(comps):
        raise bad(f"has {len(vals)} values for {len(comps)} completions", "give exactly one value per completion",
                  field=key, kind="ranking")
    texts = [_response(c, f"completions[{i}]") for i, c in enumerate(comps)]
    nums = [_number(v, f"{key}[{i}]") for i, v in enumerate(vals)]
    if key == "ranks":
        if any(v < 1 or v != int(v) for v in nums):
            raise bad(f"ranks must be whole numbers >= 1 (1 = best), got {vals}", "rank the completions 1, 2, 3, ...",
                      field="ranks", kind="ranking")
        if len(set(nums)) != len(nums):
            raise bad(f"ranks have ties {vals}", "give each completion a distinct rank (1 = best), or use scores",
                      field="ranks", kind="ranking")
        nums = [-v for v in nums]  # higher is better, like scores
    order = sorted(range(len(texts)), key=lambda i: -nums[i])
    return RankedExample(prompt, [texts[i] for i in order], [nums[i] for i in order],
                         _meta(row, {"prompt", "completions", key}))


def to_unpaired(row: dict) -> UnpairedExample:
    if row.get("completion") is not None or row.get("messages") is None:
        _require(row, "unpaired", "prompt", "completion", "label")
        prompt, completion = _prompt(row["prompt"]), _response(row["completion"], "completion")
        used = {"prompt", "completion", "label"}
    else:
        _require(row, "unpaired", "label")
        prompt, completion = _chat_split(messages(row["messages"], "messages"), "messages")
        used = {"messages", "label"}
    return UnpairedExample(prompt, completion, _label(row["label"]), _meta(row, used))


def to_sft(row: dict) -> SFTExample:
    if row.get("completion") is not None:
        _require(row, "sft", "prompt")
        return SFTExample(_prompt(row["prompt"]), _response(row["completion"], "completion"), _meta(row, {"prompt", "completion"}))
    key = "conversations" if row.get("messages") is None and row.get("conversations") is not None else "messages"
    _require(row, "sft", key)
    prompt, completion = _chat_split(messages(row[key], key), key)
    return SFTExample(prompt, completion, _meta(row, {key}))


def to_prompt(row: dict) -> PromptExample:
    """A prompt, or a chat whose final assistant turn (if any) is kept in meta['completion']."""
    if row.get("prompt") is not None:
        return PromptExample(_prompt(row["prompt"]), _meta(row, {"prompt"}))
    _require(row, "prompt", "messages")
    msgs = messages(row["messages"], "messages")
    meta = _meta(row, {"messages"})
    if msgs and msgs[-1]["role"] == "assistant":
        meta["completion"] = msgs.pop()["content"]
    if not msgs:
        raise bad("has no prompt turns", "give at least one user message", field="messages", kind="empty")
    return PromptExample(msgs, meta)


CONVERTERS: dict[str, Callable[[dict], Any]] = {
    "pairwise": to_pairwise, "ranked": to_ranked, "unpaired": to_unpaired, "sft": to_sft, "prompt": to_prompt,
}
