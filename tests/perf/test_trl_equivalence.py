"""alignscope's DPO loss and policy gradients equal TRL's DPOTrainer on the same batch of token ids.

TRL's own code path is used: a real `DPOTrainer` tokenizes a tiny dataset, its collator builds the
batch, and `compute_loss` gives the loss. alignscope scores the very same token ids through
`dpo_objective` (one concatenated forward, response positions only, cached reference log-probs).
"""

from __future__ import annotations

import copy

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install 'alignscope[bench]')")

from datasets import Dataset  # noqa: E402

from alignscope.models.scoring import Scorer, score_sequences  # noqa: E402
from alignscope.training.config import LossTerm, TrainConfig  # noqa: E402
from alignscope.training.items import Item  # noqa: E402
from alignscope.training.objectives import Context, dpo_objective  # noqa: E402

PAIRS = [
    {"prompt": "What is the capital of France?", "chosen": " Paris is the capital of France.", "rejected": " No."},
    {"prompt": "Please answer politely.", "chosen": " Yes, I can help with that.", "rejected": " No, I will not do that, the quick fox."},
    {"prompt": "Numbers:", "chosen": " 0 1 2 3", "rejected": " 4 5 6 7 8 9 and symbols !?"},
    {"prompt": "The quick brown fox", "chosen": " jumps over the lazy dog.", "rejected": " jumps."},
]


def _trl_batch(model, ref, tokenizer, loss_type: str, tmp_path):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=len(PAIRS), beta=0.1, loss_type=[loss_type],
        report_to="none", bf16=False, use_cpu=True, gradient_checkpointing=False, disable_dropout=True,
        max_length=None, save_strategy="no",
    )
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)
    rows = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    return trainer, trainer.data_collator(rows), rows


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_loss_and_grads_match_trl(loss_type, tiny_model, bpe_tokenizer, tmp_path):
    torch.manual_seed(0)
    policy = tiny_model.train()
    with torch.no_grad():  # move away from the reference so the log-ratios (and hinge) are not trivially 0
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = copy.deepcopy(policy)
    ref = copy.deepcopy(tiny_model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    ref_for_us = copy.deepcopy(ref)

    trainer, batch, rows = _trl_batch(policy, ref, bpe_tokenizer, loss_type, tmp_path)
    policy.zero_grad()
    trl_loss = trainer.compute_loss(trainer.model, batch)
    trl_loss.backward()

    # The same token ids, as alignscope items: prompt, chosen and rejected ids from TRL's tokenization.
    items = [Item(r["prompt_ids"], [r["chosen_ids"], r["rejected_ids"]], [0.0]) for r in rows]
    pad = bpe_tokenizer.pad_token_id
    ref_out = score_sequences(ref_for_us, [it.prompt_ids for it in items for _ in it.responses], [r for it in items for r in it.responses], pad_id=pad)
    ref_logps = {i: ref_out.logps[2 * i : 2 * i + 2].tolist() for i in range(len(items))}
    cfg = TrainConfig(method="dpo", data="x", beta=0.1, loss=[LossTerm(loss_type)])
    ctx = Context(Scorer(ours.train()), cfg, pad, ref_logps)
    our_loss, _ = dpo_objective(ctx, items, list(range(len(items))))
    our_loss.backward()

    assert our_loss.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-6)
    n_compared = 0
    for (name, p_trl), (_, p_ours) in zip(policy.named_parameters(), ours.named_parameters()):
        if p_trl.grad is None:
            assert p_ours.grad is None or torch.count_nonzero(p_ours.grad) == 0, name
            continue
        # Elementwise rtol with an atol of 1e-5 of the tensor's largest entry: the two sides sum in different
        # orders (padded rows vs one packed row), so entries near zero differ at rounding level in relative terms.
        atol = 1e-5 * float(p_trl.grad.abs().max())
        torch.testing.assert_close(p_ours.grad, p_trl.grad, rtol=1e-4, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
        n_compared += 1
    assert n_compared == len(list(policy.parameters()))
    assert any(p.grad.abs().max() > 0 for p in ours.parameters())
