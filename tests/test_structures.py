"""`rlkd prepare-structures`: a new dataset version with the teacher structures and the failures list
(hand-made structures), rows that already have one are kept, and the real run on MATH rows through
the reward pool (SmolLM2 as an un-tuned GSRM: most traces fail to parse, which is reported)."""

import json

import pytest

from rlkd_ray.config import load_config
from rlkd_ray.data import load_split, prepare_data
from rlkd_ray.data.prepare import MARKER
from rlkd_ray.gsrm import Step, Structure, format_structure, parse_structure
from rlkd_ray.structures import FAILURES_FILE, prepare_structures, store_structures

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
    store_structures(cfg.paths.cache_dir, "traces", {"a": GOOD, "b": failed}, {"gsrm": "test"})

    split = load_split(cfg.paths.cache_dir, "traces", "train")
    stored = dict(zip(split["id"], split["teacher_structure"]))
    assert stored == {"a": format_structure(GOOD), "b": None, "c": None}
    assert parse_structure(stored["a"]) == GOOD
    failures = [json.loads(line) for line in (root / FAILURES_FILE).read_text().splitlines()]
    assert failures == [{"id": "b", "errors": ["no step tags found", "no 'So the final answer is:' line"]}]
    marker = json.loads((root / MARKER).read_text())
    assert marker["teacher_structures"] == {"gsrm": "test"} and marker["config"] == config_before
    assert prepare_data(cfg.data, cfg.paths.cache_dir).reused  # prepare-data keeps this version
    assert sorted(p.name for p in root.parent.iterdir()) == ["traces"]  # no temporary or old folder left


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
        "reward.engine.batch_size=4", "reward.decompose_max_new_tokens=24", "logging.progress=false"])
    summary = prepare_structures(cfg)
    print(f"prepare-structures on 3 MATH rows: {summary}")
    assert (summary.traces, summary.kept, summary.decomposed) == (3, 0, 3)
    assert summary.failure_rate == pytest.approx(summary.failures / 3)
    failures = [json.loads(line) for line in open(summary.failures_file)]
    assert len(failures) == summary.failures
    assert all(f["errors"] for f in failures)
    split = load_split(cfg.paths.cache_dir, "math3", "train")
    failed = {f["id"] for f in failures}
    assert failed <= set(split["id"])
    for id, text in zip(split["id"], split["teacher_structure"]):
        if id in failed:
            assert text is None
        else:  # parsed into steps: stored in canonical form
            assert parse_structure(text).steps and text == format_structure(parse_structure(text))
    info = json.loads(open(f"{summary.dataset}/{MARKER}").read())["teacher_structures"]
    assert (info["gsrm"], info["decomposed"], info["failures"]) == (student_path, 3, summary.failures)
