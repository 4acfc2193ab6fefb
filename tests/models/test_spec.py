"""One model-spec grammar: every form parses to its kind, bad specs name themselves and the accepted forms,
and every model argument (policy, ref_model, reward models, the commands' flags) goes through it."""

from __future__ import annotations

import json

import pytest
import torch

from alignscope.errors import ConfigError, ModelError
from alignscope.models.loading import (
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
)
from alignscope.models.spec import ACCEPTED_FORMS, parse_model_spec
from alignscope.rewards.sources import load_reward_source


def test_every_form_parses_to_its_kind(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "folder").mkdir()
    cases = {
        "tiny": ("tiny", ""),
        "lab:tiny": ("lab", "tiny"),
        "lab:small": ("lab", "small"),
        "smollm2": ("smollm2", ""),
        "SmolLM2-135M-Instruct": ("smollm2", ""),
        str(tmp_path / "m.gguf"): ("gguf", str(tmp_path / "m.gguf")),
        str(tmp_path / "folder"): ("folder", str(tmp_path / "folder")),
        "HuggingFaceTB/SmolLM2-135M": ("hub", "HuggingFaceTB/SmolLM2-135M"),
        "gpt2": ("hub", "gpt2"),
    }
    for text, (kind, target) in cases.items():
        spec = parse_model_spec(text)
        assert (spec.kind, spec.target) == (kind, target), text


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty"),
    ("lab:gold", "gold reward, not a model"),
    ("lab:huge", "no model size 'huge'"),
    ("/no/such/model", "model path '/no/such/model' does not exist"),
    ("missing.gguf", "GGUF file 'missing.gguf' does not exist"),
    ("not a model!", "not a hub id"),
])
def test_bad_specs_name_the_spec_and_the_forms(text, why):
    with pytest.raises(ModelError, match=why) as e:
        parse_model_spec(text)
    if why not in ("model path '/no/such/model' does not exist", "GGUF file 'missing.gguf' does not exist"):
        assert f"model spec '{text}'" in str(e.value) and ACCEPTED_FORMS in str(e.value)


def test_a_plain_file_is_not_a_model(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="this is a file"):
        parse_model_spec(str(tmp_path / "weights.bin"))


def test_tiny_trains_its_tokenizer_on_the_texts_and_stands_only_as_a_policy():
    model, tok = load_model_and_tokenizer("tiny", texts=["alpha beta gamma delta"] * 50, seed=3)
    assert model.config.vocab_size == len(tok) and model.config.num_hidden_layers == 2
    assert len(tok.encode("alpha beta gamma delta", add_special_tokens=False)) < len("alpha beta gamma delta")
    again, _ = load_model_and_tokenizer("tiny", texts=["alpha beta gamma delta"] * 50, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    with pytest.raises(ModelError, match="no weights of its own"):
        load_model("tiny")
    with pytest.raises(ModelError, match="no tokenizer of its own"):
        load_tokenizer("tiny")


def test_a_saved_folder_loads_through_the_grammar(tmp_path, tiny_model, bpe_tokenizer):
    tiny_model.save_pretrained(tmp_path / "m")
    bpe_tokenizer.save_pretrained(tmp_path / "m")
    model, tok = load_model_and_tokenizer(str(tmp_path / "m"))
    assert torch.equal(model.lm_head.weight, tiny_model.lm_head.weight) and len(tok) == len(bpe_tokenizer)


def test_lab_spec_is_the_lab_model_for_policy_reference_and_tokenizer(lab_tiny):
    lab_model, lab_tok = lab_tiny
    ref = load_model("lab:tiny")
    assert torch.equal(ref.lm_head.weight, lab_model.lm_head.weight)
    assert load_tokenizer("lab:tiny").get_vocab() == lab_tok.get_vocab()


def test_ref_model_lab_tiny_is_the_lab_model_not_a_hub_id(tmp_path, lab_tiny):
    """`ref_model: lab:tiny` beside `model: lab:tiny`: the reference is the initial policy, so the first step's
    implicit rewards are exactly zero (before the fix, lab:tiny was sent to the hub as an id and the run failed)."""
    from alignscope.options import build_config
    from alignscope.training.config import TrainConfig
    from alignscope.training.loop import train
    from alignscope.world import World, pairwise_data

    raw = {"method": "dpo", "model": "lab:tiny", "ref_model": "lab:tiny", "data": "<memory>", "output_dir": str(tmp_path / "dpo"),
           "batch_size": 4, "max_steps": 1, "progress": False, "max_length": 64}
    out = train(build_config(TrainConfig, raw), train_examples=pairwise_data(World(0), 8, seed=0), log=lambda *a: None)
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-5) and first["rewards/rejected"] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize(("spec", "message"), [
    ("lab:tiny", "names a lab model, not a reward"),
    ("smollm2", r"names a language model \(smollm2\)"),
    ("tiny", r"names a language model \(tiny\)"),
    ("gibberish", "neither a folder nor module:function"),
    ("/no/such/rm", "model path '/no/such/rm' does not exist"),
])
def test_reward_specs_parse_their_model_part_with_the_same_grammar(spec, message):
    with pytest.raises(ConfigError, match=message):
        load_reward_source(spec)
