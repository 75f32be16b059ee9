"""Build the splits of `data` once into `<cache_dir>/data/<name>/<key>/` and load them back.

The folder is a `datasets.DatasetDict` (`save_to_disk`) with `train` and each eval split, plus a
marker recording the configuration it was built from and the row counts; a later call with the same
configuration re-uses it. `<key>` is a digest of that configuration, so runs with other data settings
(a benchmark's smaller `data.train.limit`, say) build beside it instead of over it, and a run never
reads rows another run built for other settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict

import datasets

from rlkd_ray.config import DataConfig
from rlkd_ray.data.arith import ARITH_SPLITS
from rlkd_ray.data.errors import DataError
from rlkd_ray.data.sources import EVAL_SPLITS, SourceStats, build_source, eval_split

MARKER = "rlkd_data.json"
# Layout of the rows; a build of another layout is rebuilt. 2: teacher_reasoning is cut by think_text.
ROWS_VERSION = 2


@dataclass
class PreparedData:
    root: Path
    splits: Dict[str, Path]  # split name -> its folder (loadable with datasets.load_from_disk)
    rows: Dict[str, int]
    train_stats: SourceStats
    reused: bool  # True when an earlier build with the same configuration was loaded

    @property
    def bad_rows(self) -> int:
        return self.train_stats.bad_rows

    @property
    def filtered(self) -> int:
        return self.train_stats.filtered


def data_root(cache_dir: str | Path, data_cfg: DataConfig) -> Path:
    """`<cache_dir>/data/<name>/<digest of the build key>`: one folder per configuration."""
    digest = hashlib.sha256(json.dumps(_build_key(data_cfg), sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir).expanduser() / "data" / data_cfg.name / digest


def _build_key(data_cfg: DataConfig) -> Dict:
    """What decides the content of the build (not `name`, the folder; not `shuffle`, a read-time option)."""
    key = {
        "rows_version": ROWS_VERSION,
        "train": asdict(data_cfg.train),
        "eval": list(data_cfg.eval),
        "skip_bad_rows": data_cfg.skip_bad_rows,
    }
    if data_cfg.train.kind == "arith" or any(name in ARITH_SPLITS for name in data_cfg.eval):
        key["arith"] = asdict(data_cfg.arith)
    return key


def _prepared(root: Path, marker: Dict, reused: bool) -> PreparedData:
    return PreparedData(
        root=root,
        splits={split: root / split for split in marker["rows"]},
        rows=dict(marker["rows"]),
        train_stats=SourceStats(**marker["train_stats"]),
        reused=reused,
    )


def _read_marker(root: Path) -> Dict | None:
    path = root / MARKER
    return json.loads(path.read_text()) if path.is_file() else None


def prepare_data(data_cfg: DataConfig, cache_dir: str | Path, force: bool = False) -> PreparedData:
    """Build and save `train` + the eval splits; re-use an earlier build of the same config."""
    for name in data_cfg.eval:
        if name not in EVAL_SPLITS:
            raise DataError(f"'data.eval' names unknown split {name!r}; choose from {', '.join(EVAL_SPLITS)}")
    root = data_root(cache_dir, data_cfg)
    key = _build_key(data_cfg)
    marker = _read_marker(root)
    if marker is not None and not force:
        print(f"[data] {data_cfg.name}: re-using {root} ({_rows_text(marker['rows'])})", flush=True)
        return _prepared(root, marker, reused=True)

    t0 = time.perf_counter()
    train, train_stats = build_source(data_cfg.train, data_cfg.skip_bad_rows, data_cfg.arith)
    splits = {"train": train}
    for name in data_cfg.eval:
        splits[name] = eval_split(name, data_cfg.arith)
    rows = {name: len(split) for name, split in splits.items()}
    marker = {"config": key, "rows": rows, "train_stats": asdict(train_stats)}

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{data_cfg.name}.tmp-", dir=root.parent))
    try:
        datasets.DatasetDict(splits).save_to_disk(str(tmp))
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; the folder is an ordinary cache entry
        built_beside = _read_marker(root)
        if built_beside is not None and not force:  # another process built the same configuration meanwhile
            print(f"[data] {data_cfg.name}: re-using {root}, built meanwhile by another run", flush=True)
            return _prepared(root, built_beside, reused=True)
        if root.exists():  # --force, or a folder without a marker
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            os.rename(root, old)
            shutil.rmtree(old)
        os.rename(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    seconds = time.perf_counter() - t0
    print(f"[data] {data_cfg.name}: built {root} ({_rows_text(rows)}) in {seconds:.1f} s", flush=True)
    print(f"[data] {train_stats.summary()}", flush=True)
    return _prepared(root, marker, reused=False)


def _rows_text(rows: Dict[str, int]) -> str:
    return ", ".join(f"{split} {count} rows" for split, count in rows.items())


def load_split(cache_dir: str | Path, data_cfg: DataConfig, split: str) -> datasets.Dataset:
    """One split of the dataset prepared for `data_cfg`."""
    root = data_root(cache_dir, data_cfg)
    marker = _read_marker(root)
    if marker is None:
        raise DataError(f"no prepared data {data_cfg.name!r} for this configuration in {root}; run "
                        "prepare_data (rlkd prepare-data) first")
    if split not in marker["rows"]:
        raise DataError(f"{root}: no split {split!r}; it has {', '.join(marker['rows'])}")
    return datasets.load_from_disk(str(root / split))
