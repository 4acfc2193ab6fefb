"""alignscope's monitors inside other libraries' trainers: `integrations.trl` holds the
`transformers.TrainerCallback`s for TRL's DPO, KTO, ORPO/CPO, GRPO and RLOO trainers (docs/trl.md).

Nothing is imported here, so `import alignscope.integrations` costs nothing; import the callbacks
from `alignscope.integrations.trl`.
"""
