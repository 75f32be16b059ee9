"""Offline commands around the GSRM and the baselines: `rlkd annotate` (GSRM targets), `rlkd sft`
(GSRM or SFT-distillation training), `rlkd prepare-structures` (teacher structures, once)."""
