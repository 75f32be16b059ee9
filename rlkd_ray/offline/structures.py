"""`rlkd prepare-structures`: the GSRM decomposition of every teacher trace, computed once and stored
in the prepared dataset (column `teacher_structure`), so that training decomposes only the student
paths online (`GroupScorer.teacher_structure` reads the stored text).

The traces go through a pool of reward workers on Ray (`RewardWorker.decompose`, least-loaded
worker first, all traces of one problem in one batched call). A trace whose decomposition has no step is a parse
failure: its `teacher_structure` stays empty. One with steps is stored in canonical form
(`format_structure`), also when the parser noted deviations (a warning; training would use the same
steps if it decomposed the trace online). Every failure and warning is listed with the parser's
errors in `<dataset>/teacher_structure_errors.jsonl` (`kind`: failure | warning). The new dataset
version replaces the old folder by renames; its marker keeps the build configuration (so
`prepare-data` still re-uses it) and records the run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from rlkd_ray.config import RLKDConfig
from rlkd_ray.gsrm import Structure, format_structure

ERRORS_FILE = "teacher_structure_errors.jsonl"
SPLIT = "train"  # the split whose teacher traces the reward pool compares against


@dataclass
class StructuresSummary:
    dataset: str  # the prepared dataset folder
    traces: int  # rows of the split with a teacher trace
    kept: int  # already had a structure and were left as they were (no --force)
    decomposed: int
    failures: int  # decomposed into no step
    with_warnings: int  # decomposed into steps, with deviations from the format noted by the parser
    seconds: float
    errors_file: str  # the failures and warnings with the parser's errors

    @property
    def failure_rate(self) -> float:
        return self.failures / self.decomposed if self.decomposed else 0.0


def decompose_traces(cfg: RLKDConfig, traces: List[Tuple[str, str, str]]) -> Dict[str, Structure]:
    """id → GSRM structure of each (id, problem, reasoning), through a pool of RewardWorkers.

    Traces of the same problem go in one call; a dead worker is replaced and its calls sent again.
    """
    from tqdm import tqdm

    from actors.reward import RewardWorker
    from rlkd_ray.controller.placement import start_engine_actor
    from rlkd_ray.controller.pools import ActorPool

    by_problem: Dict[str, List[Tuple[str, str]]] = defaultdict(list)
    for id, problem, reasoning in traces:
        by_problem[problem].append((id, reasoning))
    ids = [[id for id, _ in items] for items in by_problem.values()]
    calls = [(problem, [r for _, r in items]) for problem, items in by_problem.items()]
    w = cfg.reward
    pool = ActorPool("reward", lambda i: start_engine_actor(RewardWorker, w, cfg.cluster.reward_node, cfg, i),
                     w.num_workers)
    out: Dict[str, Structure] = {}
    bar = tqdm(total=len(traces), desc="decompose teacher traces", unit="trace", dynamic_ncols=True,
               disable=not cfg.logging.progress)
    try:
        for index, structures in pool.map_unordered("decompose", calls, replace_dead=True):
            out.update(zip(ids[index], structures))
            bar.update(len(structures))
    finally:
        bar.close()
        pool.shutdown()
    return out


def store_structures(root: Path, structures: Dict[str, Structure], info: dict) -> Path:
    """A new version of the prepared dataset in `root` with `teacher_structure` of the train rows in
    `structures` set (canonical text; None for a structure without steps) and the errors file."""
    import datasets

    from rlkd_ray.data.prepare import MARKER

    root = Path(root)
    marker_path = root / MARKER
    if not marker_path.is_file():
        raise FileNotFoundError(f"no prepared data in {root}; run `rlkd prepare-data` first")
    marker = json.loads(marker_path.read_text())
    splits = {split: datasets.load_from_disk(str(root / split)) for split in marker["rows"]}
    train = splits[SPLIT]
    column = [old if id not in structures else format_structure(structures[id]) if structures[id].steps else None
              for id, old in zip(train["id"], train["teacher_structure"])]
    feature = train.features["teacher_structure"]
    splits[SPLIT] = train.remove_columns("teacher_structure").add_column("teacher_structure", column,
                                                                          feature=feature)
    marker["teacher_structures"] = info
    errors = [{"id": id, "kind": "warning" if s.steps else "failure", "errors": s.errors}
              for id, s in structures.items() if s.errors]

    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        datasets.DatasetDict(splits).save_to_disk(str(tmp))
        with open(tmp / ERRORS_FILE, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in errors)
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; the folder is an ordinary cache entry
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.rename(root, old)
        os.rename(tmp, root)
        shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


def prepare_structures(cfg: RLKDConfig, force: bool = False) -> StructuresSummary:
    """Decompose the teacher traces of the train split of `data.name` (those without a structure, or
    all with `force`) and store the structures; needs Ray initialised."""
    from rlkd_ray.data import load_split, prepare_data

    start = time.perf_counter()
    prepared = prepare_data(cfg.data, cfg.paths.cache_dir)
    rows = load_split(cfg.paths.cache_dir, cfg.data, SPLIT)
    with_trace = [r for r in rows if (r["teacher_reasoning"] or "").strip()]
    todo = [(str(r["id"]), r["problem"], r["teacher_reasoning"]) for r in with_trace
            if force or not (r["teacher_structure"] or "").strip()]
    print(f"[structures] {cfg.data.name}: {len(with_trace)} teacher traces, {len(todo)} to decompose with "
          f"{cfg.model.gsrm} on {cfg.reward.num_workers} reward worker(s)", flush=True)
    structures = decompose_traces(cfg, todo) if todo else {}
    failures = sum(not s.steps for s in structures.values())
    info = {"gsrm": cfg.model.gsrm, "domain": cfg.reward.domain,
            "decompose_examples": cfg.reward.decompose_examples, "decomposed": len(structures),
            "failures": failures, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    root = store_structures(prepared.root, structures, info) if structures else prepared.root
    return StructuresSummary(
        dataset=str(root), traces=len(with_trace), kept=len(with_trace) - len(todo), decomposed=len(structures),
        failures=failures, with_warnings=sum(bool(s.steps and s.errors) for s in structures.values()),
        seconds=time.perf_counter() - start, errors_file=str(root / ERRORS_FILE))


def cmd_prepare_structures(cfg: RLKDConfig, args) -> None:
    from rlkd_ray.ray_session import ray_session

    with ray_session(cfg):
        s = prepare_structures(cfg, force=args.force)
    print(json.dumps(asdict(s) | {"seconds": round(s.seconds, 1), "failure_rate": round(s.failure_rate, 4)}, indent=1))
    print(f"[structures] parse failures: {s.failures} of {s.decomposed} ({100 * s.failure_rate:.1f} %), "
          f"warnings: {s.with_warnings}; listed in {s.errors_file}")


def add_structures_arguments(parser) -> None:
    parser.add_argument("--force", action="store_true", help="decompose traces that already have a structure too")
