"""Thin Ray actors: each holds an engine or a learner and calls into rlkd_ray."""
