"""docs/config.md is generated from the schema and conf/; these tests keep it current and complete."""

import importlib
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlkd_ray.cli import main
from rlkd_ray.config import RLKDConfig
from rlkd_ray.config_doc import REGENERATE, config_reference

ROOT = Path(__file__).resolve().parents[1]


def test_committed_config_doc_is_current():
    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed == config_reference(), f"docs/config.md is stale: run `{REGENERATE}` and commit it"


def _keys(node, prefix=""):
    for key, value in node.items():
        yield prefix + key
        if OmegaConf.is_dict(value):
            yield from _keys(value, f"{prefix}{key}.")


def test_every_key_and_config_file_has_a_row():
    text = config_reference()
    schema = OmegaConf.structured(RLKDConfig)
    for section in schema:
        assert f"## `{section}`" in text, section
        for key in _keys(schema[section], f"{section}."):
            assert f"| `{key}` |" in text, key
    assert {"eval", "annotate", "sft", "cluster"} <= set(schema)
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        assert f"| `{path.relative_to(ROOT)}` |" in text, path
    assert "| `sft.optim.lr` | `float` | `1e-05` |" in text  # a nested default is the one that applies


SCHEMA = '''
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

LONG = "a long constant"


@dataclass
class Item:
    name: str = "???"  # required in every item
    weight: float = 1.0


@dataclass
class Inner:
    """Inner knobs | piped."""

    # above the field,
    # on two lines
    depth: int = 3  # and trailing
    text: str = LONG


@dataclass
class Section:
    inner: Inner = field(default_factory=Inner)
    items: List[Item] = field(default_factory=list)
    maybe: Optional[int] = None

    untouched: bool = True


@dataclass
class Root:
    section: Section = field(default_factory=Section)
'''


@pytest.fixture
def schema(tmp_path, monkeypatch):
    (tmp_path / "doc_schema.py").write_text(SCHEMA)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("doc_schema")
    sys.modules.pop("doc_schema", None)


def _conf(tmp_path, files):
    conf = tmp_path / "conf"
    for name, text in files.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(textwrap.dedent(text))
    return conf


def test_any_schema_rows_come_from_fields_comments_and_docstrings(schema, tmp_path):
    conf = _conf(tmp_path, {"a.yaml": "# Base file. More text.\nsection: {}\n",
                            "sub/b.yaml": "# Child of a (`x ... y`) for tests:\n#   rlkd train\ndefaults_from: ../a.yaml\n"})
    text = config_reference(schema.Root(), conf)
    assert "| `section.inner` | `Inner` |  | Inner knobs \\| piped. |" in text
    assert "| `section.inner.depth` | `int` | `3` | above the field, on two lines and trailing |" in text
    assert "| `section.inner.text` | `str` | `LONG` (doc_schema.py) |  |" in text
    assert "| `section.items` | `List[Item]` | `[]` |  |" in text
    assert "| `section.items[].name` | `str` | *required* | required in every item |" in text
    assert "| `section.maybe` | `Optional[int]` | `null` |  |" in text
    assert "| `section.untouched` | `bool` | `true` |  |" in text  # a blank line: no comment carried over
    assert "| `conf/a.yaml` | — | Base file. |" in text
    assert "| `conf/sub/b.yaml` | `conf/a.yaml` | Child of a (`x ... y`) for tests. |" in text


def test_a_config_file_without_leading_comment_is_an_error(schema, tmp_path):
    conf = _conf(tmp_path, {"bare.yaml": "section: {}\n"})
    with pytest.raises(ValueError, match="bare.yaml: no leading comment"):
        config_reference(schema.Root(), conf)


def test_cli_prints_the_reference_and_the_resolved_config(capsys):
    assert main(["config", "--doc"]) == 0
    assert capsys.readouterr().out == config_reference()
    assert main(["config", "--config", str(ROOT / "conf" / "local.yaml"), "trainer.total_steps=3"]) == 0
    assert OmegaConf.create(capsys.readouterr().out).trainer.total_steps == 3
