"""Each TRL format (and the common variants users bring) becomes the right normalised record."""

from __future__ import annotations

import json

import pytest

from alignscope.data.loader import load_data
from alignscope.data.records import (
    PairExample,
    PromptExample,
    RankedExample,
    SFTExample,
    UnpairedExample,
)
from alignscope.errors import DataError

USER = [{"role": "user", "content": "Hi?"}]


def asst(text):
    return [{"role": "assistant", "content": text}]


def load(tmp_path, rows, **kw):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_data(path, **kw)


def one(tmp_path, row, **kw):
    data = load(tmp_path, [row], **kw)
    assert data.n_rows == 1 and len(data.examples) == 1
    return data, data.examples[0]


def test_pairwise_text_with_margin_and_meta(tmp_path):
    data, e = one(tmp_path, {"prompt": "Q?", "chosen": " yes", "rejected": " no", "margin": 2, "id": 7})
    assert (data.format, data.detected_by) == ("pairwise", "columns prompt/chosen/rejected")
    assert e == PairExample("Q?", " yes", " no", 2.0, {"id": 7})


def test_pairwise_conversational(tmp_path):
    _, e = one(tmp_path, {"prompt": USER, "chosen": asst("Hello"), "rejected": asst("Go away")})
    assert (e.prompt, e.chosen, e.rejected) == (USER, "Hello", "Go away")


@pytest.mark.parametrize("prompt", ["Hi?", None])
def test_pairwise_ultrafeedback_whole_conversations(tmp_path, prompt):
    row = {"chosen": USER + asst("Hello"), "rejected": USER + asst("No"), "metadata": {"score_chosen": 8.0}}
    if prompt:
        row["prompt"] = prompt
    _, e = one(tmp_path, row)
    assert (e.prompt, e.chosen, e.rejected) == (USER, "Hello", "No") and e.meta == {"metadata": {"score_chosen": 8.0}}


def test_implicit_prompt_hh_transcript(tmp_path):
    shared = "\n\nHuman: How do I bake bread?\n\nAssistant: With flour.\n\nHuman: And then?\n\nAssistant:"
    data, e = one(tmp_path, {"chosen": shared + " Knead and bake it.", "rejected": shared + " No idea."})
    assert data.format == "pairwise" and "implicit prompt" in data.detected_by
    assert e.prompt == [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "With flour."},
        {"role": "user", "content": "And then?"},
    ]
    assert (e.chosen, e.rejected) == ("Knead and bake it.", "No idea.")


def test_implicit_prompt_message_lists(tmp_path):
    history = USER + asst("Hello!") + [{"role": "user", "content": "Bye?"}]
    _, e = one(tmp_path, {"chosen": history + asst("Bye!"), "rejected": history + asst("Whatever.")})
    assert (e.prompt, e.chosen, e.rejected) == (history, "Bye!", "Whatever.")


def test_implicit_prompt_must_differ_only_in_last_turn(tmp_path):
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: Sure"
    rejected = "\n\nHuman: Hi\n\nAssistant: Go away\n\nHuman: Joke?\n\nAssistant: No"
    with pytest.raises(DataError) as e:
        load(tmp_path, [{"chosen": chosen, "rejected": rejected}])
    msg = str(e.value)
    assert "d.jsonl, line 1, field 'chosen/rejected': chosen and rejected diverge at message 2 (assistant)" in msg
    assert "after 1 shared message(s) chosen has 3 more and rejected 3" in msg and "fix: both conversations must repeat" in msg


def test_sharegpt_with_system(tmp_path):
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}, {"from": "human", "value": "Joke?"}],
           "chosen": {"from": "gpt", "value": "Knock knock"}, "rejected": {"from": "gpt", "value": "No"}, "system": "Be funny"}
    data, e = one(tmp_path, row)
    assert "ShareGPT" in data.detected_by
    assert e.prompt == [{"role": "system", "content": "Be funny"}, {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hey"}, {"role": "user", "content": "Joke?"}]
    assert (e.chosen, e.rejected, e.meta) == ("Knock knock", "No", {})


@pytest.mark.parametrize("key,values,best_first", [("scores", [1.0, 3.0, 2.0], ["b", "c", "a"]), ("ranks", [2, 1, 3], ["b", "a", "c"])])
def test_ranked_sorted_best_first(tmp_path, key, values, best_first):
    data, e = one(tmp_path, {"prompt": "p", "completions": ["a", "b", "c"], key: values, "id": 3})
    assert data.format == "ranked" and isinstance(e, RankedExample) and e.meta == {"id": 3}
    assert e.completions == best_first and e.scores == sorted(e.scores, reverse=True)


def test_unpaired_prompt_completion_label_and_messages(tmp_path):
    data, e = one(tmp_path, {"prompt": "p", "completion": "c", "label": 1})
    assert data.format == "unpaired" and e == UnpairedExample("p", "c", True)
    data, e = one(tmp_path, {"messages": USER + asst("x"), "label": "false"})
    assert "messages/label" in data.detected_by and e == UnpairedExample(USER, "x", False)


def test_sft_prompt_completion_and_messages(tmp_path):
    data, e = one(tmp_path, {"prompt": "p", "completion": "c"})
    assert data.format == "sft" and e == SFTExample("p", "c")
    chat = USER + asst("a") + [{"role": "user", "content": "more"}] + asst("b")
    data, e = one(tmp_path, {"messages": chat})
    assert data.format == "sft" and e == SFTExample(chat[:-1], "b")


def test_prompt_only_and_forced_prompt_format(tmp_path):
    data, e = one(tmp_path, {"prompt": "p", "type": "x"})
    assert data.format == "prompt" and e == PromptExample("p", {"type": "x"})
    data, e = one(tmp_path, {"messages": USER}, format="prompt")
    assert (data.format, data.detected_by, e.prompt) == ("prompt", "given as 'prompt'", USER)
    _, e = one(tmp_path, {"messages": USER + asst("ref")}, format="prompt")
    assert e.prompt == USER and e.meta == {"completion": "ref"}


def test_mapping_renames_before_detection(tmp_path):
    data, e = one(tmp_path, {"question": "q", "response_a": "a", "response_b": "b"},
                  mapping={"prompt": "question", "chosen": "response_a", "rejected": "response_b"})
    assert data.format == "pairwise" and (e.prompt, e.chosen, e.rejected) == ("q", "a", "b")
    data, e = one(tmp_path, {"question": "What is 2+2?", "answer": "4 #### 4"}, mapping={"prompt": "question"})
    assert data.format == "prompt" and e.meta == {"answer": "4 #### 4"}
    _, e = one(tmp_path, {"prompt": "p", "chosen": "a", "rejected": "b"}, mapping={"chosen": "rejected", "rejected": "chosen"})
    assert (e.chosen, e.rejected) == ("b", "a")


def test_as_chat_wraps_plain_prompts_as_one_user_message(tmp_path):
    data, e = one(tmp_path, {"question": "What is 2+2?", "answer": "4"}, mapping={"prompt": "question"}, as_chat=True)
    assert data.format == "prompt" and e.prompt == [{"role": "user", "content": "What is 2+2?"}]
    _, e = one(tmp_path, {"prompt": "q", "chosen": "a", "rejected": "b"}, as_chat=True)
    assert (e.prompt, e.chosen, e.rejected) == ([{"role": "user", "content": "q"}], "a", "b")
    _, e = one(tmp_path, {"messages": USER}, format="prompt", as_chat=True)
    assert e.prompt == USER  # already a chat


def test_train_config_as_chat_reaches_the_records(tmp_path):
    from alignscope.training.config import TrainConfig
    from alignscope.training.loop import load_examples

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    for as_chat, want in ((False, "q"), (True, [{"role": "user", "content": "q"}])):
        cfg = TrainConfig(data=str(path), output_dir=str(tmp_path / "run"), as_chat=as_chat)
        assert load_examples(cfg, path)[0].prompt == want


def test_mapping_errors_suggest_the_fix(tmp_path):
    with pytest.raises(DataError, match="no column 'questoin' \\(did you mean 'question'\\?\\)"):
        load(tmp_path, [{"question": "q"}], mapping={"prompt": "questoin"})
    with pytest.raises(DataError, match="write TRL's name first: --map prompt=question"):
        load(tmp_path, [{"question": "q"}], mapping={"question": "prompt"})
    with pytest.raises(DataError, match="cannot tell the format.*\n  fix: .*--map prompt=question --map completion=answer"):
        load(tmp_path, [{"question": "q", "answer": "a"}])


def test_format_override_and_aliases(tmp_path):
    rows = [{"prompt": "p", "completion": "c", "label": True}]
    assert load(tmp_path, rows).format == "unpaired"
    assert load(tmp_path, rows, format="sft").format == "sft"
    assert load(tmp_path, rows, format="kto").format == "unpaired"
    assert load(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "b"}], format="DPO").format == "pairwise"
    with pytest.raises(DataError, match="unknown format 'pairwse' \\(did you mean 'pairwise'\\?\\)"):
        load(tmp_path, rows, format="pairwse")
    with pytest.raises(DataError, match="d.jsonl: format 'ranked' needs column\\(s\\) completions, scores"):
        load(tmp_path, rows, format="ranked")


def test_detection_follows_most_rows_not_the_first(tmp_path):
    rows = [{"prompt": "p", "chosen": "a"}] + [{"prompt": "p", "chosen": "a", "rejected": f"b{i}"} for i in range(3)]
    data = load(tmp_path, rows, on_error="skip", rejects_path=tmp_path / "rej.jsonl", log=lambda m: None)
    assert (data.format, len(data.examples), data.n_rejected) == ("pairwise", 3, 1)
