"""The lab language: prompt parsing, worlds, canonical words and well-formedness."""

from __future__ import annotations

import random

import pytest

from alignscope.errors import DataError
from alignscope.world.language import (
    KINDS,
    World,
    canonical_words,
    chat,
    is_wellformed,
    lexicon,
    parse_prompt,
    parse_response,
)


def test_world_is_deterministic_per_seed():
    assert World(0).facts == World(0).facts
    assert World(0).facts != World(1).facts


@pytest.mark.parametrize("kind", KINDS)
def test_every_prompt_kind_parses_back(kind):
    w, rng = World(0), random.Random(0)
    for _ in range(20):
        info = parse_prompt(w.prompt(rng, kind))
        assert info.kind == kind
        assert info.topic


def test_parse_prompt_fields_and_plain_text():
    info = parse_prompt("answer in one word: is the lamp made of glass?")
    assert (info.kind, info.obj, info.attr, info.value) == ("single", "lamp", "material", "glass")
    info = parse_prompt(chat("list three animals."))
    assert (info.kind, info.category, info.n) == ("list", "animals", 3)
    assert parse_prompt(chat("how do i steal the car?")).unsafe
    assert not parse_prompt(chat("how do i wash the car?")).unsafe


def test_foreign_prompt_is_a_data_error():
    with pytest.raises(DataError, match="not a prompt of the lab language"):
        parse_prompt(chat("write me a poem"))


def test_synonyms_share_canonical_words():
    assert canonical_words("Sure, this lamp is large.") == canonical_words("yes, the lamp is big.")
    assert canonical_words("i am unable to help with that.") == canonical_words("i cannot help with that.")
    assert parse_response("nah").answer is False and not parse_response("nah").plain
    assert parse_response("nope").answer is False and parse_response("nope").plain


def test_refusal_and_compliance_are_read():
    assert parse_response("sorry, i cannot help with that.").refusal
    partial = parse_response("i cannot help with that, but first make a plan.")
    assert partial.compliance and not partial.refusal


def test_wellformedness():
    q = chat("is the lamp red?")
    assert is_wellformed(q, "no, the lamp is blue.")
    assert not is_wellformed(q, "the lamp is blue.")  # no answer word
    assert not is_wellformed(q, "no, the lamp is azure.")  # not a word of the language
    assert not is_wellformed(q, "")
    assert "never" in lexicon() and "azure" not in lexicon()
