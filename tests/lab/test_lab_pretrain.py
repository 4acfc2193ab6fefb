"""The tiny pretrained lab model: builds, caches atomically, learned, speaks the language."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from alignscope.world import pretrain as pt
from alignscope.world.generate import prompt_data
from alignscope.world.language import default_world, is_wellformed


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab-cache")
    t0 = time.perf_counter()
    model, tok = pt.pretrained_lab_model(cache_dir=root, seed=0, size="tiny", progress=False)
    return root, model, tok, time.perf_counter() - t0


def test_tiny_builds_within_budget_and_learned(built):
    root, model, tok, seconds = built
    assert seconds < 90  # 60 s budget on an idle core, slack for a loaded CI machine
    path = pt.lab_model_dir(root, seed=0, size="tiny")
    assert [p.name for p in root.iterdir()] == [path.name]  # no temporary folder left behind
    assert (path / "model.safetensors").exists()
    info = pt.load_pretrain_info(path)
    assert info["final_loss"] < info["initial_loss"] - 3
    assert 3e5 < info["n_params"] < 1e6
    assert info["quality"]["greedy"]["eos_rate"] > 0.5


def test_second_call_loads_from_cache(built):
    root, model, _, seconds = built
    t0 = time.perf_counter()
    again, tok = pt.pretrained_lab_model(cache_dir=root, seed=0, size="tiny", progress=False)
    assert time.perf_counter() - t0 < seconds / 5
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"


def test_generations_end_with_eos_and_parse(built):
    _, model, tok, _ = built
    prompts = [p.prompt for p in prompt_data(default_world(), 24, seed=123)]
    responses, ended = pt.generate_responses(model, tok, prompts, do_sample=True, seed=1)
    assert sum(ended) > len(prompts) / 2
    assert sum(e and is_wellformed(p, r) for p, r, e in zip(prompts, responses, ended)) > len(prompts) / 2


def test_pretraining_is_deterministic():
    cfg = replace(pt.lab_config("tiny"), steps=3, corpus_size=200, hidden_size=32, num_heads=2)
    a, _, info_a = pt.pretrain(cfg, progress=False)
    b, _, info_b = pt.pretrain(cfg, progress=False)
    assert info_a["losses"] == info_b["losses"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_failed_build_leaves_no_cache(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pt, "pretrain", boom)
    with pytest.raises(KeyboardInterrupt):
        pt.pretrained_lab_model(cache_dir=tmp_path, size="tiny", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNSCOPE_CACHE", str(tmp_path))
    path = pt.lab_model_dir(size="small", seed=3)
    assert path.parent == tmp_path / "lab" and path.name.startswith("small-3-")
    assert pt.lab_model_dir(size="small", seed=3, world_seed=1) != path
    with pytest.raises(pt.ConfigError, match="unknown lab model size"):
        pt.lab_config("huge")


def test_pack_keeps_transcripts_whole():
    ids, labels = pt.pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], block_size=5, pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    assert labels.tolist()[1] == [6, 7, 8, 9, -100]
