"""`rlkd prepare-structures`: a new dataset version with the teacher structures and the list of parse
failures and warnings (hand-made structures), rows that already have one are kept, and the real run on
MATH rows through the reward pool (SmolLM2 as an un-tuned GSRM, cut at 24 tokens: no trace parses
cleanly, which is reported)."""

import json

import pytest

from rlkd_ray.config import load_config
from rlkd_ray.data import load_split, prepare_data
from rlkd_ray.data.prepare import MARKER
from rlkd_ray.gsrm import Step, Structure, format_structure, parse_structure
from rlkd_ray.offline.structures import ERRORS_FILE, prepare_structures, store_structures

GOOD = Structure([Step("Add, as the sum is asked.", "What is 1 + 1?", "2")], "2")


def file_config(tmp_path, rows, *extra):
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_config(None, [f"paths.cache_dir={tmp_path / 'cache'}", "data.name=traces", "data.train.kind=file",
                              f"data.train.path={path}", "data.train.columns.id=id", "data.eval=[]",
                              "logging.progress=false", *extra])


def test_store_writes_a_new_version_and_lists_failures(tmp_path):
    rows = [{"id": i, "problem": f"p{i}", "answer": "2", "teacher_reasoning": f"r{i}"} for i in "abc"]
    cfg = file_config(tmp_path, rows)
    root = prepare_data(cfg.data, cfg.paths.cache_dir).root
    config_before = json.loads((root / MARKER).read_text())["config"]
    failed = Structure([], None, ["no step tags found", "no 'So the final answer is:' line"])
    partial = Structure([Step("Add.", "What is 1 + 1?", "")], None, ["step 1: [Answer] is empty", "no 'So"])
    store_structures(root, {"a": GOOD, "b": failed, "c": partial}, {"gsrm": "test"})

    split = load_split(cfg.paths.cache_dir, cfg.data, "train")
    stored = dict(zip(split["id"], split["teacher_structure"]))
    assert stored == {"a": format_structure(GOOD), "b": None,
                      "c": "[sub-think 1]: Add.\n[Query 1]: What is 1 + 1?\n[Answer 1]:"}
    assert parse_structure(stored["a"]) == GOOD
    assert parse_structure(stored["c"]).steps == partial.steps
    errors = [json.loads(line) for line in (root / ERRORS_FILE).read_text().splitlines()]
    assert errors == [{"id": "b", "kind": "failure", "errors": failed.errors},
                      {"id": "c", "kind": "warning", "errors": partial.errors}]
    marker = json.loads((root / MARKER).read_text())
    assert marker["teacher_structures"] == {"gsrm": "test"} and marker["config"] == config_before
    assert prepare_data(cfg.data, cfg.paths.cache_dir).reused  # prepare-data keeps this version
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # no temporary or old folder left


def test_rows_with_a_structure_are_kept(tmp_path):
    rows = [{"id": i, "problem": f"p{i}", "answer": "2", "teacher_reasoning": f"r{i}",
             "structure": format_structure(GOOD)} for i in "ab"]
    cfg = file_config(tmp_path, rows, "data.train.columns.teacher_structure=structure")
    summary = prepare_structures(cfg)  # nothing to decompose: no reward worker starts
    assert (summary.traces, summary.kept, summary.decomposed, summary.failures) == (2, 2, 0, 0)


@pytest.mark.slow
def test_prepare_structures_on_math_rows(ray_cluster, student_path, tmp_path):
    cfg = load_config(None, [
        f"paths.cache_dir={tmp_path / 'cache'}", "data.name=math3", "data.train.limit=3", "data.eval=[]",
        f"model.gsrm={student_path}", "model.dtype=float32", "reward.num_workers=1", "reward.num_cpus=1",
        "reward.num_gpus=0", "reward.engine.backend=hf", "reward.engine.max_model_len=2048",
        "rollout.max_prompt_tokens=256", "rollout.max_new_tokens=256", "reward.engine.batch_size=4",
        "reward.decompose_max_new_tokens=24", "logging.progress=false"])
    summary = prepare_structures(cfg)
    print(f"prepare-structures on 3 MATH rows: {summary}")
    assert (summary.traces, summary.kept, summary.decomposed) == (3, 0, 3)
    assert summary.failure_rate == pytest.approx(summary.failures / 3)
    errors = {e["id"]: e for e in map(json.loads, open(summary.errors_file))}
    assert len(errors) == 3 == summary.failures + summary.with_warnings  # cut at 24 tokens: never clean
    assert sum(e["kind"] == "failure" for e in errors.values()) == summary.failures
    split = load_split(cfg.paths.cache_dir, cfg.data, "train")
    assert set(errors) == set(split["id"])
    for id, text in zip(split["id"], split["teacher_structure"]):
        assert errors[id]["errors"]
        if errors[id]["kind"] == "failure":
            assert text is None
        else:  # parsed into steps: stored in canonical form
            assert parse_structure(text).steps and text == format_structure(parse_structure(text))
    info = json.loads(open(f"{summary.dataset}/{MARKER}").read())["teacher_structures"]
    assert (info["gsrm"], info["decomposed"], info["failures"]) == (student_path, 3, summary.failures)
