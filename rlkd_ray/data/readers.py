"""Raw records out of JSONL (optionally gzipped), JSON, Parquet files and hub datasets.

Every reader yields `(row number, record)`: the 1-based line number for JSONL, the 1-based
position otherwise. A JSONL line that is not JSON yields a `BadRow` in place of its record, so the
caller decides whether to fail or skip it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional, Tuple

from rlkd_ray.data.errors import BadRow, DataError

FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")


class Records(NamedTuple):
    label: str  # how errors name the source: a file path or `hub:<id>[<split>]`
    rows: Iterator[Tuple[int, Any]]
    total: Optional[int]  # number of rows when known up front (progress bars)


def read_jsonl(path: Path) -> Iterator[Tuple[int, Any]]:
    """A line that is not UTF-8 or not JSON yields a `BadRow` naming it (a byte-order mark is allowed)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for line_no, raw in _lines(f, path):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield line_no, BadRow(f"{path} row {line_no}: not UTF-8 text (byte 0x{raw[e.start]:02x} "
                                      f"at column {e.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                yield line_no, BadRow(f"{path} row {line_no}: not valid JSON ({e.msg} at column {e.colno})")


def _lines(f, path: Path) -> Iterator[Tuple[int, bytes]]:
    try:
        yield from enumerate(f, start=1)
    except (gzip.BadGzipFile, EOFError) as e:  # not gzip, or cut short
        raise DataError(f"{path}: not a readable gzip file ({e})") from None


def _read_json(path: Path) -> Records:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of row objects, got {type(data).__name__}")
    return Records(str(path), enumerate(data, start=1), len(data))


def _read_parquet(path: Path) -> Records:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None

    def rows() -> Iterator[Tuple[int, Any]]:
        row_no = 0
        for batch in table.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row_no += 1
                yield row_no, record

    return Records(str(path), rows(), table.metadata.num_rows)


def read_file(path: str | Path) -> Records:
    """Records of a local JSONL / JSONL.gz / JSON / Parquet file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return Records(str(path), read_jsonl(path), None)
    if path.suffix == ".json":
        return _read_json(path)
    if path.suffix == ".parquet":
        return _read_parquet(path)
    raise DataError(f"{path}: unknown file type; use one of {', '.join(FILE_SUFFIXES)}")


def read_hub(path: str, split: str) -> Records:
    """Records of `datasets.load_dataset(path, split=split)` (a hub id or a local dataset folder)."""
    import datasets

    try:
        dataset = datasets.load_dataset(path, split=split)
    except Exception as e:  # offline, unknown id, unknown split: say which dataset failed and why
        raise DataError(f"hub dataset {path!r} split {split!r} could not be loaded: {e}") from e
    return Records(f"hub:{path}[{split}]", enumerate(dataset, start=1), len(dataset))
