"""Bad input of every shape (issue: reliability, item 3): data rows and files, custom rewards, config
values. Each gives an error that names the file and row, the sample, or the key; or, where skipping
is right, a counter. Every test records its scenario for docs/reliability.md."""

from __future__ import annotations

import gzip
import json
import math

import pytest

from rlkd_ray.config import ColumnMapping, ConfigError, CustomReward, RewardConfig, SourceConfig, load_config
from rlkd_ray.data import BadRow, DataError, build_source
from rlkd_ray.rewards import RewardError, RuleRewards, call_custom

GOOD = {"problem": "What is 1 + 1?", "answer": "2", "teacher_reasoning": "1 + 1 = 2."}


def _jsonl(rows) -> bytes:
    return b"".join(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode() for r in rows)


# -- data ----------------------------------------------------------------------------------------
BAD_ROWS = [  # (raw line, what the error says after "<file> row <n>: ")
    ({"answer": "2", "teacher_reasoning": "r"}, "field 'problem' is missing"),
    ({**GOOD, "problem": ""}, "field 'problem' is empty"),
    ({**GOOD, "answer": ["2"]}, "field 'answer' has type list, expected a string"),
    ({**GOOD, "teacher_reasoning": 7}, "field 'teacher_reasoning' has type int, expected a string"),
    (b'{"problem": "caf\xe9?", "answer": "1", "teacher_reasoning": "r"}\n', "not UTF-8 text (byte 0xe9 at column 17)"),
    (b'{"problem": "p", "answer": \n', "not valid JSON"),
    ({**GOOD, "id": "a"}, "field 'id' value 'a' repeats"),
]


def test_every_bad_row_shape_is_named_or_skipped_and_counted(tmp_path, scenario):
    """data: missing, empty and wrong-typed fields, non-UTF-8 bytes, broken JSON, a duplicate id"""
    rows = [b"\xef\xbb\xbf" + (json.dumps({**GOOD, "id": "a"}) + "\n").encode()]  # a byte-order mark is fine
    for i, (row, _) in enumerate(BAD_ROWS):
        rows += [row if isinstance(row, bytes) else {"id": f"bad{i}", **row} if "id" not in row else row,
                 {**GOOD, "id": f"ok{i}"}]
    path = tmp_path / "rows.jsonl"
    path.write_bytes(_jsonl(rows))
    source = SourceConfig(kind="file", path=str(path), columns=ColumnMapping(id="id"))
    with pytest.raises(BadRow, match=rf"^{path} row 2: {BAD_ROWS[0][1]}$"):
        build_source(source)
    dataset, stats = build_source(source, skip_bad_rows=True)
    assert dataset["id"] == ["a"] + [f"ok{i}" for i in range(len(BAD_ROWS))]
    assert stats.bad_rows == len(BAD_ROWS) and stats.kept == len(BAD_ROWS) + 1
    summary = stats.summary()
    assert f"{len(BAD_ROWS)} bad rows skipped" in summary
    for (_, message), row_no in zip(BAD_ROWS[:5], range(2, 12, 2)):  # the summary quotes the first five
        assert f"{path} row {row_no}: {message}" in summary
    # each shape alone, without skipping: the error names the file, the row and the field
    for row, message in BAD_ROWS:
        one = tmp_path / "one.jsonl"
        one.write_bytes(_jsonl([{**GOOD, "id": "a"}, row if isinstance(row, bytes) or "id" in row else
                                {"id": "b", **row}]))
        with pytest.raises(BadRow, match=rf"^{one} row 2: " + message.replace("(", r"\(").replace(")", r"\)")):
            build_source(SourceConfig(kind="file", path=str(one), columns=ColumnMapping(id="id")))
    scenario.record("bad input", "data: missing, empty, wrong-typed fields, non-UTF-8 bytes, broken JSON, duplicate id",
                    survived="every good row; without data.skip_bad_rows the first bad row stops the build, named",
                    lost="only the bad rows, each named by file, row and field and counted (bad_rows)",
                    rows_read=stats.rows_read, kept=stats.kept, bad_rows=stats.bad_rows)


def test_unreadable_and_empty_files_name_the_file(tmp_path, scenario):
    """data: an empty file, a JSON or Parquet file that is not one, a broken gzip"""
    cases = {
        "empty.jsonl": (b"", r"empty.jsonl: kept 0 of 0 rows read"),
        "blank.jsonl": (b"\n\n", r"blank.jsonl: kept 0 of 0 rows read"),
        "empty.json": (b"", r"empty.json: not valid JSON \(Expecting value at line 1 column 1\)"),
        "list.json": (b"[]", r"list.json: kept 0 of 0 rows read"),
        "latin1.json": (b'[{"problem": "caf\xe9"}]', r"latin1.json: not UTF-8 text \(byte 0xe9 at offset 17\)"),
        "rows.parquet": (b"not parquet at all", r"rows.parquet: not a readable Parquet file"),
        "rows.jsonl.gz": (b"not gzip", r"rows.jsonl.gz: not a readable gzip file"),
        "cut.jsonl.gz": (gzip.compress(_jsonl([GOOD] * 50))[:-20], r"cut.jsonl.gz: not a readable gzip file"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DataError, match=message):
            build_source(SourceConfig(kind="file", path=str(path)))
    scenario.record("bad input", "data: empty file, JSON/Parquet/gzip file that is not one",
                    survived="a DataError naming the file, before any actor starts", lost="nothing",
                    files_tried=len(cases))


# -- custom rewards --------------------------------------------------------------------------------
def returns_nan(sample):
    return math.nan


def returns_inf(sample):
    return math.inf


def returns_minus_inf(sample):
    return -math.inf


def returns_none(sample):
    return None


def returns_str(sample):
    return "0.5"


def returns_bool(sample):
    return True


def raises(sample):
    return 1 / 0


@pytest.mark.parametrize("fn, says", [
    (returns_nan, "returned nan"), (returns_inf, "returned inf"), (returns_minus_inf, "returned -inf"),
    (returns_none, "returned None"), (returns_str, "returned '0.5'"), (returns_bool, "returned True"),
    (raises, "raised ZeroDivisionError: division by zero"),
])
def test_custom_reward_bug_names_the_reward_and_the_sample(fn, says, scenario):
    """custom reward that raises, or returns NaN, inf, None, a string or a bool"""
    sample = {"id": "s3-p1/2", "problem_id": "math/algebra/17", "completion": "x", "answer": "1"}
    with pytest.raises(RewardError) as e:
        call_custom("mine", fn, sample)
    message = str(e.value)
    assert message.startswith(f"custom reward 'mine' ({__name__}.{fn.__name__})")
    assert says in message and "sample 's3-p1/2' (problem 'math/algebra/17')" in message
    # through the rule rewards of the reward worker, which pass the sample on
    rules = RuleRewards(RewardConfig(custom=[CustomReward(name="mine", fn=f"{__name__}:{fn.__name__}")]))
    with pytest.raises(RewardError, match=r"sample 's3-p1/2'"):
        rules.components(sample)
    scenario.record("bad input", f"custom reward: {says.split(':')[0]}",
                    survived="the run stops with an error naming the reward, its function and the sample id",
                    lost="nothing: no step trains on a made-up reward")


# -- config ------------------------------------------------------------------------------------------
BAD_CONFIG = [  # (overrides, the key the error names, a phrase of the message)
    (["learner.optim.lr=-1e-5"], "learner.optim.lr", "a finite number > 0"),
    (["learner.optim.lr=0"], "learner.optim.lr", "a finite number > 0"),
    (["sft.optim.warmup_ratio=1.5"], "sft.optim.warmup_ratio", "in [0, 1]"),
    (["learner.optim.betas=[0.9]"], "learner.optim.betas", "two numbers"),
    (["rollout.temperature=0"], "rollout.temperature", "identical and every advantage 0"),
    (["rollout.temperature=-0.5"], "rollout.temperature", ">= 0"),
    (["rollout.top_p=0"], "rollout.top_p", "in (0, 1]"),
    (["rollout.max_prompt_tokens=4096", "reward.weights.structure=0"], "rollout.engine.max_model_len", "is over"),
    (["rollout.group_size=1"], "rollout.group_size", "group-relative"),
    (["trainer.prompts_per_step=3", "learner.world_size=2"], "learner.micro_batch_size x learner.world_size",
     "must be a multiple"),
    (["trainer.save_every=0"], "trainer.save_every", ">= 1"),
    (["trainer.keep_checkpoints=0"], "trainer.keep_checkpoints", ">= 1, or null"),
    (["trainer.total_steps=-3"], "trainer.total_steps", ">= 1"),
    (["algo.clip_eps=0"], "algo.clip_eps", "> 0"),
    (["algo.kl_beta=-0.1"], "algo.kl_beta", ">= 0"),
    (["reward.weights.accuracy=nan"], "reward.weights.accuracy", "a finite number"),
    (["reward.judge_min_prob=2"], "reward.judge_min_prob", "in [0, 1]"),
    (["trainer.total_steps=ten"], "trainer.total_steps", "bad value"),
    (["rollout.temperature=[1]"], "rollout.temperature", "bad value"),
    (["learner.gradient_checkpointing=maybe"], "learner.gradient_checkpointing", "bad value"),
]


@pytest.mark.parametrize("overrides, key, phrase", BAD_CONFIG, ids=[" ".join(o) for o, _, _ in BAD_CONFIG])
def test_out_of_range_and_wrong_type_config_values_name_the_key(overrides, key, phrase, scenario):
    """config: an out-of-range or wrong-typed value"""
    with pytest.raises(ConfigError) as e:
        load_config("conf/rlkd.yaml", overrides)
    assert key in str(e.value) and phrase in str(e.value)
    scenario.record("bad input", f"config: {' '.join(overrides)}", survived="a ConfigError naming the key, at load",
                    lost="nothing (nothing has started)")


def test_model_paths_that_are_not_models_name_the_key(tmp_path, scenario):
    """config: a model path that does not exist, is a file, or is a training checkpoint"""
    checkpoint = tmp_path / "run" / "checkpoints" / "step_000002"
    (checkpoint / "hf").mkdir(parents=True)
    (checkpoint / "hf" / "config.json").write_text("{}")
    (checkpoint / "trainer_state.json").write_text("{}")
    (tmp_path / "weights.bin").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    cases = [
        (f"model.student={tmp_path / 'nope'}", "'model.student'", "does not exist"),
        (f"model.gsrm={tmp_path / 'weights.bin'}", "'model.gsrm'", "is a file"),
        (f"model.reference={checkpoint}", "'model.reference'", f"a training checkpoint; its model is in {checkpoint / 'hf'}"),
        (f"model.judge={tmp_path / 'empty'}", "'model.judge'", "not a Hugging Face model folder (no config.json)"),
        ("model.student=./no/such/folder", "'model.student'", "does not exist"),
    ]
    for override, key, phrase in cases:
        with pytest.raises(ConfigError) as e:
            load_config("conf/rlkd.yaml", [override])
        assert key in str(e.value) and phrase in str(e.value), str(e.value)
    cfg = load_config("conf/rlkd.yaml", [f"model.student={checkpoint / 'hf'}", "model.gsrm=org/not-a-local-path"])
    assert cfg.model.student == str(checkpoint / "hf")  # a model folder, and a hub id (not checked here), pass
    scenario.record("bad input", "config: model path missing, a file, a run checkpoint, a folder without config.json",
                    survived="a ConfigError naming the key (and, for a checkpoint, the folder of its model), at load",
                    lost="nothing (nothing has started)", paths_tried=len(cases))
