"""The learner: one `PolicyLearner` (DeepSpeed engine, GRPO or SFT step) per rank (`policy.py`)."""
