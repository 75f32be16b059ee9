"""Experiments built from the `rlkd` commands: `mini.py` is the miniature RLKD vs GRPO vs SFT study."""
