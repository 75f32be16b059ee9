"""One run per output folder. A fresh run (of `rlkd train`, `rlkd sft`) whose folder already holds
another run goes to the first free `<folder>/version_N/` (N = 1, 2, ...), as Lightning's versioned
log folders do: running the same command twice gives two clean runs, never one mixed run and never a
refusal. `trainer.resume=true` is the one way to write into a run's folder again.

A folder is taken by a run once its `config.yaml` exists; a run claims its folder by creating that
file exclusively, so two runs started at once cannot claim the same folder."""

from __future__ import annotations

import itertools
from pathlib import Path

CLAIM_FILE = "config.yaml"  # the first file a run writes; its presence marks a folder as taken
RUN_FILES = (CLAIM_FILE, "metrics.jsonl", "checkpoints")  # any of these: the folder holds a run


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES)


def claim_fresh(folder: str | Path, config_yaml: str) -> Path:
    """The folder of a new run: `folder` if it holds no run, else the first free `folder/version_N`.
    Writes `config_yaml` as the claim. Prints where the run goes when that is not `folder`."""
    base = Path(folder)
    for candidate in itertools.chain([base], (base / f"version_{n}" for n in itertools.count(1))):
        if holds_run(candidate):
            continue
        candidate.mkdir(parents=True, exist_ok=True)
        try:
            with (candidate / CLAIM_FILE).open("x") as f:
                f.write(config_yaml)
        except FileExistsError:  # another run claimed it between the check and the write
            continue
        if candidate != base:
            print(f"{base} holds another run; this run writes to {candidate} "
                  f"(to continue that run instead: trainer.resume=true paths.run_dir={base})", flush=True)
        return candidate


def open_for_resume(folder: str | Path, config_yaml: str) -> Path:
    """The folder of a resumed run: `folder` itself (created if new); its config.yaml is rewritten."""
    base = Path(folder)
    base.mkdir(parents=True, exist_ok=True)
    (base / CLAIM_FILE).write_text(config_yaml)
    return base
