"""CHES orders likelihood displacement; normalised edit distance does not (docs/science.md, "Likelihood displacement").

On the lab's refusal and gold-labelled pairs, one DPO epoch on the top LN-CHES decile lowers
log pi(y+|x) much more than one on the bottom decile, while deciles by edit distance barely differ.
"""

from __future__ import annotations

import copy

import numpy as np

from alignscope.audits.data import audit_pairs
from alignscope.models.scoring import sequence_logps
from alignscope.options import build_config
from alignscope.training.config import TrainConfig
from alignscope.training.loop import train
from alignscope.world.generate import pairwise_data, refusal_pairs
from alignscope.world.language import default_world


def chosen_change_after_dpo(model, tok, pairs, tmp_path) -> float:
    m = copy.deepcopy(model)
    prompts, chosen = [p.prompt for p in pairs], [p.chosen for p in pairs]
    before = sequence_logps(m, tok, prompts, chosen)
    cfg = build_config(TrainConfig, {"method": "dpo", "data": "<memory>", "output_dir": str(tmp_path), "batch_size": 4,
                                     "epochs": 1, "lr": 1e-3, "beta": 0.1, "progress": False, "max_length": 96})
    train(cfg, train_examples=pairs, model=m, tokenizer=tok, log=lambda *a: None)
    return float((sequence_logps(m, tok, prompts, chosen) - before).mean())


def test_top_ches_decile_loses_more_than_bottom_and_edit_distance_separates_less(lab_tiny, tmp_path):
    model, tok = lab_tiny
    world = default_world(0)
    pairs = refusal_pairs(world, 40, seed=0, similar=True) + refusal_pairs(world, 40, seed=1, similar=False) + pairwise_data(world, 80, seed=2)
    rows = audit_pairs(model, tok, pairs, progress=False).rows
    by_ches = np.argsort([r["ln_ches"] for r in rows])
    by_edit = np.argsort([r["edit_distance"] for r in rows])
    k = len(pairs) // 10
    change = {
        name: chosen_change_after_dpo(model, tok, [pairs[i] for i in idx], tmp_path / name)
        for name, idx in (("ches_top", by_ches[-k:]), ("ches_bottom", by_ches[:k]),
                          ("edit_similar", by_edit[:k]), ("edit_distinct", by_edit[-k:]))
    }
    ches_gap = change["ches_bottom"] - change["ches_top"]
    edit_gap = abs(change["edit_distinct"] - change["edit_similar"])
    assert change["ches_top"] < change["ches_bottom"], change
    assert ches_gap > 0.5, change
    assert edit_gap < ches_gap / 2, change


def test_audit_ches_matches_naive_per_pair(lab_tiny):
    import torch

    from alignscope.data.tokenize import encode_group

    model, tok = lab_tiny
    pairs = refusal_pairs(default_world(0), 6, seed=3, similar=True) + pairwise_data(default_world(0), 6, seed=4)
    rows = audit_pairs(model, tok, pairs, progress=False).rows
    for pair, row in zip(pairs, rows):
        sums, lens = [], []
        for enc in encode_group(tok, pair.prompt, [pair.chosen, pair.rejected], max_length=1024, max_prompt_length=512):
            ids = torch.tensor([enc.prompt_ids + enc.response_ids])
            with torch.no_grad():
                h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].double()
            p = len(enc.prompt_ids)
            sums.append(h[p - 1 : p - 1 + len(enc.response_ids)].sum(0))
            lens.append(len(enc.response_ids))
        s_pos, s_neg = sums
        naive = float(s_pos @ s_neg - s_pos @ s_pos)
        naive_ln = float(s_pos @ s_neg / (lens[0] * lens[1]) - s_pos @ s_pos / lens[0] ** 2)
        assert abs(row["ches"] - naive) <= 1e-4 * abs(naive)
        assert abs(row["ln_ches"] - naive_ln) <= 1e-4 * abs(naive_ln)
