"""alignscope's DPO losses and policy gradients equal TRL's DPOTrainer on the same batch of token ids,
for every `loss_type` name the two share.

TRL's own code path is used: a real `DPOTrainer` tokenizes a tiny dataset, its collator builds the
batch, and `compute_loss` gives the loss. alignscope scores the very same token ids through the
`dpo` method's loss (one concatenated forward, response positions only, cached reference log-probs).
"""

from __future__ import annotations

import copy
import re

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install 'alignscope[bench]')")

from datasets import Dataset  # noqa: E402

from alignscope.losses.preference import PREFERENCE_LOSSES  # noqa: E402
from alignscope.models.scoring import Scorer, score_sequences  # noqa: E402
from alignscope.training.config import LossTerm, TrainConfig  # noqa: E402
from alignscope.training.items import Item  # noqa: E402
from alignscope.training.methods.dpo import DPO, Context  # noqa: E402

PAIRS = [
    {"prompt": "What is the capital of France?", "chosen": " Paris is the capital of France.", "rejected": " No."},
    {"prompt": "Please answer politely.", "chosen": " Yes, I can help with that.", "rejected": " No, I will not do that, the quick fox."},
    {"prompt": "Numbers:", "chosen": " 0 1 2 3", "rejected": " 4 5 6 7 8 9 and symbols !?"},
    {"prompt": "The quick brown fox", "chosen": " jumps over the lazy dog.", "rejected": " jumps."},
]


# Every alignscope preference loss that TRL's DPOTrainer also has; `simpo` is TRL's CPOTrainer's (below).
TRL_DPO_LOSSES = [name for name in PREFERENCE_LOSSES if name != "simpo"]
# label_smoothing as TRL reads it: robust's flip rate, exo_pair's epsilon (TRL requires it > 0).
SMOOTHING = {"robust": 0.1, "exo_pair": 1e-3}


def test_every_shared_name_is_compared():
    from trl import DPOConfig

    trl_names = set(re.findall(r"`'(\w+)'`", DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]))
    assert set(TRL_DPO_LOSSES) <= trl_names
    assert set(PREFERENCE_LOSSES) - set(TRL_DPO_LOSSES) == {"simpo"}


def _trl_batch(model, ref, tokenizer, loss_types: list[str], tmp_path, label_smoothing: float = 0.0):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=len(PAIRS), beta=0.1, loss_type=loss_types,
        label_smoothing=label_smoothing,
        report_to="none", bf16=False, use_cpu=True, gradient_checkpointing=False, disable_dropout=True,
        max_length=None, save_strategy="no",
    )
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)
    rows = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    return trainer, trainer.data_collator(rows), rows


@pytest.mark.parametrize("loss_type", TRL_DPO_LOSSES + ["sigmoid,sft"])
def test_dpo_loss_and_grads_match_trl(loss_type, tiny_model, bpe_tokenizer, tmp_path):
    loss_types, smoothing = loss_type.split(","), SMOOTHING.get(loss_type, 0.0)
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

    trainer, batch, rows = _trl_batch(policy, ref, bpe_tokenizer, loss_types, tmp_path, smoothing)
    policy.zero_grad()
    trl_loss = trainer.compute_loss(trainer.model, batch)
    trl_loss.backward()

    # The same token ids, as alignscope items: prompt, chosen and rejected ids from TRL's tokenization.
    items = [Item(r["prompt_ids"], [r["chosen_ids"], r["rejected_ids"]], [0.0]) for r in rows]
    pad = bpe_tokenizer.pad_token_id
    ref_out = score_sequences(ref_for_us, [it.prompt_ids for it in items for _ in it.responses], [r for it in items for r in it.responses], pad_id=pad)
    ref_logps = {i: ref_out.logps[2 * i : 2 * i + 2].tolist() for i in range(len(items))}
    cfg = TrainConfig(method="dpo", data="x", beta=0.1, loss=[LossTerm(t) for t in loss_types], label_smoothing=smoothing)
    ctx = Context(Scorer(ours.train()), cfg, pad, ref_logps)
    our_loss, _ = DPO(cfg).loss(ctx, items, list(range(len(items))))
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


# --- GRPO: TRL's GRPOTrainer._compute_loss against alignscope's policy-gradient loss on one fixed batch.

GRPO_CASES = [("grpo", "token", 0.0), ("bnpo", "token", 0.0), ("dr_grpo", "token", 0.0), ("dapo", "token", 0.0),
              ("grpo", "sequence", 0.0), ("bnpo", "token", 0.01)]


def _grpo_trainer(model, tokenizer, tmp_path, loss_type: str, level: str, entropy_coef: float, max_len: int):
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_completion_length=max_len,
        loss_type=loss_type, importance_sampling_level=level, epsilon=0.2, epsilon_high=0.28, entropy_coef=entropy_coef,
        beta=0.0, report_to="none", bf16=False, use_cpu=True, save_strategy="no", disable_dropout=True,
    )
    data = Dataset.from_list([{"prompt": p["prompt"]} for p in PAIRS])
    trainer = GRPOTrainer(model=model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)], args=args,
                          train_dataset=data, processing_class=tokenizer)
    # Built with beta 0 so TRL loads no reference from a hub id; the KL term reads the batch's reference log-probs.
    trainer.beta = 0.04
    trainer.current_gradient_accumulation_steps = 1
    return trainer


@pytest.mark.parametrize("loss_type,level,entropy_coef", GRPO_CASES)
def test_grpo_family_losses_and_grads_match_trl(loss_type, level, entropy_coef, tiny_model, bpe_tokenizer, tmp_path):
    from alignscope.losses import policy_gradient as pg
    from alignscope.models.scoring import score_batch

    torch.manual_seed(0)
    policy = tiny_model.train()
    ours = copy.deepcopy(policy)
    vocab = policy.config.vocab_size
    lengths, width = [5, 3, 6, 2], 6
    prompt = torch.randint(5, vocab, (4, 4))  # one prompt length: no left padding, so both sides see the same positions
    completion = torch.randint(5, vocab, (4, width))
    mask = (torch.arange(width) < torch.tensor(lengths).unsqueeze(-1)).long()
    old = -5.0 + 0.4 * torch.randn(4, width)  # off-policy enough that some ratios fall outside [1 - 0.2, 1 + 0.28]
    ref = -5.0 + 0.4 * torch.randn(4, width)
    advantages = torch.tensor([1.0, -0.5, 0.8, -1.2])

    trainer = _grpo_trainer(policy, bpe_tokenizer, tmp_path, loss_type, level, entropy_coef, width)
    inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion, "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref, "num_items_in_batch": mask.sum()}
    policy.zero_grad()
    trl_loss = trainer._compute_loss(trainer.model, inputs)
    trl_loss.backward()

    responses = [completion[i, : lengths[i]].tolist() for i in range(4)]
    out = score_batch(Scorer(ours), prompt.tolist(), responses, pad_id=bpe_tokenizer.pad_token_id, return_token_logps=True,
                      return_token_hidden=entropy_coef > 0)

    def pad(rows: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])

    entropy = pad([pg.token_entropy(ours.get_output_embeddings()(h)) for h in out.token_hidden]) if entropy_coef else None
    our_loss = pg.policy_gradient_loss(
        pad(out.token_logps), advantages, mask.bool(), old_token_logps=old, epsilon=0.2, epsilon_high=0.28, loss_type=loss_type,
        max_len=width, num_items=float(mask.sum()), importance_sampling_level=level, kl_coef=0.04, ref_token_logps=ref,
        kl_estimator="k3", use_bias_correction_kl=True, entropy=entropy, entropy_coef=entropy_coef,
    )
    our_loss.backward()

    assert our_loss.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-6)
    for (name, p_trl), (_, p_ours) in zip(policy.named_parameters(), ours.named_parameters()):
        atol = 1e-5 * float(p_trl.grad.abs().max())
        torch.testing.assert_close(p_ours.grad, p_trl.grad, rtol=1e-4, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
    assert any(p.grad.abs().max() > 0 for p in ours.parameters())
