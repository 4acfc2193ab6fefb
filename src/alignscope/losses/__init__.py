"""Pure loss functions over per-sequence log-probabilities: preference, unpaired, ranking, reward, SFT."""

from alignscope.losses.preference import (
    PREFERENCE_LOSSES,
    REFERENCE_FREE,
    OrpoLossOutput,
    PreferenceLossOutput,
    combined_preference_loss,
    orpo_loss,
    preference_loss,
)
from alignscope.losses.ranking import (
    RankingLossOutput,
    curry_pairs,
    plackett_luce_dpo_loss,
    plackett_luce_loss,
    pro_loss,
)
from alignscope.losses.reward import (
    ENSEMBLE_AGGREGATIONS,
    aggregate_ensemble,
    bt_loss,
)
from alignscope.losses.sft import sft_loss
from alignscope.losses.unpaired import (
    UnpairedLossOutput,
    bco_loss,
    kto_kl_estimate,
    kto_loss,
)

__all__ = [
    "ENSEMBLE_AGGREGATIONS",
    "PREFERENCE_LOSSES",
    "REFERENCE_FREE",
    "OrpoLossOutput",
    "PreferenceLossOutput",
    "RankingLossOutput",
    "UnpairedLossOutput",
    "aggregate_ensemble",
    "bco_loss",
    "bt_loss",
    "combined_preference_loss",
    "curry_pairs",
    "kto_kl_estimate",
    "kto_loss",
    "orpo_loss",
    "plackett_luce_dpo_loss",
    "plackett_luce_loss",
    "preference_loss",
    "pro_loss",
    "sft_loss",
]
