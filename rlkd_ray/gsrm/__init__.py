"""GSRM: decompose reasoning paths into steps and score a student's structure against a teacher's."""

from .judge import JUDGE_KINDS, build_judge_messages, verdict_from_logprobs, verdict_from_text
from .parser import Step, Structure, parse_structure
from .prompts import DOMAINS, build_decompose_messages, format_structure
from .reward import JudgeRequest, StructureScore, judge_requests, score_from_verdicts, structure_reward

__all__ = [
    "Step",
    "Structure",
    "parse_structure",
    "StructureScore",
    "structure_reward",
    "JudgeRequest",
    "judge_requests",
    "score_from_verdicts",
    "build_decompose_messages",
    "format_structure",
    "DOMAINS",
    "JUDGE_KINDS",
    "build_judge_messages",
    "verdict_from_logprobs",
    "verdict_from_text",
]
