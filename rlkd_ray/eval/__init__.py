"""Evaluation: pass@k with bootstrap intervals on packaged and file benchmarks, generated through the
rollout workers. Heavier parts are imported from their modules: `rlkd_ray.eval.runner.run_eval` (the
`rlkd eval` command and the in-training eval hook), `rlkd_ray.eval.benchmarks` (layouts, scoring)."""

from rlkd_ray.eval.passk import Interval, bootstrap_ci, default_ks, pass_at_k, pass_at_k_table
from rlkd_ray.eval.results import eval_metrics, markdown_table, read_results

__all__ = [
    "Interval",
    "bootstrap_ci",
    "default_ks",
    "eval_metrics",
    "markdown_table",
    "pass_at_k",
    "pass_at_k_table",
    "read_results",
]
