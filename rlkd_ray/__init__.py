"""rlkd-ray: RLKD (GRPO + a Generative Structure Reward Model) as a distributed pipeline on Ray."""

__version__ = "0.1.0"
