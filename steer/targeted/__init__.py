"""Targeted de-censoring (`steer abliterate --keep-safety`, `steer search`): remove censorship, keep
safety refusals. settings (TargetedSettings), contrasts (censorship, harmful and harmless contrasts and
their components), optimize (a gradient-optimized edit direction), prepare (refusal tokens, contrasts, the
optimized direction and validation logits for the search), search (Optuna over edit parameters, scored
without decoding), confirm (the Pareto candidates judged on generated answers), readout (a learned rank-1
readout along the edit direction), run (the targeted run end to end)."""
