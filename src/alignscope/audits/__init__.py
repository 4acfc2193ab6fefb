"""Audits: run models over data and write their findings (the CHES data audit, the reward-model
audit, implicit-vs-explicit reward comparison). The formulas they apply live in `diagnostics`."""
