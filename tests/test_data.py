"""Data preparation: packaged MATH / MATH-500 / GSM8K, OpenR1-layout and mapped files, bad rows."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlkd_ray.config import ColumnMapping, DataConfig, SourceConfig
from rlkd_ray.data import BadRow, DataError, build_source, eval_split, load_split, prepare_data
from rlkd_ray.data.answers import (
    gsm8k_final_answer,
    gsm8k_reasoning,
    last_boxed,
    without_thousands_separators,
)

FIXTURES = Path(__file__).parent / "fixtures"
OPENR1 = FIXTURES / "openr1_small.jsonl"
RENAMED = FIXTURES / "renamed_columns.jsonl"
RENAMED_COLUMNS = ColumnMapping(
    id="qid", problem="question", answer="final", teacher_reasoning="solution", teacher_structure="steps"
)


@pytest.fixture(scope="session")
def math_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("rlkd_cache")
    prepare_data(DataConfig(), cache)
    return cache


def _normal(text: str) -> str:
    return " ".join(text.split())


# --- gold answers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"$\boxed{1}$ then $\boxed{\sqrt{x^{2}}}$", r"\sqrt{x^{2}}"),
        (r"the set $\boxed{\{1, 2\}}$", r"\{1, 2\}"),
        (r"$\boxed{\left\{ x \right.}$", r"\left\{ x \right."),  # escaped brace is not a group
        (r"answer \fbox{ 7 }", "7"),
        (r"answer $\boxed 5$", "5"),
        (r"$\boxed{3}$ and a cut-off $\boxed{\frac{1}{2}", "3"),  # unbalanced last one: the one before
        (r"no box here", None),
        (r"$\boxed{}$", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_gsm8k_answer_and_reasoning():
    solution = "He pays 3 * 2 = $<<3*2=6>>6.\nIn total 1,000 + 6 = <<1000+6=1006>>1,006.\n#### 1,006"
    assert gsm8k_final_answer(solution) == "1006"
    assert gsm8k_reasoning(solution) == "He pays 3 * 2 = $6.\nIn total 1,000 + 6 = 1,006."
    assert gsm8k_final_answer("no final line") is None
    assert without_thousands_separators("1,234,567 or (1,2)") == "1234567 or (1,2)"


# --- packaged MATH / MATH-500 / GSM8K -----------------------------------------------------------


def test_packaged_split_sizes(math_cache):
    prepared = prepare_data(DataConfig(), math_cache)
    assert prepared.reused
    assert prepared.rows == {"train": 4500, "math500": 500, "gsm8k": 1319}
    assert (prepared.train_stats.rows_read, prepared.filtered, prepared.bad_rows) == (5000, 500, 0)
    for split, count in prepared.rows.items():
        dataset = load_split(math_cache, DataConfig(), split)
        assert len(dataset) == count
        assert list(dataset.features) == ["id", "problem", "answer", "teacher_reasoning", "teacher_structure"]


def test_known_rows(math_cache):
    math500 = load_split(math_cache, DataConfig(), "math500")
    assert math500[0]["id"] == "math500/0"
    assert math500[0]["answer"] == r"\left( 3, \frac{\pi}{2} \right)"
    assert math500[0]["teacher_reasoning"].endswith(r"$\boxed{\left( 3, \frac{\pi}{2} \right)}.$")
    assert math500[0]["teacher_structure"] is None

    gsm8k = load_split(math_cache, DataConfig(), "gsm8k")
    assert gsm8k[0]["answer"] == "18"
    assert gsm8k[0]["teacher_reasoning"] == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
        "She makes 9 * 2 = $18 every day at the farmer’s market."
    )
    assert gsm8k[146]["id"] == "gsm8k/146" and gsm8k[146]["answer"] == "2125"  # gold `#### 2,125`

    train = load_split(math_cache, DataConfig(), "train")
    assert train[0]["id"] == "minerva_math_algebra/0"
    assert train[0]["problem"] == (
        r"How many vertical asymptotes does the graph of $y=\frac{2}{x^2+x-6}$ have?"
    )
    assert train[0]["answer"] == "2"


def test_train_does_not_overlap_math500(math_cache):
    train = load_split(math_cache, DataConfig(), "train")
    math500 = load_split(math_cache, DataConfig(), "math500")
    assert len(set(train["id"])) == 4500
    assert not {_normal(p) for p in train["problem"]} & {_normal(p) for p in math500["problem"]}
    assert all(train["answer"]) and all(math500["answer"])


def test_other_configs_build_beside_and_force_rebuilds(math_cache):
    small = DataConfig(name="math_small", train=SourceConfig(limit=7), eval=["math500"])
    first = prepare_data(small, math_cache)
    assert not first.reused and first.rows == {"train": 7, "math500": 500}
    first_ids = load_split(math_cache, DataConfig(), "train")["id"][:7]
    assert load_split(math_cache, small, "train")["id"] == first_ids
    assert prepare_data(small, math_cache).reused
    assert not prepare_data(small, math_cache, force=True).reused
    three = replace(small, train=SourceConfig(limit=3))
    with pytest.raises(DataError, match=r"no prepared data 'math_small' for this configuration"):
        load_split(math_cache, three, "train")  # never the rows of another configuration
    other = prepare_data(three, math_cache)
    assert not other.reused and other.rows["train"] == 3 and other.root != first.root
    # the first build is still there, untouched: each configuration has its own folder
    assert prepare_data(small, math_cache).reused and len(load_split(math_cache, small, "train")) == 7
    assert len(load_split(math_cache, three, "train")) == 3
    folders = [p for p in (math_cache / "data").rglob("*") if p.is_dir() and p.name.startswith(".")]
    assert not folders  # no temporary or old folders left


def test_load_split_and_eval_errors(math_cache, tmp_path):
    with pytest.raises(DataError, match=r"no split 'test'; it has train, math500, gsm8k"):
        load_split(math_cache, DataConfig(), "test")
    with pytest.raises(DataError, match=r"no prepared data 'nope'"):
        load_split(tmp_path, DataConfig(name="nope"), "train")
    with pytest.raises(DataError, match=r"unknown eval split 'aime'"):
        eval_split("aime")
    with pytest.raises(DataError, match=r"'data.eval' names unknown split 'aime'"):
        prepare_data(DataConfig(eval=["aime"]), tmp_path)


# --- OpenR1 layout ------------------------------------------------------------------------------


def _openr1(limit=None) -> SourceConfig:
    return SourceConfig(kind="openr1", path=str(OPENR1), columns=ColumnMapping(id="uuid"), limit=limit)


def test_openr1_bad_row_names_file_row_and_field():
    with pytest.raises(BadRow, match=rf"^{OPENR1} row 5: field 'answer' is missing$"):
        build_source(_openr1())


def test_openr1_skips_and_counts(capsys):
    dataset, stats = build_source(_openr1(), skip_bad_rows=True)
    assert (stats.rows_read, stats.kept, stats.filtered, stats.bad_rows) == (7, 5, 1, 1)
    assert stats.bad_examples == [f"{OPENR1} row 5: field 'answer' is missing"]
    assert f"{OPENR1} row 5: field 'answer' is missing" in capsys.readouterr().out
    assert dataset["id"] == ["or1-a", "or1-b", "or1-d", "or1-f", "or1-g"]
    assert dataset["answer"] == ["4", "4", r"\frac{3}{4}", "30", "3"]
    # the teacher trace is the first generation marked correct, not the first generation; cut to its
    # <think> content as the student's completions are, without the solution written after </think>
    assert dataset[1]["teacher_reasoning"] == "Divide both sides by 3: x = 12/3 = 4."
    assert dataset[3]["teacher_reasoning"] == "Five sixes are 30."
    assert dataset["teacher_structure"] == [None] * 5


def test_teacher_trace_is_cut_like_the_students_once_for_every_reader(tmp_path):
    """prepare-structures, annotate and the reward workers read the prepared rows: the teacher text
    they decompose is the one `think_text` gives for a student completion of the same layout."""
    from rlkd_ray.controller.samples import Problem
    from rlkd_ray.data.answers import think_text

    trace = "<think>\nFirst 2 + 2 = 4.\nCheck: 4 - 2 = 2.\n</think>\nSo the sum is $\\boxed{4}$.\n\n**Answer:** 4"
    path = tmp_path / "r1.jsonl"
    path.write_text(json.dumps({"problem": "2 + 2?", "answer": "4", "teacher_reasoning": trace}) + "\n")
    cfg = DataConfig(name="r1", train=SourceConfig(kind="file", path=str(path)), eval=[])
    prepare_data(cfg, tmp_path)
    row = load_split(tmp_path, cfg, "train")[0]
    assert row["teacher_reasoning"] == think_text(trace) == "First 2 + 2 = 4.\nCheck: 4 - 2 = 2."
    assert Problem.from_row(row).teacher_reasoning == think_text(trace)


def test_openr1_limit_keeps_first_rows():
    dataset, stats = build_source(_openr1(limit=2))
    assert dataset["id"] == ["or1-a", "or1-b"] and stats.rows_read == 2


def test_prepare_data_keeps_skip_stats(tmp_path):
    cfg = DataConfig(name="or1", train=_openr1(), eval=["gsm8k"], skip_bad_rows=True)
    built = prepare_data(cfg, tmp_path)
    reused = prepare_data(cfg, tmp_path)
    assert reused.reused and (reused.bad_rows, reused.filtered) == (built.bad_rows, built.filtered) == (1, 1)
    assert reused.rows == {"train": 5, "gsm8k": 1319}


# --- mapped files and hub folders ---------------------------------------------------------------


def _renamed_records():
    return [json.loads(line) for line in RENAMED.read_text().splitlines()]


def _write_parquet(records, path: Path) -> None:
    """Parquet wants one type per column: the mixed int/str answers become text."""
    pq.write_table(pa.Table.from_pylist([{**r, "final": str(r["final"])} for r in records]), path)


def _expect_renamed(dataset: datasets.Dataset):
    assert dataset["id"] == ["q-1", "q-2", "q-3"]
    assert dataset["problem"][1] == r"What is $6 \cdot 7$?"
    assert dataset["answer"] == ["15", "42", r"\frac{3}{4}"]  # the int 42 of the JSONL is read as text
    assert dataset["teacher_reasoning"][2] == r"Divide top and bottom by 2: $\boxed{\frac{3}{4}}$."
    assert dataset["teacher_structure"][0].startswith("[sub-think 1]: Add.")


def test_file_mapping_jsonl_json_parquet(tmp_path):
    records = _renamed_records()
    as_json = tmp_path / "rows.json"
    as_json.write_text(json.dumps(records))
    as_parquet = tmp_path / "rows.parquet"
    _write_parquet(records, as_parquet)
    for path in (RENAMED, as_json, as_parquet):
        dataset, stats = build_source(SourceConfig(kind="file", path=str(path), columns=RENAMED_COLUMNS))
        _expect_renamed(dataset)
        assert (stats.kept, stats.bad_rows, stats.filtered) == (3, 0, 0)


def test_hub_kind_reads_a_local_dataset_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    folder = tmp_path / "dataset"
    folder.mkdir()
    _write_parquet(_renamed_records(), folder / "train.parquet")
    hub = SourceConfig(kind="hub", path=str(folder), split="train", columns=RENAMED_COLUMNS)
    dataset, _ = build_source(hub)
    _expect_renamed(dataset)
    with pytest.raises(DataError, match=r"split 'test' could not be loaded"):
        build_source(replace(hub, split="test"))


def test_default_id_is_the_row_number_and_reasoning_may_be_absent(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text('{"problem": "1+1?", "answer": "2"}\n\n{"problem": "2+2?", "answer": "4"}\n')
    no_reasoning = ColumnMapping(teacher_reasoning=None)
    dataset, _ = build_source(SourceConfig(kind="file", path=str(path), columns=no_reasoning))
    assert dataset["id"] == ["1", "3"]  # JSONL line numbers; the blank line is not a row
    assert dataset["teacher_reasoning"] == ["", ""]


@pytest.mark.parametrize(
    "line, message",
    [
        (
            '{"problem": ["a list"], "answer": "1", "teacher_reasoning": "r"}',
            "field 'problem' has type list, expected a string",
        ),
        ('{"problem": "p", "answer": "  ", "teacher_reasoning": "r"}', "field 'answer' is empty"),
        ('{"problem": "p", "answer": null, "teacher_reasoning": "r"}', "field 'answer' is null"),
        (
            '{"problem": "p", "answer": true, "teacher_reasoning": "r"}',
            "field 'answer' has type bool, expected a string",
        ),
        ('{"problem": "p", "answer": "1", "teacher_reasoning": "r"', "not valid JSON"),
        ('["not", "an", "object"]', "expected an object, got list"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, line, message):
    path = tmp_path / "x.jsonl"
    path.write_text('{"problem": "ok", "answer": "1", "teacher_reasoning": "fine"}\n' + line + "\n")
    with pytest.raises(BadRow) as error:
        build_source(SourceConfig(kind="file", path=str(path)))
    assert str(error.value).startswith(f"{path} row 2: {message}")
    dataset, stats = build_source(SourceConfig(kind="file", path=str(path)), skip_bad_rows=True)
    assert len(dataset) == 1 and stats.bad_rows == 1


def test_renamed_field_and_duplicate_id_are_named(tmp_path):
    path = tmp_path / "y.jsonl"
    rows = [
        {"qid": "a", "question": "p", "final": "1", "solution": "s", "steps": "t"},
        {"qid": "a", "question": "q", "final": "2", "steps": "t"},  # no solution
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BadRow, match=r"row 2: field 'solution' \(teacher_reasoning\) is missing"):
        build_source(SourceConfig(kind="file", path=str(path), columns=RENAMED_COLUMNS))
    rows[1]["solution"] = "s2"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BadRow, match=rf"^{path} row 2: field 'id' value 'a' repeats {path} row 1$"):
        build_source(SourceConfig(kind="file", path=str(path), columns=RENAMED_COLUMNS))


def test_source_config_errors(tmp_path):
    with pytest.raises(DataError, match=r"'data.train.path' \(x.jsonl\) is not used by kind 'math'"):
        build_source(SourceConfig(kind="math", path="x.jsonl"))
    with pytest.raises(DataError, match=r"'data.train.path' is required for kind 'file'"):
        build_source(SourceConfig(kind="file"))
    with pytest.raises(DataError, match=r"missing.jsonl: file not found"):
        build_source(SourceConfig(kind="file", path=str(tmp_path / "missing.jsonl")))
    (tmp_path / "rows.csv").write_text("problem,answer\n")
    with pytest.raises(DataError, match=r"rows.csv: unknown file type"):
        build_source(SourceConfig(kind="file", path=str(tmp_path / "rows.csv")))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"no usable rows"):
        build_source(SourceConfig(kind="file", path=str(empty)))
