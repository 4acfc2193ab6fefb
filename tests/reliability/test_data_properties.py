"""Property-based tests of the data layer: whatever the rows or bytes, loading either returns
records or raises a DataError (never another exception); renaming columns with a mapping is
lossless; tokenization keeps the exact prompt/response boundary and its truncation rules.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignscope.data.loader import load_data
from alignscope.data.records import (
    EXAMPLE_TYPES,
    FORMATS,
    PairExample,
    RankedExample,
    prompt_text,
)
from alignscope.data.tokenize import encode_group, render_prompt
from alignscope.errors import AlignscopeError, DataError

FAST = settings(max_examples=40, deadline=None)

COLUMNS = ["prompt", "chosen", "rejected", "completion", "completions", "scores", "ranks", "label", "messages",
           "conversations", "system", "margin"]
ROLES = ["user", "assistant", "system", "tool", "human", "gpt", "wizard", ""]

# Text may hold lone UTF-16 surrogates: JSON's "\\ud800" escape decodes to one, and no tokenizer accepts it.
texts = st.text(max_size=12) | st.builds("{}{}{}".format, st.text(max_size=5), st.characters(categories=["Cs"]), st.text(max_size=5))
scalars = st.none() | st.booleans() | st.integers() | st.floats() | texts
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                           max_leaves=8)
messages = st.lists(
    st.fixed_dictionaries({}, optional={"role": st.sampled_from(ROLES) | scalars, "content": texts | json_values,
                                        "from": st.sampled_from(ROLES), "value": texts}),
    max_size=3,
)
field_values = texts | st.lists(texts | st.floats(), max_size=4) | messages | json_values
rows = st.lists(
    st.dictionaries(st.sampled_from(COLUMNS) | st.text(max_size=6), field_values, max_size=6) | json_values,
    max_size=6,
)
formats = st.sampled_from([None, *FORMATS, "dpo", "kto"])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("props")


def check_loaded(data, fmt: str | None) -> None:
    """What a successful load promises: typed records, counted rows, clean non-empty text."""
    assert data.format in FORMATS and (fmt is None or data.format == {"dpo": "pairwise", "kto": "unpaired"}.get(fmt, fmt))
    assert all(isinstance(ex, EXAMPLE_TYPES[data.format]) for ex in data.examples)
    assert len(data.examples) + data.n_rejected == data.n_rows and data.examples
    for ex in data.examples:
        texts = [prompt_text(ex.prompt)] + [getattr(ex, k) for k in ("chosen", "rejected", "completion") if hasattr(ex, k)]
        texts += getattr(ex, "completions", [])
        assert all(isinstance(t, str) for t in texts)
        "".join(texts).encode("utf-8")  # every text can be tokenized
        if isinstance(ex, PairExample):
            assert ex.chosen.strip() and ex.rejected.strip() and ex.chosen != ex.rejected
            assert ex.margin is None or math.isfinite(ex.margin)
        if isinstance(ex, RankedExample):
            assert len(ex.completions) == len(ex.scores) >= 2 and ex.scores == sorted(ex.scores, reverse=True)


@FAST
@given(rows=rows, fmt=formats, on_error=st.sampled_from(["fail", "skip"]))
def test_any_rows_load_or_raise_data_error(scratch, rows, fmt, on_error):
    try:
        data = load_data(rows, format=fmt, on_error=on_error, rejects_path=scratch / "rejects.jsonl", log=lambda m: None)
    except DataError:
        return
    check_loaded(data, fmt)


VALID_LINE = json.dumps({"prompt": "Is it blue?", "chosen": "yes it is", "rejected": "no it is not"})
json_chars = st.text(alphabet='{}[]":,. \\0123456789eEnulltrfasu-abc\t', max_size=60)
pair_lines = st.fixed_dictionaries({"prompt": texts, "chosen": texts, "rejected": texts}).map(json.dumps)
lines = st.one_of(st.just(VALID_LINE), json_chars, pair_lines, st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
                  st.just(VALID_LINE).map(lambda s: s[: len(s) // 2]))


@FAST
@given(body=st.one_of(st.binary(max_size=300), st.lists(lines, max_size=5).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass"))),
       suffix=st.sampled_from([".jsonl", ".json", ".csv", ".jsonl.gz", ".json.gz"]), on_error=st.sampled_from(["fail", "skip"]))
def test_any_bytes_load_or_raise_data_error(scratch, body, suffix, on_error):
    path = scratch / f"data{suffix}"
    path.write_bytes(gzip.compress(body) if suffix.endswith(".gz") else body)
    try:
        data = load_data(path, on_error=on_error, rejects_path=scratch / "rejects.jsonl", log=lambda m: None)
    except DataError:
        return
    check_loaded(data, None)


BASE = [{"prompt": f"Question {i}?", "chosen": f"good answer {i}", "rejected": f"bad answer {i}", "id": i} for i in range(3)]
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)


@FAST
@given(new=st.lists(names, min_size=3, max_size=3, unique=True).filter(lambda n: not set(n) & {"id", *BASE[0]}))
def test_renamed_columns_load_the_same_with_a_mapping(new):
    """Columns renamed to anything load to the same records once mapped back to TRL's names."""
    rename = dict(zip(["prompt", "chosen", "rejected"], new))
    renamed = [{rename.get(k, k): v for k, v in row.items()} for row in BASE]
    assert load_data(renamed, mapping=rename).examples == load_data(BASE).examples


@FAST
@given(mapping=st.dictionaries(st.sampled_from(COLUMNS) | names, st.sampled_from([*COLUMNS, "id"]) | names, max_size=4),
       fmt=formats)
def test_any_mapping_loads_or_raises_a_user_error(scratch, mapping, fmt):
    try:
        data = load_data(BASE, format=fmt, mapping=mapping, on_error="skip", rejects_path=scratch / "rejects.jsonl", log=lambda m: None)
    except AlignscopeError:
        return
    check_loaded(data, fmt)


plain = st.text(max_size=30).filter(lambda t: "<|" not in t and "<unk>" not in t)
chat = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": plain}),
                min_size=1, max_size=3)


@FAST
@given(prompt=plain | chat, responses=st.lists(plain.filter(str.strip), min_size=1, max_size=3),
       max_length=st.none() | st.integers(2, 48), max_prompt_length=st.none() | st.integers(1, 24))
def test_tokenization_boundary_and_truncation(bpe_tokenizer, prompt, responses, max_length, max_prompt_length):
    tok = bpe_tokenizer
    full = encode_group(tok, prompt, responses)
    encs = encode_group(tok, prompt, responses, max_length=max_length, max_prompt_length=max_prompt_length)
    eos = tok.eos_token
    for f, e, r in zip(full, encs, responses):
        # Untruncated: the prompt tokens render the prompt, the response tokens are the response and EOS,
        # and, unless BPE merged across the boundary, they are exactly the joint tokenization split in two.
        assert tok.decode(f.prompt_ids, clean_up_tokenization_spaces=False) == render_prompt(tok, prompt)
        assert tok.decode(f.response_ids, clean_up_tokenization_spaces=False) == r + eos
        joint = tok(render_prompt(tok, prompt) + r, add_special_tokens=isinstance(prompt, str))["input_ids"]
        assert f.boundary_merge == (joint[: len(f.prompt_ids)] != f.prompt_ids)
        if not f.boundary_merge:
            assert joint == f.prompt_ids + f.response_ids[:-1]
        # Truncated: the prompt shared and cut from the left, responses cut from the right, counts exact.
        assert e.prompt_ids == encs[0].prompt_ids == f.prompt_ids[e.prompt_truncated :]
        assert e.response_ids == f.response_ids[: len(f.response_ids) - e.response_truncated] and e.response_ids
        if max_prompt_length is not None:
            assert len(e.prompt_ids) <= max_prompt_length
        if max_length is not None:
            assert len(e.prompt_ids) + len(e.response_ids) <= max(max_length, min(len(e.prompt_ids), 1) + 1)
