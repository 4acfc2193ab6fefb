"""A TRL DPO run of the tiny model with alignscope's displacement monitor attached, as a script (so torchrun can
start it on 2 processes): `python trl_dpo_run.py OUT PER_DEVICE_BATCH`. tests/integrations/test_trl_fsdp.py runs it."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import CORPUS  # noqa: E402
from test_trl_callbacks import EVAL, PAIRS  # noqa: E402

from alignscope.integrations.trl import DisplacementMonitor  # noqa: E402
from alignscope.models.tiny import tiny_llama, train_bpe_tokenizer  # noqa: E402

if __name__ == "__main__":
    out, per_device = sys.argv[1], int(sys.argv[2])
    tok = train_bpe_tokenizer(CORPUS, vocab_size=400)
    model = tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=4, seed=0)
    args = DPOConfig(output_dir=out, per_device_train_batch_size=per_device, max_steps=4, learning_rate=0.1, logging_steps=1,
                     eval_steps=2, save_strategy="no", report_to="none", use_cpu=True, bf16=False, disable_dropout=True)
    trainer = DPOTrainer(model=model.train(), ref_model=copy.deepcopy(model).eval(), args=args,
                         train_dataset=Dataset.from_list(PAIRS), processing_class=tok)
    DisplacementMonitor(EVAL).attach(trainer)
    trainer.train()
    if trainer.is_fsdp_enabled:
        print(f"sharded: {type(trainer.model).__name__} and {type(trainer.ref_model).__name__}", flush=True)
        # The Trainer leaves the process group to interpreter exit, where gloo's teardown can abort one process
        # ("terminate called without an active exception") after everything is written: end it together instead.
        trainer.accelerator.wait_for_everyone()
        trainer.accelerator.end_training()
