"""One run per output folder: a fresh run (train, sft) next to another run's files gets its own
`version_N` folder; `rlkd eval` keeps an eval with other settings and writes beside it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from rlkd_ray.config import load_config
from rlkd_ray.run_dirs import claim_fresh, open_for_resume

CONF = Path(__file__).resolve().parent.parent / "conf"


def test_fresh_runs_get_their_own_folders(tmp_path, capsys):
    base = tmp_path / "runs" / "local"
    assert claim_fresh(base, "a: 1\n") == base
    (base / "metrics.jsonl").write_text('{"step": 1}\n')
    assert claim_fresh(base, "a: 2\n") == base / "version_1"
    assert "trainer.resume=true paths.run_dir=" in capsys.readouterr().out
    assert claim_fresh(base, "a: 3\n") == base / "version_2"
    assert [(base / p / "config.yaml").read_text() for p in ("", "version_1", "version_2")] == ["a: 1\n", "a: 2\n", "a: 3\n"]
    assert (base / "metrics.jsonl").read_text() == '{"step": 1}\n'  # the first run is untouched


@pytest.mark.parametrize("leftover", ["metrics.jsonl", "checkpoints"])
def test_any_run_file_marks_a_folder_as_taken(tmp_path, leftover):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / leftover).touch()
    assert claim_fresh(tmp_path / "run", "") == tmp_path / "run" / "version_1"


def test_an_empty_folder_is_used_and_resume_writes_in_place(tmp_path):
    (tmp_path / "run").mkdir()
    assert claim_fresh(tmp_path / "run", "x: 1\n") == tmp_path / "run"
    assert open_for_resume(tmp_path / "run", "x: 2\n") == tmp_path / "run"
    assert (tmp_path / "run" / "config.yaml").read_text() == "x: 2\n"


def test_trainer_twice_in_one_folder_gives_two_runs(cache_dir, tmp_path):
    """`make train-local` twice: the second Driver claims version_1 (here both stop at a bad custom
    reward, which is checked right after the folder is claimed and before any actor starts)."""
    from rlkd_ray.controller.driver import Driver

    dirs = []
    for _ in range(2):
        cfg = load_config(CONF / "local.yaml", [f"paths.run_dir={tmp_path / 'run'}", f"paths.cache_dir={cache_dir}",
                                                 "reward.custom=[{name: x, fn: 'no_such_module:f'}]"])
        with pytest.raises(ImportError):
            Driver(cfg)
        dirs.append(Path(cfg.paths.run_dir))
    assert dirs == [tmp_path / "run", tmp_path / "run" / "version_1"]
    assert all((d / "config.yaml").is_file() for d in dirs)


def test_eval_folder_resumes_same_settings_and_moves_aside_for_others(tmp_path, capsys):
    from rlkd_ray.eval.runner import SETTINGS_JSON, eval_folder, eval_settings

    cfg = load_config(CONF / "local.yaml", [])
    settings = eval_settings(cfg, "m")
    base = tmp_path / "eval"
    assert eval_folder(base, settings) == base
    base.mkdir()
    (base / SETTINGS_JSON).write_text(json.dumps(asdict(settings)))
    assert eval_folder(base, settings) == base  # the same eval: it resumes there
    other = eval_settings(load_config(CONF / "local.yaml", ["eval.n=4"]), "m")
    assert eval_folder(base, other) == base / "version_1"
    assert "holds an eval with other settings" in capsys.readouterr().out
