"""The learner: one `DeepSpeedPolicy` (DeepSpeed engine, GRPO or SFT step) per rank (`policy.py`)."""
