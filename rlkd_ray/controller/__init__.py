"""The training path: the single controller (`driver.py`) and what it drives — the prompt source,
the worker pools and their placement, the batcher, checkpoints, metrics and progress."""
